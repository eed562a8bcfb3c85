//! A private aarch64 cross gcc: Debian's cross packages extracted under
//! target/, never installed. The host's `gcc-aarch64-linux-gnu` conflicts
//! with `gcc-multilib` (apt removes one to install the other), so relying on
//! it would make the image build fight other host setups.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::apt::{self, Apt};
use super::host::{self, step};

const PACKAGES: &[&str] = &[
    "gcc-12-aarch64-linux-gnu",
    "cpp-12-aarch64-linux-gnu",
    "binutils-aarch64-linux-gnu",
    "libgcc-12-dev-arm64-cross",
    "libgcc-s1-arm64-cross",
    "libc6-arm64-cross",
    "libc6-dev-arm64-cross",
    "linux-libc-dev-arm64-cross",
];

/// Returns the `CROSS_COMPILE` prefix (`…/usr/bin/aarch64-linux-gnu-`).
/// GCC finds its cc1, collect2, crt files and the target libc relative to
/// its own location, so the extracted tree works wherever it lies.
pub fn aarch64(apt: &Apt, dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("usr/bin");
    let prefix = bin.join("aarch64-linux-gnu-");
    let done = dir.join(".extracted");
    if done.exists() {
        return Ok(prefix);
    }
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    for pkg in PACKAGES {
        apt::extract(&apt.download(pkg)?, dir)?;
    }
    symlink(
        "aarch64-linux-gnu-gcc-12",
        bin.join("aarch64-linux-gnu-gcc"),
    )
    .context("linking aarch64-linux-gnu-gcc")?;
    fs::write(&done, "")?;
    step(&format!(
        "toolchain: aarch64 cross gcc 12 in {} ({})",
        dir.display(),
        host::human(host::tree_size(dir))
    ));
    Ok(prefix)
}
