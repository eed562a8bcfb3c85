//! The host programs the image build and boot run, installed from Debian
//! when one is missing.

use anyhow::{Context, Result};

use super::progress::step;
use crate::cmd;
use crate::setup::apt;

/// Host commands the image build and boot call, with the Debian package
/// that provides each. `qemu-system-aarch64` comes from bookworm-backports
/// because the host's qemu-utils does (mixing 7.2 and 10.x breaks apt).
const TOOLS: &[(&str, &str, Option<&str>)] = &[
    ("mkfs.vfat", "dosfstools", None),
    ("mcopy", "mtools", None),
    ("sfdisk", "fdisk", None),
    ("mkfs.ext4", "e2fsprogs", None),
    ("depmod", "kmod", None),
    ("xz", "xz-utils", None),
    ("gzip", "gzip", None),
    ("busybox", "busybox-static", None),
    ("make", "make", None),
    (
        "qemu-system-aarch64",
        "qemu-system-arm",
        Some("bookworm-backports"),
    ),
];

/// Installs whatever host package is missing. Idempotent: nothing runs when
/// every tool is already on the PATH.
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|(program, _, _)| cmd::which(program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(_, pkg, _)| *pkg).collect();
    step(&format!("installing host packages: {}", names.join(" ")));
    // A half-synced mirror fails one index now and then; the install may
    // still succeed with what apt already has.
    apt::update();
    for (_, pkg, suite) in missing {
        let mut extra = vec!["--no-install-recommends"];
        if let Some(suite) = suite {
            extra.extend(["-t", suite]);
        }
        apt::install(&extra, &[pkg]).context("installing the image build's host tools")?;
    }
    Ok(())
}
