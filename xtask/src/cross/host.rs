//! Host tooling: running commands, and installing the apt packages and rustup
//! targets the cross builds need (idempotent, silent when all is present).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `cmd`, letting its output through; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails with its stderr on a non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether dpkg reports `pkg` (may carry an `:arch` suffix) as installed.
pub fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

/// Installs the packages of `pkgs` that are not installed yet.
pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("cross: apt-get install {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Lets apt see `arm64` and `armhf` packages, so their kernel headers, kernel
/// image and busybox can be downloaded (never installed: an `:arm64` headers
/// package would pull a native gcc that displaces the cross compilers).
pub fn ensure_foreign_archs(archs: &[&str]) -> Result<()> {
    let known = output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    let missing: Vec<&str> = archs
        .iter()
        .copied()
        .filter(|a| !known.lines().any(|k| k.trim() == *a))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for arch in &missing {
        eprintln!("cross: dpkg --add-architecture {arch}");
        run(Command::new("dpkg").args(["--add-architecture", arch]))?;
    }
    apt_update();
    Ok(())
}

/// `apt-get update`; a failed index (a mirror mid-sync) is only a warning:
/// the caller picks from what apt can see and fails if that is not enough.
pub fn apt_update() {
    eprintln!("cross: apt-get update");
    let ok = Command::new("apt-get")
        .args(["update", "-q"])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("cross: warning: apt-get update reported errors; using the indexes it has");
    }
}

/// Adds the rustup targets of `triples` that are not installed yet.
pub fn ensure_rust_targets(triples: &[&str]) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let missing: Vec<&str> = triples
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("cross: rustup target add {}", missing.join(" "));
    run(Command::new("rustup")
        .args(["target", "add"])
        .args(&missing))
}

/// `apt-get download` of `pkg` into `dir`, unless a `.deb` of it is there.
/// Returns the `.deb` path.
pub fn apt_download(pkg: &str, dir: &Path) -> Result<std::path::PathBuf> {
    let base = pkg.split(':').next().unwrap_or(pkg);
    if let Some(found) = find_deb(base, dir)? {
        return Ok(found);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!("cross: apt-get download {pkg}");
    run(Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", pkg])
        .current_dir(dir)
        .stdout(Stdio::null()))?;
    find_deb(base, dir)?.with_context(|| format!("apt-get download {pkg} left no .deb"))
}

fn find_deb(base: &str, dir: &Path) -> Result<Option<std::path::PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let prefix = format!("{base}_");
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// `dpkg-deb -x deb dir`.
pub fn deb_extract(deb: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))
}
