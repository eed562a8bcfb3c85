//! What the image carries of our own: the aarch64 service, the module built
//! against the image's kernel, the default config and the init script.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use super::host::{self, step};

pub struct Payload {
    pub service: PathBuf,
    pub module: PathBuf,
    pub config: PathBuf,
    pub init_script: PathBuf,
}

/// Finds or builds the service and the module. `cargo xtask cross` leaves
/// both in target/cross/aarch64/; they are used when newer than their
/// sources (and, for the module, built for the image's kernel), otherwise
/// we build our own.
pub fn prepare(
    root: &Path,
    work: &Path,
    kdir: &Path,
    kernel: &str,
    config: PathBuf,
) -> Result<Payload> {
    let init_script = root.join("firmware/packaging/S50usrbd");
    if !init_script.is_file() {
        bail!(
            "{} is missing (the service's init script)",
            init_script.display()
        );
    }
    let cross = root.join("target/cross/aarch64");
    let service = match cross.join("usrbd") {
        p if newer_than_sources(&p, &[root.join("firmware"), root.join("Cargo.lock")]) => {
            step(&format!(
                "service: {} ({})",
                p.display(),
                host::human(host::tree_size(&p))
            ));
            p
        }
        _ => build_service(root)?,
    };
    let module = match cross.join("usrbd.ko") {
        p if newer_than_sources(&p, &[root.join("kmod")])
            && vermagic(&p)?.starts_with(&format!("{kernel} ")) =>
        {
            step(&format!("module: {} (vermagic {kernel})", p.display()));
            p
        }
        _ => build_module(root, work, kdir, kernel)?,
    };
    Ok(Payload {
        service,
        module,
        config,
        init_script,
    })
}

fn build_service(root: &Path) -> Result<PathBuf> {
    step("service: cargo build --release -p usrbd --target aarch64-unknown-linux-gnu (static)");
    host::run(
        Command::new("rustup")
            .args(["target", "add", "aarch64-unknown-linux-gnu"])
            .current_dir(root),
    )?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    host::run(
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "usrbd",
                "--bin",
                "usrbd",
                "--target",
                "aarch64-unknown-linux-gnu",
            ])
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            )
            // Per-target flags leave the host build's cache alone.
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            )
            .current_dir(root),
    )?;
    let bin = root.join("target/aarch64-unknown-linux-gnu/release/usrbd");
    step(&format!(
        "service: {} ({})",
        bin.display(),
        host::human(host::tree_size(&bin))
    ));
    Ok(bin)
}

/// Builds usrbd.ko in a copy of kmod/, so an x86 build running in kmod/ at
/// the same time never sees our arm64 objects.
fn build_module(root: &Path, work: &Path, kdir: &Path, kernel: &str) -> Result<PathBuf> {
    let src = root.join("kmod");
    if !src.join("Makefile").is_file() {
        bail!(
            "{} has no Makefile yet: the module cannot be built",
            src.display()
        );
    }
    let copy = work.join("kmod");
    if copy.exists() {
        fs::remove_dir_all(&copy)?;
    }
    copy_sources(&src, &copy)?;
    step(&format!(
        "module: make -C kmod ARCH=arm64 against {kernel} headers"
    ));
    host::run(
        Command::new("make")
            .arg("-C")
            .arg(&copy)
            .arg(format!("KDIR={}", kdir.display()))
            .args(["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]),
    )?;
    let ko = copy.join("usrbd.ko");
    if !ko.is_file() {
        bail!("make -C kmod left no usrbd.ko in {}", copy.display());
    }
    let magic = vermagic(&ko)?;
    if !magic.starts_with(&format!("{kernel} ")) {
        bail!("built module has vermagic `{magic}`, the image kernel is {kernel}");
    }
    step(&format!(
        "module: {} ({})",
        ko.display(),
        host::human(host::tree_size(&ko))
    ));
    Ok(ko)
}

/// Copies a source tree, leaving out build products.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_build_product(&name) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_sources(&path, &to.join(&name))?;
        } else {
            fs::copy(&path, to.join(&name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// True if `artifact` exists and no file under `sources` changed after it.
fn newer_than_sources(artifact: &Path, sources: &[PathBuf]) -> bool {
    fn newest(path: &Path) -> Option<SystemTime> {
        let meta = fs::symlink_metadata(path).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        fs::read_dir(path)
            .ok()?
            .flatten()
            // Build products inside the tree do not make the artifact stale.
            .filter(|e| {
                e.file_name() != "target" && !is_build_product(&e.file_name().to_string_lossy())
            })
            .filter_map(|e| newest(&e.path()))
            .max()
    }
    let Some(built) = fs::metadata(artifact).and_then(|m| m.modified()).ok() else {
        return false;
    };
    sources.iter().filter_map(|s| newest(s)).all(|t| t <= built)
}

fn is_build_product(name: &str) -> bool {
    [".o", ".ko", ".mod", ".mod.c", ".cmd", ".order", ".symvers"]
        .iter()
        .any(|ext| name.ends_with(ext))
        || name.starts_with(".tmp")
}

fn vermagic(ko: &Path) -> Result<String> {
    let out = host::capture(host::tool("modinfo").args(["-F", "vermagic"]).arg(ko))?;
    Ok(out.trim().to_owned())
}
