//! The host programs the image build and boot run, installed from Debian
//! when one is missing.

use anyhow::{Context, Result};

use super::progress::step;
use crate::cmd;
use crate::setup::{self, apt};

/// Host commands the image build and boot call, with the Debian package
/// that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("sfdisk", "fdisk"),
    ("mkfs.ext4", "e2fsprogs"),
    ("depmod", "kmod"),
    ("xz", "xz-utils"),
    ("gzip", "gzip"),
    ("busybox", "busybox-static"),
    ("make", "make"),
];

/// Installs whatever host package is missing. Idempotent: nothing runs when
/// every tool is already on the PATH.
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(program, _)| cmd::which(program).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        step(&format!("installing host packages: {}", missing.join(" ")));
        // A half-synced mirror fails one index now and then; the install may
        // still succeed with what apt already has.
        apt::update();
        apt::install(&["--no-install-recommends"], &missing)
            .context("installing the image build's host tools")?;
    }
    setup::ensure_qemu(&["qemu-system-arm"])
}
