//! `cargo xtask cross`: ARM builds of the service and the module.

use anyhow::{bail, Result};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("cross builds are not implemented yet")
}
