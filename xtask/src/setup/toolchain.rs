//! The ARM cross gcc 12: the host's when installed, else Debian's cross
//! packages unpacked under target/, never installed: `gcc-12-<triple>`
//! conflicts with `gcc-multilib` (apt removes one to install the other), so
//! installing it would make the cross and image builds fight other host
//! setups. GCC finds its cc1, collect2, crt files and the target libc
//! relative to its own location, so the unpacked tree works wherever it lies.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::apt;
use crate::cmd;

/// A cross gcc: `<prefix>gcc`, `<prefix>ld`... exist.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// `CROSS_COMPILE`: `aarch64-linux-gnu-` or an absolute
    /// `/…/usr/bin/aarch64-linux-gnu-`.
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

/// Where the cross packages come from: the host's apt into a `.deb` cache
/// directory, or a private apt root.
pub enum Source<'a> {
    Host { debs: &'a Path },
    Private(&'a apt::Apt),
}

impl Source<'_> {
    fn download(&self, pkg: &str) -> Result<PathBuf> {
        match self {
            Source::Host { debs } => apt::download(pkg, debs),
            Source::Private(apt) => apt.download(pkg),
        }
    }
}

/// The host's `<gnu_triple>-gcc` when it runs, else `unpacked`.
pub fn find(source: Source, dir: &Path, gnu_triple: &str, deb_arch: &str) -> Result<Toolchain> {
    let host = Toolchain {
        prefix: format!("{gnu_triple}-"),
    };
    if host.runs() {
        return Ok(host);
    }
    unpacked(source, dir, gnu_triple, deb_arch)
}

/// Debian's cross gcc 12 for `gnu_triple` (`aarch64-linux-gnu`,
/// `arm-linux-gnueabihf`) unpacked into `dir` once; `deb_arch` is the Debian
/// name used in the cross library packages (`arm64`, `armhf`).
pub fn unpacked(source: Source, dir: &Path, gnu_triple: &str, deb_arch: &str) -> Result<Toolchain> {
    let bin = dir.join("usr/bin");
    let tc = Toolchain {
        prefix: bin.join(format!("{gnu_triple}-")).display().to_string(),
    };
    let done = dir.join(".extracted");
    if !done.exists() {
        eprintln!(
            "toolchain: unpacking Debian's {gnu_triple} gcc 12 into {}",
            dir.display()
        );
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot clean {}", dir.display()))?;
        }
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
            apt::extract(&source.download(&pkg)?, dir)?;
        }
        // The packages ship `<triple>-gcc-12`; Rust and the kernel call `<triple>-gcc`.
        let gcc = bin.join(format!("{gnu_triple}-gcc"));
        if !gcc.exists() {
            std::os::unix::fs::symlink(format!("{gnu_triple}-gcc-12"), &gcc)
                .with_context(|| format!("cannot link {}", gcc.display()))?;
        }
        fs::write(&done, "").with_context(|| format!("cannot write {}", done.display()))?;
    }
    if !tc.runs() {
        bail!("the unpacked cross gcc {} does not run", tc.gcc());
    }
    Ok(tc)
}
