//! `cargo xtask image` and `run-image`: the offline SD-card image.

use anyhow::{bail, Result};

pub fn build(_args: &[String]) -> Result<()> {
    bail!("image builds are not implemented yet")
}

pub fn run(_args: &[String]) -> Result<()> {
    bail!("image boot is not implemented yet")
}
