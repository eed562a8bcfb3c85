//! The ARM cross gcc: the host's when installed, else Debian's cross
//! packages unpacked under `target/cross/toolchain-<arch>/`. Never installed
//! by us: `gcc-12-<triple>` conflicts with `gcc-multilib`, so apt would remove
//! one to install the other and the cross build would fight other host setups.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use super::host;

/// A cross gcc: `<prefix>gcc`, `<prefix>gcc-12`, `<prefix>ld`... exist.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// `aarch64-linux-gnu-` or an absolute `/…/usr/bin/aarch64-linux-gnu-`.
    pub prefix: String,
}

impl Toolchain {
    pub fn gcc(&self) -> String {
        format!("{}gcc", self.prefix)
    }
}

/// `gnu_triple` is `aarch64-linux-gnu` or `arm-linux-gnueabihf`; `deb_arch`
/// the Debian name used in the cross library packages (`arm64`, `armhf`).
pub fn find(cache: &Path, gnu_triple: &str, deb_arch: &str) -> Result<Toolchain> {
    let host_gcc = format!("{gnu_triple}-gcc");
    if runs(&host_gcc) {
        return Ok(Toolchain {
            prefix: format!("{gnu_triple}-"),
        });
    }
    let dir = cache.join(format!("toolchain-{deb_arch}"));
    let prefix: PathBuf = dir.join("usr/bin").join(format!("{gnu_triple}-"));
    let done = dir.join(".usrbd-ready");
    if !done.exists() {
        eprintln!(
            "cross: no host {host_gcc}; unpacking Debian's cross gcc into {}",
            dir.display()
        );
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let debs = cache.join(format!("debs-toolchain-{deb_arch}"));
        for pkg in [
            format!("gcc-12-{gnu_triple}"),
            format!("cpp-12-{gnu_triple}"),
            format!("binutils-{gnu_triple}"),
            format!("libgcc-12-dev-{deb_arch}-cross"),
            format!("libgcc-s1-{deb_arch}-cross"),
            format!("libc6-{deb_arch}-cross"),
            format!("libc6-dev-{deb_arch}-cross"),
            format!("linux-libc-dev-{deb_arch}-cross"),
        ] {
            host::deb_extract(&host::apt_download(&pkg, &debs)?, &dir)?;
        }
        // The packages ship `<triple>-gcc-12`; Rust and the kernel call `<triple>-gcc`.
        let gcc = dir.join(format!("usr/bin/{gnu_triple}-gcc"));
        if !gcc.exists() {
            std::os::unix::fs::symlink(format!("{gnu_triple}-gcc-12"), &gcc)?;
        }
        std::fs::write(&done, "")?;
    }
    let tc = Toolchain {
        prefix: prefix.display().to_string(),
    };
    if !runs(&tc.gcc()) {
        bail!("the unpacked cross gcc {} does not run", tc.gcc());
    }
    Ok(tc)
}

fn runs(gcc: &str) -> bool {
    Command::new(gcc)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
