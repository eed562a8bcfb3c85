//! `cargo xtask test|demo|vm|kmod`: the VM harness.

use anyhow::{bail, Result};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("not implemented yet")
}

pub fn demo(_args: &[String]) -> Result<()> {
    bail!("not implemented yet")
}

pub fn vm(_args: &[String]) -> Result<()> {
    bail!("not implemented yet")
}

pub fn kmod(_args: &[String]) -> Result<()> {
    bail!("not implemented yet")
}
