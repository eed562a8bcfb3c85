//! Host side of the image build: the tools it needs and how it runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};

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
        .filter(|(bin, _, _)| which(bin).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(_, pkg, _)| *pkg).collect();
    step(&format!("installing host packages: {}", names.join(" ")));
    if !is_root() {
        bail!(
            "missing host tools; run as root or install: apt-get install {}",
            names.join(" ")
        );
    }
    // A half-synced mirror fails one index now and then; the install may
    // still succeed with what apt already has.
    if let Err(e) = run(Command::new("apt-get").arg("update").arg("-q")) {
        step(&format!("apt-get update failed, installing anyway: {e:#}"));
    }
    for (_, pkg, suite) in missing {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-q", "--no-install-recommends"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(suite) = suite {
            cmd.args(["-t", suite]);
        }
        run(cmd.arg(pkg))?;
    }
    Ok(())
}

pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    // Root-only tools live in sbin, which a non-login PATH may lack.
    let extra = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command found on the PATH or in sbin, ready for arguments.
pub fn tool(bin: &str) -> Command {
    Command::new(which(bin).unwrap_or_else(|| PathBuf::from(bin)))
}

/// Runs a command to completion; on failure the error carries the command
/// line and the tail of what it printed.
pub fn run(cmd: &mut Command) -> Result<()> {
    capture(cmd).map(drop)
}

/// Runs a command and returns its stdout.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {line}"))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        bail!("{line} failed ({}):\n{}", out.status, tail(&text, 30));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One progress line, stamped with the seconds since the first one.
pub fn step(msg: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("[image {t:6.1}s] {msg}");
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes used by a file or a directory tree (apparent sizes, symlinks not
/// followed).
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(512 << 20), "512.0 MiB");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
