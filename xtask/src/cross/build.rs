//! Static ARM builds of the service and vmkit, and the module against
//! Debian's ARM kernel headers; results land in `target/cross/<name>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::debian::{self, Flavour};
use crate::cmd;
use crate::setup::toolchain::{self, Toolchain};
use crate::setup::Paths;

/// One userspace target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Directory name under `target/cross/`.
    pub name: &'static str,
    pub triple: &'static str,
    /// GNU triple of the cross gcc that links it.
    pub gnu: &'static str,
    /// Debian architecture of that gcc's target libraries.
    pub deb_arch: &'static str,
    /// Module builds for this target: (flavour, file name of the `.ko`).
    pub modules: &'static [(Flavour, &'static str)],
}

pub const AARCH64: Target = Target {
    name: "aarch64",
    triple: "aarch64-unknown-linux-gnu",
    gnu: "aarch64-linux-gnu",
    deb_arch: "arm64",
    modules: &[(debian::ARM64, "usrbd.ko")],
};

/// 32-bit kernels on ARMv7 boards: `armmp`, plus `armmp-lpae` (Cortex-A7/A15
/// with more than 4 GiB of address space) as a build check.
pub const ARMV7: Target = Target {
    name: "armv7",
    triple: "armv7-unknown-linux-gnueabihf",
    gnu: "arm-linux-gnueabihf",
    deb_arch: "armhf",
    modules: &[
        (debian::ARMMP, "usrbd.ko"),
        (debian::ARMMP_LPAE, "usrbd-lpae.ko"),
    ],
};

pub const TARGETS: [Target; 2] = [AARCH64, ARMV7];

pub fn cross_dir() -> PathBuf {
    Paths::new().target().join("cross")
}

/// The cross gcc of `target`.
pub fn toolchain(target: Target) -> Result<Toolchain> {
    toolchain::ensure(target.gnu, target.deb_arch)
}

/// `CARGO_TARGET_<TRIPLE>_LINKER`.
fn linker_env(triple: &str) -> String {
    format!(
        "CARGO_TARGET_{}_LINKER",
        triple.to_uppercase().replace('-', "_")
    )
}

/// Builds `usrbd` and `vmkit` for `target` as static release binaries: once
/// with the `rpi` feature (copied as `usrbd-rpi`, proving rppal builds) and
/// once without (the `usrbd` every other board and the VM run). The VM tier
/// skips the `rpi` build (`with_rpi` false): it cannot use rppal anyway.
pub fn userspace(target: Target, tc: &Toolchain, with_rpi: bool) -> Result<()> {
    let paths = Paths::new();
    let out = cross_dir().join(target.name);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // RUSTFLAGS apply to target crates only when --target is given, so build
    // scripts and proc-macros stay dynamic host binaries.
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(v) if !v.trim().is_empty() => format!("{v} -C target-feature=+crt-static"),
        _ => "-C target-feature=+crt-static".to_owned(),
    };
    let built = paths.target().join(target.triple).join("release");
    let variants: &[(Option<&str>, &str)] = if with_rpi {
        &[(Some("usrbd/rpi"), "usrbd-rpi"), (None, "usrbd")]
    } else {
        &[(None, "usrbd")]
    };
    for &(features, usrbd_name) in variants {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .current_dir(&paths.repo)
            .args([
                "build",
                "--release",
                "--target",
                target.triple,
                "-p",
                "usrbd",
                "-p",
                "vmkit",
            ])
            .env(linker_env(target.triple), tc.gcc())
            .env("RUSTFLAGS", &rustflags);
        if let Some(f) = features {
            cargo.args(["--features", f]);
        }
        cmd::run(&mut cargo)?;
        copy(&built.join("usrbd"), &out.join(usrbd_name))?;
    }
    copy(&built.join("vmkit"), &out.join("vmkit"))?;
    Ok(())
}

/// Builds `kmod/` against Debian's `ver` headers of `flavour` in a private
/// copy of the sources (the x86 harness builds in `kmod/` itself at the same
/// time), and copies the result to `target/cross/<target>/<ko_name>`.
pub fn module(
    target: Target,
    tc: &Toolchain,
    flavour: Flavour,
    ko_name: &str,
    ver: &str,
) -> Result<()> {
    let kmod = Paths::new().repo.join("kmod");
    if !kmod.join("Makefile").exists() {
        bail!(
            "{} has no Makefile: the module cannot be built",
            kmod.display()
        );
    }
    let out = cross_dir().join(target.name);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let ko = out.join(ko_name);
    // A failed build must not leave an older module looking current.
    if ko.exists() {
        std::fs::remove_file(&ko).with_context(|| format!("cannot remove {}", ko.display()))?;
    }
    let kdir = debian::headers(&cross_dir(), ver, flavour)?;
    let build = cross_dir().join(format!("kmod-{}", flavour.name));
    if build.exists() {
        std::fs::remove_dir_all(&build)
            .with_context(|| format!("cannot clean {}", build.display()))?;
    }
    copy_sources(&kmod, &build)?;
    cmd::run(
        Command::new("make")
            .arg("-C")
            .arg(&build)
            .arg(format!("KDIR={}", kdir.display()))
            .arg(format!("ARCH={}", flavour.kernel_arch))
            .arg(format!("CROSS_COMPILE={}", tc.prefix))
            .arg("-j2"),
    )?;
    copy(&build.join("usrbd.ko"), &ko)
}

/// Copies the sources (not build products) under `from` to `to`.
pub(crate) fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_sources(&path, &to.join(&*name))?;
        } else if is_source(&name) {
            copy(&path, &to.join(&*name))?;
        }
    }
    Ok(())
}

fn is_source(name: &str) -> bool {
    const PRODUCTS: [&str; 8] = [
        ".o", ".ko", ".mod", ".mod.c", ".cmd", ".order", ".symvers", ".a",
    ];
    !PRODUCTS.iter().any(|s| name.ends_with(s)) && name != "modules.order"
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// Prints `file` of each artifact in `target/cross/<name>/`.
pub fn describe(target: Target) -> Result<()> {
    let dir = cross_dir().join(target.name);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let out = cmd::stdout(Command::new("file").args(&names))?;
    print!("{out}");
    Ok(())
}
