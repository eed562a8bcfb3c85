//! The ARM cross gcc: Debian's `gcc-<triple>` packages, installed on the
//! host when `<triple>-gcc` is not there yet.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::apt;
use crate::cmd;

/// A cross gcc: `<prefix>gcc`, `<prefix>ld`... exist.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// `CROSS_COMPILE`, e.g. `aarch64-linux-gnu-`.
    pub prefix: String,
}

impl Toolchain {
    pub fn gcc(&self) -> String {
        format!("{}gcc", self.prefix)
    }

    fn runs(&self) -> bool {
        cmd::succeeds(Command::new(self.gcc()).arg("--version"))
    }
}

/// The host's `<gnu_triple>-gcc` (`aarch64-linux-gnu`, `arm-linux-gnueabihf`),
/// installed with its C library from Debian's cross packages when missing;
/// `deb_arch` is the Debian name of the target (`arm64`, `armhf`).
pub fn ensure(gnu_triple: &str, deb_arch: &str) -> Result<Toolchain> {
    let tc = Toolchain {
        prefix: format!("{gnu_triple}-"),
    };
    if tc.runs() {
        return Ok(tc);
    }
    // Debian's cross gcc conflicts with gcc-multilib: apt would remove it
    // without asking.
    if apt::installed("gcc-multilib") {
        bail!(
            "{} is missing and Debian's gcc-{gnu_triple} conflicts with the installed \
             gcc-multilib: remove gcc-multilib, or install a {gnu_triple} cross gcc yourself",
            tc.gcc()
        );
    }
    eprintln!("toolchain: installing Debian's {gnu_triple} cross gcc");
    apt::install_missing(&[
        &format!("gcc-{gnu_triple}"),
        &format!("libc6-dev-{deb_arch}-cross"),
    ])
    .with_context(|| format!("installing the {gnu_triple} cross gcc"))?;
    if !tc.runs() {
        bail!(
            "{} does not run after installing gcc-{gnu_triple}",
            tc.gcc()
        );
    }
    Ok(tc)
}
