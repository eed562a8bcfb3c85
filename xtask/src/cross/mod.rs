//! `cargo xtask cross [--vm]`: ARM builds of the service and the module, and
//! the arm64 VM tier that runs them (with the armv7 service on the 64-bit
//! kernel through the compat ioctl path).
//!
//! No Docker here: Debian's cross gcc links, rustup provides the Rust
//! targets, and the kernel headers, kernel image and busybox come from
//! Debian's arm64/armhf `.deb`s unpacked under `target/cross/`.

pub(crate) mod build;
pub(crate) mod debian;
pub(crate) mod vm;

use anyhow::{bail, Context, Result};

use build::{Target, AARCH64, ARMV7, TARGETS};
use debian::Flavour;

use crate::setup::{self, apt};

const USAGE: &str = "\
usage: cargo xtask cross [--vm]

  (no option)  build usrbd (with and without `rpi`), vmkit and usrbd.ko for
               aarch64 and armv7 into target/cross/{aarch64,armv7}/
  --vm         build what the arm64 VM needs and run its scenarios

env: USRBD_CROSS_KVER=6.12.N+deb12 pins the Debian kernel version.
";

pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        None => build_all(),
        Some("--vm") => {
            let (_, failed) = arm64_tier()?;
            if failed > 0 {
                bail!("{failed} arm64 scenario(s) failed");
            }
            Ok(())
        }
        Some("-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown option `{other}`\n{USAGE}"),
    }
}

/// Builds, boots and runs the arm64 VM scenarios; (passed, failed).
/// Called by `cargo xtask test` as well as `cargo xtask cross --vm`.
pub fn arm64_tier() -> Result<(usize, usize)> {
    prepare()?;
    setup::ensure_qemu(&["qemu-system-arm"])?;
    let known = debian::known_packages()?;
    let ver = debian::pick_version(&known, debian::ARM64, true)?;
    ensure_kbuild(std::slice::from_ref(&ver))?;
    let tc64 = build::toolchain(AARCH64)?;
    build::userspace(AARCH64, &tc64, false)?;
    build::userspace(ARMV7, &build::toolchain(ARMV7)?, false)?;
    build::module(AARCH64, &tc64, debian::ARM64, "usrbd.ko", &ver)?;

    let cache = build::cross_dir();
    let root = setup::Paths::new().repo;
    let bin = |t: &Target, name: &str| cache.join(t.name).join(name);
    let inputs = vm::Inputs {
        kernel: debian::kernel_image(&cache, &known, &ver, debian::ARM64)?,
        busybox: debian::busybox(&cache, "arm64")?,
        binaries: vec![
            ("usrbd-aarch64".into(), bin(&AARCH64, "usrbd")),
            ("usrbd-armv7".into(), bin(&ARMV7, "usrbd")),
            ("vmkit-aarch64".into(), bin(&AARCH64, "vmkit")),
            ("vmkit-armv7".into(), bin(&ARMV7, "vmkit")),
        ],
        module: bin(&AARCH64, "usrbd.ko"),
        tests: root.join("tests/arm64"),
        scenarios: root.join("tests/arm64/scenarios"),
        files: Vec::new(),
        cpu: "cortex-a72",
        led_tags: &["aarch64", "armv7"],
        // A healthy run takes well under a minute.
        timeout: std::time::Duration::from_secs(300),
        work: cache.join("vm"),
    };
    eprintln!("cross: arm64 VM kernel {ver}-arm64");
    vm::run(&inputs)
}

fn build_all() -> Result<()> {
    prepare()?;
    let known = debian::known_packages()?;
    let mut versions: Vec<(Flavour, String)> = Vec::new();
    for target in TARGETS {
        for (flavour, _) in target.modules {
            let ver = debian::pick_version(&known, *flavour, false)?;
            versions.push((*flavour, ver));
        }
    }
    let kvers: Vec<String> = versions.iter().map(|(_, v)| v.clone()).collect();
    ensure_kbuild(&kvers)?;
    for (flavour, ver) in &versions {
        eprintln!(
            "cross: {} headers: linux-headers-{ver}-{}",
            flavour.name, flavour.name
        );
    }
    // Every build runs even when one fails, so one report shows them all.
    let mut failures: Vec<String> = Vec::new();
    for target in TARGETS {
        let tc = build::toolchain(target)?;
        if let Err(e) = build::userspace(target, &tc, true) {
            failures.push(format!("{} userspace: {e:#}", target.name));
        }
        for (flavour, ko_name) in target.modules {
            let ver = versions
                .iter()
                .find(|(f, _)| f.name == flavour.name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            if let Err(e) = build::module(target, &tc, *flavour, ko_name, ver) {
                failures.push(format!("{} {} module: {e:#}", target.name, flavour.name));
            }
        }
    }
    for target in TARGETS {
        println!("target/cross/{}:", target.name);
        build::describe(target).with_context(|| format!("cannot describe {}", target.name))?;
    }
    if !failures.is_empty() {
        bail!(
            "{} cross build(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// Toolchains and apt architectures every cross task needs.
pub(crate) fn prepare() -> Result<()> {
    apt::install_missing(&["make", "file", "bc", "tar"])?;
    apt::add_architectures(&["arm64", "armhf"])?;
    setup::ensure_rust_targets(&TARGETS.map(|t| t.triple))
}

/// The host's `linux-kbuild-<ver>` backs the unpacked headers' scripts.
fn ensure_kbuild(versions: &[String]) -> Result<()> {
    let mut pkgs: Vec<String> = versions
        .iter()
        .map(|v| format!("linux-kbuild-{v}"))
        .collect();
    pkgs.sort();
    pkgs.dedup();
    let refs: Vec<&str> = pkgs.iter().map(String::as_str).collect();
    apt::install_missing(&refs)
}
