//! `cargo xtask deb`: the Debian packages Raspberry Pi OS (and Debian) users
//! install with apt. `usrbd-dkms` (arch `all`: the module's source, built by
//! DKMS on the target) and `usrbd` (the service, its unit and config) for
//! amd64, arm64 and armhf, built by `dpkg-buildpackage` from `board/debian/`
//! and checked with lintian. Results land in `target/deb/`.
//!
//! The Rust builds stay here, not in `debian/rules`: the static binaries
//! come from the same code as `cargo xtask cross` (cross gcc, rustup
//! targets), and the VM test packages the binary it has already built.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::cross::build::{self as cross_build, Target, AARCH64, ARMV7};
use crate::setup::{self, apt, toolchain::Toolchain, Paths};

const USAGE: &str = "\
usage: cargo xtask deb [--arch amd64|arm64|armhf]...

  builds usrbd-dkms_<ver>_all.deb and usrbd_<ver>_<arch>.deb for each arch
  (default: all three) into target/deb/, then runs lintian on them
";

/// The workspace version: the changelog's must match it.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What dpkg-buildpackage and dh_dkms need on the build host.
const BUILD_PACKAGES: &[&str] = &["debhelper", "dh-dkms", "dpkg-dev"];

/// What a guest needs to install the packages: DKMS itself (it pulls the
/// compiler and make the module build uses). The VM sees the host's root
/// filesystem, so it must be on the host before the VM boots.
const GUEST_PACKAGES: &[&str] = &["dkms"];

/// The native build, static like the ARM ones so every `usrbd` .deb holds
/// the same kind of binary (no libc dependency to track).
const X86_64: Target = Target {
    name: "x86_64",
    triple: "x86_64-unknown-linux-gnu",
    gnu: "x86_64-linux-gnu",
    deb_arch: "amd64",
    modules: &[],
};

const TARGETS: [Target; 3] = [X86_64, AARCH64, ARMV7];

pub fn run(args: &[String]) -> Result<()> {
    let targets = parse_args(args)?;
    let paths = Paths::new();
    let started = Instant::now();
    ensure_build_tools()?;
    apt::install_missing(&["lintian"])?;
    check_version(&paths)?;
    let out = paths.target().join("deb");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut debs = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let step = Instant::now();
        eprintln!(
            "deb: [{}/{}] usrbd for {}: static release build",
            i + 1,
            targets.len(),
            target.deb_arch
        );
        let bin = build_service(*target)?;
        // The arch-all package comes with the first build only.
        let with_all = i == 0;
        debs.extend(package(&paths, &out, target.deb_arch, &bin, with_all)?);
        eprintln!(
            "deb: [{}/{}] {} done in {:.0} s",
            i + 1,
            targets.len(),
            target.deb_arch,
            step.elapsed().as_secs_f64()
        );
    }
    lintian(&debs)?;
    for deb in &debs {
        let size = fs::metadata(deb).map(|m| m.len()).unwrap_or_default();
        println!("{} ({} KiB)", deb.display(), size / 1024);
    }
    eprintln!(
        "deb: {} packages in {:.0} s, lintian clean",
        debs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn parse_args(args: &[String]) -> Result<Vec<Target>> {
    let mut chosen: Vec<Target> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--arch" => {
                let arch = it.next().context("--arch needs amd64, arm64 or armhf")?;
                let target = TARGETS
                    .iter()
                    .find(|t| t.deb_arch == arch)
                    .with_context(|| format!("unknown --arch `{arch}`\n{USAGE}"))?;
                if !chosen.iter().any(|t| t.deb_arch == target.deb_arch) {
                    chosen.push(*target);
                }
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    Ok(if chosen.is_empty() {
        TARGETS.to_vec()
    } else {
        chosen
    })
}

/// For the VM scenario (deb_install_dkms_service): the amd64 packages
/// around `usrbd`, the binary the test run built, into `target/deb/vm/`;
/// and DKMS on the host, for the guest.
pub fn for_vm(paths: &Paths, usrbd: &Path) -> Result<()> {
    ensure_build_tools()?;
    apt::install_missing(GUEST_PACKAGES)?;
    check_version(paths)?;
    let out = paths.target().join("deb/vm");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    package(paths, &out, "amd64", usrbd, true).map(|_| ())
}

fn ensure_build_tools() -> Result<()> {
    apt::install_missing(BUILD_PACKAGES).context("installing the Debian packaging tools")
}

/// debian/changelog names the version of the packages; it must be the
/// workspace's, which the service reports and the module is built as.
fn check_version(paths: &Paths) -> Result<()> {
    let changelog = paths.repo.join("board/debian/changelog");
    let version = cmd::stdout(
        Command::new("dpkg-parsechangelog")
            .arg("-l")
            .arg(&changelog)
            .args(["-S", "Version"]),
    )?;
    if version.trim() != VERSION {
        bail!(
            "{} is at {} but the workspace at {VERSION}: add a changelog entry",
            changelog.display(),
            version.trim()
        );
    }
    Ok(())
}

/// The static release `usrbd` for `target`, from `cargo xtask cross`'s build.
fn build_service(target: Target) -> Result<PathBuf> {
    let tc = if target.deb_arch == X86_64.deb_arch {
        Toolchain {
            prefix: String::new(),
        }
    } else {
        cross_build::toolchain(target)?
    };
    setup::ensure_rust_targets(&[target.triple])?;
    cross_build::userspace(target, &tc, false)?;
    Ok(cross_build::cross_dir().join(target.name).join("usrbd"))
}

/// Lays out the source tree dpkg-buildpackage reads under `work`:
/// `board/debian/` as `debian/`, the module's sources (not the harness's
/// build products in `kmod/`), and links to the rest of the checkout.
fn source_tree(paths: &Paths, work: &Path) -> Result<PathBuf> {
    let tree = work.join(format!("usrbd-{VERSION}"));
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("cannot clean {}", tree.display()))?;
    }
    cross_build::copy_sources(&paths.repo.join("board/debian"), &tree.join("debian"))?;
    cross_build::copy_sources(&paths.repo.join("kmod"), &tree.join("kmod"))?;
    for top in ["firmware", "board"] {
        std::os::unix::fs::symlink(paths.repo.join(top), tree.join(top))
            .with_context(|| format!("cannot link {top} into {}", tree.display()))?;
    }
    Ok(tree)
}

/// Runs dpkg-buildpackage for `arch` around `usrbd`; moves the .debs into
/// `out` and returns their paths.
fn package(
    paths: &Paths,
    out: &Path,
    arch: &str,
    usrbd: &Path,
    with_all: bool,
) -> Result<Vec<PathBuf>> {
    let work = paths.xdir.join("deb").join(arch);
    let tree = source_tree(paths, &work)?;
    let usrbd = fs::canonicalize(usrbd)
        .with_context(|| format!("the service binary {} is missing", usrbd.display()))?;
    let native = cmd::stdout(Command::new("dpkg").arg("--print-architecture"))?;
    let mut c = Command::new("dpkg-buildpackage");
    c.current_dir(&tree)
        .args(["-us", "-uc", if with_all { "-b" } else { "-B" }])
        .env("USRBD_BIN", &usrbd)
        // A stripped static binary and no -dbgsym package: what ships.
        .env("DEB_BUILD_OPTIONS", "noautodbgsym");
    if native.trim() != arch {
        c.arg(format!("--host-arch={arch}"));
    }
    let (ok, log) = cmd::capture(&mut c)?;
    let log_path = work.join("dpkg-buildpackage.log");
    fs::write(&log_path, &log)?;
    if !ok {
        bail!(
            "dpkg-buildpackage for {arch} failed (log {}):\n{}",
            log_path.display(),
            cmd::tail(&log, 30)
        );
    }
    let mut debs = Vec::new();
    for entry in fs::read_dir(&work).with_context(|| format!("cannot read {}", work.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if name.ends_with(".deb") {
            let dest = out.join(&name);
            fs::rename(&path, &dest)
                .with_context(|| format!("cannot move {name} to {}", out.display()))?;
            debs.push(dest);
        }
    }
    if debs.is_empty() {
        bail!(
            "dpkg-buildpackage for {arch} made no .deb (log {})",
            log_path.display()
        );
    }
    debs.sort();
    Ok(debs)
}

/// lintian on every package; any error or warning fails (the tags we
/// accept are overridden, with the reason, in board/debian/*.lintian-overrides).
fn lintian(debs: &[PathBuf]) -> Result<()> {
    eprintln!("deb: lintian on {} package(s)", debs.len());
    let (ok, text) = cmd::capture(
        Command::new("lintian")
            .args([
                "--fail-on",
                "error,warning",
                "--display-info",
                "--allow-root",
            ])
            .args(debs),
    )?;
    print!("{text}");
    if !ok {
        bail!("lintian found errors or warnings (above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arch_options() {
        let all = parse_args(&[]).unwrap();
        assert_eq!(all.len(), 3);
        let some = parse_args(&strings(&["--arch", "armhf", "--arch", "armhf"])).unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].triple, "armv7-unknown-linux-gnueabihf");
        assert!(parse_args(&strings(&["--arch", "i386"])).is_err());
        assert!(parse_args(&strings(&["--arch"])).is_err());
    }
}
