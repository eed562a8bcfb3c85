//! What the image carries of our own: the aarch64 service, the module built
//! against the image's kernel, the default config and the init script.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use super::progress::{self, step};
use crate::cmd;
use crate::setup::toolchain::Toolchain;
use crate::setup::{self, Paths};

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
/// `tc` is the aarch64 cross gcc.
pub fn prepare(
    root: &Path,
    work: &Path,
    kdir: &Path,
    kernel: &str,
    tc: &Toolchain,
    config: PathBuf,
) -> Result<Payload> {
    let init_script = root.join("firmware/packaging/S50usrbd");
    if !init_script.is_file() {
        bail!(
            "{} is missing (the service's init script)",
            init_script.display()
        );
    }
    let cross = Paths::new().target().join("cross/aarch64");
    let service = match cross.join("usrbd") {
        p if newer_than_sources(&p, &[root.join("firmware"), root.join("Cargo.lock")]) => {
            step(&format!(
                "service: {} ({})",
                p.display(),
                progress::human(progress::tree_size(&p))
            ));
            p
        }
        _ => build_service(root, tc)?,
    };
    let module = match cross.join("usrbd.ko") {
        p if newer_than_sources(&p, &[root.join("kmod")])
            && vermagic(&p)?.starts_with(&format!("{kernel} ")) =>
        {
            step(&format!("module: {} (vermagic {kernel})", p.display()));
            p
        }
        _ => build_module(root, work, kdir, kernel, tc)?,
    };
    check_static_aarch64(&service)?;
    Ok(Payload {
        service,
        module,
        config,
        init_script,
    })
}

fn build_service(root: &Path, tc: &Toolchain) -> Result<PathBuf> {
    step("service: cargo build --release -p usrbd --target aarch64-unknown-linux-gnu (static)");
    setup::ensure_rust_targets(&["aarch64-unknown-linux-gnu"])?;
    // Our own target dir: other tasks build the same target with other
    // features or linkers, and sharing would rebuild both sides each time.
    let target_dir = Paths::new().target().join("image/cargo");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd::run_quiet(
        Command::new(cargo)
            .args(["build", "--release", "-p", "usrbd", "--bin", "usrbd"])
            .args(["--target", "aarch64-unknown-linux-gnu", "--target-dir"])
            .arg(&target_dir)
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", tc.gcc())
            // RUSTFLAGS from the caller would replace ours and drop
            // crt-static: the image has no C library to link against.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            )
            .current_dir(root),
    )?;
    let bin = target_dir.join("aarch64-unknown-linux-gnu/release/usrbd");
    step(&format!(
        "service: {} ({})",
        bin.display(),
        progress::human(progress::tree_size(&bin))
    ));
    Ok(bin)
}

/// Fails unless `bin` is a static aarch64 ELF executable (no program
/// interpreter): the image carries no C library.
fn check_static_aarch64(bin: &Path) -> Result<()> {
    let elf = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // ELFCLASS64, little endian, e_machine EM_AARCH64 (183).
    if !elf.starts_with(b"\x7fELF\x02\x01") || u16_at(18) != Some(183) {
        bail!(
            "{} is not a 64-bit little-endian aarch64 ELF file",
            bin.display()
        );
    }
    let phoff = u64_at(32).context("truncated ELF header")? as usize;
    let phentsize = usize::from(u16_at(54).context("truncated ELF header")?);
    let phnum = usize::from(u16_at(56).context("truncated ELF header")?);
    for i in 0..phnum {
        const PT_INTERP: u32 = 3;
        if u32_at(phoff + i * phentsize) == Some(PT_INTERP) {
            bail!(
                "{} is dynamically linked; the image needs a static binary",
                bin.display()
            );
        }
    }
    Ok(())
}

/// Builds usrbd.ko in a copy of kmod/, so an x86 build running in kmod/ at
/// the same time never sees our arm64 objects. The copy persists: make
/// rebuilds only what changed.
fn build_module(
    root: &Path,
    work: &Path,
    kdir: &Path,
    kernel: &str,
    tc: &Toolchain,
) -> Result<PathBuf> {
    let src = root.join("kmod");
    if !src.join("Makefile").is_file() {
        bail!(
            "{} has no Makefile yet: the module cannot be built",
            src.display()
        );
    }
    let copy = work.join("kmod");
    copy_sources(&src, &copy)?;
    step(&format!(
        "module: make -C kmod ARCH=arm64 against {kernel} headers"
    ));
    cmd::run_quiet(
        Command::new("make")
            .arg("-C")
            .arg(&copy)
            .arg(format!("KDIR={}", kdir.display()))
            .arg("ARCH=arm64")
            .arg(format!("CROSS_COMPILE={}", tc.prefix))
            .arg("-j2"),
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
        progress::human(progress::tree_size(&ko))
    ));
    Ok(ko)
}

/// Copies a source tree, leaving out build products. Files whose content is
/// already there are left alone, so their mtimes do not trigger a rebuild.
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
            let dest = to.join(&name);
            let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if fs::read(&dest).ok().as_deref() != Some(data.as_slice()) {
                fs::write(&dest, &data).with_context(|| format!("writing {}", dest.display()))?;
            }
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
    let out = cmd::stdout(cmd::tool("modinfo").args(["-F", "vermagic"]).arg(ko))?;
    Ok(out.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header of type `p_type`.
    fn elf(machine: u16, p_type: u32) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[18..20].copy_from_slice(&machine.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&p_type.to_le_bytes());
        e
    }

    #[test]
    fn static_check_rejects_interpreter_and_other_arches() {
        let dir = std::env::temp_dir().join(format!("usrbd-elf-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bin");
        fs::write(&path, elf(183, 1)).unwrap();
        assert!(check_static_aarch64(&path).is_ok());
        fs::write(&path, elf(183, 3)).unwrap();
        assert!(check_static_aarch64(&path).is_err());
        fs::write(&path, elf(62, 1)).unwrap();
        assert!(check_static_aarch64(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
