//! `cargo xtask cross-rs`: what a desktop user runs, `cross build --release`
//! for aarch64 and armv7 with rootful Podman and the images of Cross.toml,
//! `file` on each binary, and usrbd.ko built in the same image.
//!
//! Everything it needs is set up here, so a fresh machine can run it: Debian's
//! podman, runc, netavark and mmdebstrap; /etc/containers/containers.conf;
//! `debian:bookworm-slim` made by mmdebstrap (no registry is reachable); cross
//! itself under target/cross-rs/. Podman keeps its images where it always does
//! (/var/lib/containers).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::{self, apt, Paths};

/// The cross release the README and Cross.toml were checked with.
const CROSS_VERSION: &str = "0.2.5";
/// What Cross.toml's Dockerfiles start `FROM`.
const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
const CONTAINERS_CONF: &str = "/etc/containers/containers.conf";
/// First line of the file when this code wrote it (and may rewrite it).
const CONTAINERS_CONF_MARK: &str = "# Written by `cargo xtask cross-rs` (xtask/src/cross_rs.rs).";
/// Rootful Podman on these machines: no CAP_SYS_RESOURCE (crun's setrlimit
/// of the default ulimits fails), hybrid cgroups (crun refuses; runc with
/// the cgroupfs manager works, with or without systemd). Logs and events go
/// to files: a chroot (the CI's clean room) has no journald.
const CONTAINERS_CONF_TEXT: &str = "\
# Written by `cargo xtask cross-rs` (xtask/src/cross_rs.rs).
[containers]
default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]
log_driver = \"k8s-file\"

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
";
/// The settings above, as lines an existing file must carry.
const CONTAINERS_CONF_KEYS: &[&str] = &[
    "default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]",
    "runtime = \"runc\"",
    "cgroup_manager = \"cgroupfs\"",
];
/// podman with its network stack (netavark needs iptables), the OCI
/// runtime, and mmdebstrap for the base image.
const PACKAGES: &[&str] = &[
    "podman",
    "runc",
    "netavark",
    "aardvark-dns",
    "iptables",
    "mmdebstrap",
    "file",
    "ca-certificates",
];

/// One `cross build` target and what its binary and module must look like.
struct Target {
    triple: &'static str,
    /// Substrings `file` must print for the service binary.
    elf: &'static [&'static str],
    /// Substrings `file` must print for usrbd.ko.
    ko: &'static [&'static str],
}

const TARGETS: [Target; 2] = [
    Target {
        triple: "aarch64-unknown-linux-gnu",
        elf: &[
            "ELF 64-bit LSB",
            "ARM aarch64",
            "/lib/ld-linux-aarch64.so.1",
        ],
        ko: &["ELF 64-bit LSB relocatable", "ARM aarch64"],
    },
    Target {
        triple: "armv7-unknown-linux-gnueabihf",
        elf: &["ELF 32-bit LSB", "ARM, EABI5", "/lib/ld-linux-armhf.so.3"],
        ko: &["ELF 32-bit LSB relocatable", "ARM, EABI5"],
    },
];

/// `cargo xtask cross-rs`.
pub fn run(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`cargo xtask cross-rs` takes no options (got `{a}`)");
    }
    check(&Paths::new())
}

/// Setup, then both targets; the `cargo xtask test` step.
pub fn check(paths: &Paths) -> Result<()> {
    let dir = paths.target().join("cross-rs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let podman = ensure_podman()?;
    ensure_base_image(&podman, &dir)?;
    setup::ensure_rust_targets(&TARGETS.map(|t| t.triple))?;
    let cross = ensure_cross(&dir)?;
    for target in &TARGETS {
        let start = Instant::now();
        build(paths, &dir, &podman, &cross, target)
            .with_context(|| format!("cross build for {}", target.triple))?;
        println!(
            "    {}: service and usrbd.ko in {:.0} s",
            target.triple,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Podman from Debian, configured for this machine; its path.
fn ensure_podman() -> Result<PathBuf> {
    apt::install_missing(PACKAGES).context("installing podman")?;
    let conf = Path::new(CONTAINERS_CONF);
    match fs::read_to_string(conf) {
        Ok(text) if text == CONTAINERS_CONF_TEXT => {}
        Ok(text) if !text.starts_with(CONTAINERS_CONF_MARK) => {
            let missing = missing_settings(&text);
            if !missing.is_empty() {
                // Not merged by hand: TOML tables cannot be appended twice.
                bail!(
                    "{CONTAINERS_CONF} exists without {}; add them ([containers] / [engine]) \
                     or remove the file and let cargo xtask write it",
                    missing.join(", ")
                );
            }
        }
        // Absent, or written by an older version of this code.
        _ => {
            eprintln!("cross-rs: writing {CONTAINERS_CONF}");
            fs::create_dir_all("/etc/containers").context("creating /etc/containers")?;
            fs::write(conf, CONTAINERS_CONF_TEXT)
                .with_context(|| format!("writing {CONTAINERS_CONF}"))?;
        }
    }
    let podman = cmd::which("podman").context("podman not found after installing it")?;
    cmd::run_quiet(Command::new(&podman).arg("info"))
        .context("podman does not work (see `podman info`)")?;
    Ok(podman)
}

/// The lines of CONTAINERS_CONF_KEYS that `text` lacks.
fn missing_settings(text: &str) -> Vec<&'static str> {
    CONTAINERS_CONF_KEYS
        .iter()
        .copied()
        .filter(|k| !text.lines().any(|l| l.trim() == *k))
        .collect()
}

/// `debian:bookworm-slim` without a registry: a minbase bookworm made by
/// mmdebstrap and imported under that name, once.
fn ensure_base_image(podman: &Path, dir: &Path) -> Result<()> {
    if cmd::succeeds(Command::new(podman).args(["image", "exists", BASE_IMAGE])) {
        return Ok(());
    }
    let tar = dir.join("bookworm-minbase.tar");
    if !tar.exists() {
        eprintln!(
            "cross-rs: mmdebstrap bookworm minbase -> {} (~2 min)",
            tar.display()
        );
        let partial = dir.join("bookworm-minbase.tar.partial");
        cmd::run_quiet(
            cmd::tool("mmdebstrap")
                .args(["--variant=minbase", "--format=tar", "bookworm"])
                .arg(&partial)
                .args([
                    "deb http://deb.debian.org/debian bookworm main",
                    "deb http://deb.debian.org/debian bookworm-updates main",
                    "deb http://deb.debian.org/debian-security bookworm-security main",
                ]),
        )?;
        fs::rename(&partial, &tar)?;
    }
    eprintln!("cross-rs: podman import {} {BASE_IMAGE}", tar.display());
    cmd::run_quiet(Command::new(podman).arg("import").arg(&tar).arg(BASE_IMAGE))
}

/// cross, built once into target/cross-rs/bin.
fn ensure_cross(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("bin/cross");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Asked of cargo, not of cross: `cross --version` in a cargo project
    // runs the rustup calls of `build` against the machine's RUSTUP_HOME.
    let listed = cmd::stdout(
        Command::new(&cargo)
            .args(["install", "--list", "--root"])
            .arg(dir),
    )
    .unwrap_or_default();
    if bin.exists()
        && listed
            .lines()
            .any(|l| l == format!("cross v{CROSS_VERSION}:"))
    {
        return Ok(bin);
    }
    eprintln!(
        "cross-rs: cargo install cross {CROSS_VERSION} into {} (~4 min)",
        dir.display()
    );
    cmd::run(
        Command::new(&cargo)
            .args([
                "install",
                "--locked",
                "--quiet",
                "cross",
                "--version",
                CROSS_VERSION,
            ])
            .arg("--root")
            .arg(dir),
    )?;
    Ok(bin)
}

/// The machine's toolchain directory (what `rustc` of the current toolchain
/// lives in).
fn toolchain_dir() -> Result<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = cmd::stdout(Command::new(rustc).args(["--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn build(paths: &Paths, dir: &Path, podman: &Path, cross: &Path, t: &Target) -> Result<()> {
    // cross 0.2.5 misreads rustup 1.29's `(active, default)` suffix of
    // `rustup toolchain list` and runs `rustup toolchain add`, updating the
    // machine's toolchain. So cross gets a RUSTUP_HOME of its own that only
    // links the machine's toolchain, with nothing default or active (the
    // list is then the bare name, which cross matches) and self-update off;
    // that toolchain's bin/ first on PATH; and CROSS_CUSTOM_TOOLCHAIN, so it
    // adds no targets or components (setup::ensure_rust_targets did).
    let toolchain = toolchain_dir()?;
    let name = toolchain
        .file_name()
        .context("the toolchain's sysroot has no name")?;
    let rustup_home = dir.join("rustup");
    let _ = fs::remove_dir_all(&rustup_home);
    fs::create_dir_all(rustup_home.join("toolchains"))?;
    fs::write(
        rustup_home.join("settings.toml"),
        "version = \"12\"\nauto_self_update = \"disable\"\n",
    )?;
    std::os::unix::fs::symlink(&toolchain, rustup_home.join("toolchains").join(name))
        .context("linking the toolchain into cross's RUSTUP_HOME")?;
    let path = std::env::join_paths(std::iter::once(toolchain.join("bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let target_dir = dir.join("target");
    eprintln!(
        "cross-rs: cross build --release --target {} (image build and compile: minutes)",
        t.triple
    );
    cmd::run(
        Command::new(cross)
            .args(["build", "--release", "--target", t.triple])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&paths.repo)
            .env("PATH", path)
            .env("RUSTUP_HOME", &rustup_home)
            .env("CROSS_CUSTOM_TOOLCHAIN", "1")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("CROSS_CONTAINER_ENGINE", podman),
    )?;
    let binary = target_dir.join(t.triple).join("release/usrbd");
    expect_file(&binary, t.elf)?;

    let image = cross_image(podman, t.triple)?;
    let kmod = dir.join(format!("kmod-{}", t.triple));
    let _ = fs::remove_dir_all(&kmod);
    cmd::run_quiet(
        Command::new("cp")
            .arg("-a")
            .arg(paths.repo.join("kmod"))
            .arg(&kmod),
    )?;
    eprintln!("cross-rs: make -C kmod in {image}");
    cmd::run_quiet(
        Command::new(podman)
            .args(["run", "--rm", "-v"])
            .arg(format!("{}:/kmod", kmod.display()))
            .arg(&image)
            .args([
                "sh",
                "-c",
                // clean first: a developer's kmod/ may hold host objects.
                "set -e; for t in clean modules; do \
                 make -C /kmod KDIR=\"$KDIR\" ARCH=\"$ARCH\" CROSS_COMPILE=\"$CROSS_COMPILE\" $t; done",
            ]),
    )?;
    expect_file(&kmod.join("usrbd.ko"), t.ko)
}

/// The image cross built for `triple` from Cross.toml's Dockerfile (cross
/// names it `cross-custom-<crate>:<triple>-<hash>`), the newest.
fn cross_image(podman: &Path, triple: &str) -> Result<String> {
    // podman lists the newest first.
    let list =
        cmd::stdout(Command::new(podman).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]))?;
    list.lines()
        .find(|l| l.contains("cross-custom-") && l.contains(&format!(":{triple}-")))
        .map(str::to_owned)
        .with_context(|| format!("podman has no cross-custom image for {triple}:\n{list}"))
}

/// `file` on `path` names every one of `want`.
fn expect_file(path: &Path, want: &[&str]) -> Result<()> {
    let out = cmd::stdout(Command::new("file").arg("-b").arg(path))?;
    let missing: Vec<&str> = want.iter().copied().filter(|w| !out.contains(w)).collect();
    if !missing.is_empty() {
        bail!(
            "file {}: {} (expected {})",
            path.display(),
            out.trim(),
            missing.join(", ")
        );
    }
    println!("    {}: {}", path.display(), out.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_conf_needs_every_setting() {
        assert!(missing_settings(CONTAINERS_CONF_TEXT).is_empty());
        assert!(CONTAINERS_CONF_TEXT.starts_with(CONTAINERS_CONF_MARK));
        let crun = CONTAINERS_CONF_TEXT.replace("runtime = \"runc\"", "runtime = \"crun\"");
        assert_eq!(missing_settings(&crun), ["runtime = \"runc\""]);
        assert_eq!(missing_settings("").len(), CONTAINERS_CONF_KEYS.len());
    }

    #[test]
    fn file_check_rejects_what_is_not_that_elf() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = expect_file(&manifest, TARGETS[0].elf).unwrap_err();
        assert!(format!("{err:#}").contains("expected ELF 64-bit LSB"));
        // The test binary itself is an x86-64 ELF, not an aarch64 one.
        let me = std::env::current_exe().unwrap();
        assert!(expect_file(&me, &["ELF 64-bit LSB"]).is_ok());
        assert!(expect_file(&me, TARGETS[0].elf).is_err());
    }
}
