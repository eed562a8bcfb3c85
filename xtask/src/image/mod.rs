//! `cargo xtask image` and `run-image`: a flashable SD-card image built
//! offline from Debian packages (kernel, raspi-firmware, busybox) plus our
//! own service, module and config, and its boot test in QEMU `raspi3b`.
//!
//! Everything downloaded or built lands under `target/image/`: `apt/` (a
//! private apt root and the .debs), `pkgs/` (extracted packages, the
//! arm64 kernel headers), `<board>/` (staging trees and the image).

mod boot;
pub mod cpio;
mod disk;
mod host;
mod payload;
mod progress;
mod rootfs;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::apt::{self, Apt};
use crate::setup::toolchain;
use crate::setup::Paths;
use progress::step;

/// Lines the serial console must show before `run-image` calls the boot
/// good: the service's own log line, then the init script's check.
const SERVING_MARKER: &str = "usrbd: serving /dev/";
const READY_MARKER: &str = "USRBD-IMAGE-READY";
/// Leaves the root file system room for the RAM backend's saved image
/// (`/data/usrbd.img`, the device size: 256 MiB by default).
const DEFAULT_SIZE: u64 = 1 << 30;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Board {
    Rpi3,
    Rpi4,
}

impl Board {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "rpi3-64" => Ok(Self::Rpi3),
            "rpi4-64" => Ok(Self::Rpi4),
            other => bail!("unknown board `{other}` (accepted: rpi3-64, rpi4-64)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rpi3 => "rpi3-64",
            Self::Rpi4 => "rpi4-64",
        }
    }

    /// The `board/pinmaps/` file with this board's panel wiring.
    fn pinmap(self) -> &'static str {
        match self {
            Self::Rpi3 => "rpi3.toml",
            Self::Rpi4 => "rpi4.toml",
        }
    }

    /// Kernel arguments only this board needs. The Pi 3's GPU shares its
    /// memory and wants a CMA pool; the Pi 4 boots without one (the same
    /// choice Debian's raspi-firmware makes).
    fn cmdline(self) -> &'static [&'static str] {
        match self {
            Self::Rpi3 => &["cma=64M"],
            Self::Rpi4 => &[],
        }
    }
}

struct Options {
    board: Board,
    size: u64,
    image: Option<PathBuf>,
    timeout: Duration,
    quiet: bool,
    tier: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        board: Board::Rpi3,
        size: DEFAULT_SIZE,
        image: None,
        timeout: DEFAULT_TIMEOUT,
        quiet: false,
        tier: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--board" => opts.board = Board::parse(value()?)?,
            "--size" => opts.size = parse_size(value()?)?,
            "--image" => opts.image = Some(PathBuf::from(value()?)),
            "--timeout" => {
                let secs = value()?;
                let secs: u64 = secs
                    .parse()
                    .with_context(|| format!("--timeout {secs}: seconds"))?;
                opts.timeout = Duration::from_secs(secs);
            }
            "--quiet" => opts.quiet = true,
            "--tier" => opts.tier = true,
            other => bail!(
                "unknown option `{other}`\n\
                 usage: cargo xtask image [--board rpi3-64|rpi4-64] [--size 1GiB]\n       \
                 cargo xtask run-image [--board B] [--image PATH] [--timeout SECS] [--quiet]\n       \
                 cargo xtask run-image --tier   (what `cargo xtask test` runs: build + boot rpi3-64)"
            ),
        }
    }
    Ok(opts)
}

/// `512MiB`, `1GiB`, `1G`, `256M` or bytes.
fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num.parse().with_context(|| format!("size `{text}`"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => bail!("size `{text}`: unit must be B, KiB, MiB or GiB"),
    };
    num.checked_mul(1 << shift)
        .with_context(|| format!("size `{text}` overflows"))
}

fn default_image(target: &Path, board: Board) -> PathBuf {
    target
        .join("image")
        .join(board.name())
        .join(format!("usrbd-{}.img", board.name()))
}

pub fn build(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let image = build_image(opts.board, opts.size)?;
    print!("{}", disk::fdisk_list(&image)?);
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    if opts.tier {
        let (passed, failed) = image_tier()?;
        println!("image tier: {passed} passed, {failed} failed");
        if failed > 0 {
            bail!("{failed} image check(s) failed");
        }
        return Ok(());
    }
    let target = Paths::new().target();
    let image = match opts.image {
        Some(path) => path,
        None => {
            let path = default_image(&target, opts.board);
            if !path.is_file() {
                step(&format!(
                    "{} does not exist yet: building it",
                    path.display()
                ));
                build_image(opts.board, opts.size)?;
            }
            path
        }
    };
    host::ensure_tools()?;
    let work = image
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| target.join("image"));
    boot::boot(
        &image,
        &work,
        &boot::Markers {
            all: &[SERVING_MARKER, READY_MARKER],
            timeout: opts.timeout,
            echo: !opts.quiet,
        },
    )
}

/// The harness's image checks: build rpi3-64, then boot it until the
/// service serves. Returns (passed, failed).
pub fn image_tier() -> Result<(usize, usize)> {
    let (mut passed, mut failed) = (0, 0);
    let image = match build_image(Board::Rpi3, DEFAULT_SIZE) {
        Ok(image) => {
            println!("PASS image-build");
            passed += 1;
            image
        }
        Err(e) => {
            println!("FAIL image-build: {e:#}");
            println!("SKIP image-boots-to-serving: no image");
            return Ok((passed, failed + 1));
        }
    };
    let work = image.parent().map(Path::to_path_buf).unwrap_or_default();
    let markers = boot::Markers {
        all: &[SERVING_MARKER, READY_MARKER],
        timeout: DEFAULT_TIMEOUT,
        echo: false,
    };
    match boot::boot(&image, &work, &markers) {
        Ok(()) => {
            println!("PASS image-boots-to-serving");
            passed += 1;
        }
        Err(e) => {
            println!("FAIL image-boots-to-serving: {e:#}");
            failed += 1;
        }
    }
    Ok((passed, failed))
}

/// Every step of the build; returns the image path.
fn build_image(board: Board, size: u64) -> Result<PathBuf> {
    let started = Instant::now();
    let layout = disk::Layout::new(size)?;
    let paths = Paths::new();
    let root = &paths.repo;
    let base = paths.target().join("image");
    let work = base.join(board.name());
    fs::create_dir_all(&work)?;
    step(&format!(
        "board {}, image size {}",
        board.name(),
        progress::human(size)
    ));
    host::ensure_tools()?;

    let apt = Apt::private(&base.join("apt"))?;
    apt.update()?;
    let abi = newest_kernel(&apt)?;
    let release = format!("{abi}-arm64");
    step(&format!(
        "kernel: linux-image-{release} (newest 6.12 in bookworm)"
    ));
    let pkgs = base.join("pkgs");
    let kernel_pkg = unpack(&apt, &pkgs, &format!("linux-image-{release}"))?;
    let firmware_pkg = unpack(&apt, &pkgs, "raspi-firmware")?;
    let busybox_pkg = unpack(&apt, &pkgs, "busybox-static:arm64")?;
    let kdir = kernel_headers(&apt, &pkgs, &abi)?;
    let tc = toolchain::ensure("aarch64-linux-gnu", "arm64")?;

    let config = work.join("usrbd.toml");
    service_config(root, board, &config)?;
    let payload = payload::prepare(root, &work, &kdir, &release, &tc, config)?;

    let staging = work.join("rootfs");
    let parts = rootfs::Parts {
        board: &root.join("board/image"),
        kernel_pkg: &kernel_pkg,
        release: &release,
        busybox: &busybox_pkg.join("bin/busybox"),
        payload: &payload,
    };
    rootfs::stage(&staging, &parts)?;
    step(&format!(
        "root tree: busybox, usrbd, usrbd.ko in /lib/modules/{release}/extra, {}",
        progress::human(progress::tree_size(&staging))
    ));

    let boot_dir = work.join("boot");
    if boot_dir.exists() {
        fs::remove_dir_all(&boot_dir)?;
    }
    fs::create_dir_all(&boot_dir)?;
    rootfs::initramfs(
        &boot_dir.join("initrd.img"),
        &parts,
        &rootfs::modules_dir(&staging, &release),
    )?;
    boot_partition_files(root, board, &boot_dir, &kernel_pkg, &firmware_pkg, &release)?;

    let boot_fs = work.join("boot.vfat");
    let root_fs = work.join("root.ext4");
    disk::make_boot_fs(&boot_fs, &boot_dir)?;
    disk::make_root_fs(&root_fs, &staging, layout.root_size())?;
    let image = default_image(&paths.target(), board);
    disk::assemble(&image, &layout, &boot_fs, &root_fs)?;
    fs::remove_file(&boot_fs)?;
    fs::remove_file(&root_fs)?;
    step(&format!(
        "image: {} ({}) built in {:.0}s",
        image.display(),
        progress::human(size),
        started.elapsed().as_secs_f64()
    ));
    Ok(image)
}

/// The newest `6.12.N+deb12` kernel ABI the indexes hold for arm64.
fn newest_kernel(apt: &Apt) -> Result<String> {
    let names = apt.search_names(r"^linux-image-6\.12\.[0-9]+\+deb12-arm64$")?;
    newest_abi(&names).context("no linux-image-6.12.N+deb12-arm64 in the bookworm indexes")
}

/// Picks the highest N among `linux-image-6.12.N+deb12-arm64` names.
fn newest_abi(names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| {
            let abi = name.strip_prefix("linux-image-")?.strip_suffix("-arm64")?;
            let n: u32 = abi
                .strip_prefix("6.12.")?
                .strip_suffix("+deb12")?
                .parse()
                .ok()?;
            Some((n, abi.to_owned()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, abi)| abi)
}

/// Downloads a package and extracts it once into `pkgs/<deb name>/`.
fn unpack(apt: &Apt, pkgs: &Path, pkg: &str) -> Result<PathBuf> {
    let deb = apt.download(pkg)?;
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .context("deb without a name")?;
    let dir = pkgs.join(stem);
    let done = dir.join(".extracted");
    if !done.exists() {
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        apt::extract(&deb, &dir)?;
        fs::write(&done, "")?;
        step(&format!(
            "extracted {pkg}: {}",
            progress::human(progress::tree_size(&dir))
        ));
    }
    Ok(dir)
}

/// arm64 headers for out-of-tree modules: the -arm64 and -common packages
/// and the host's kbuild tools extracted into one tree, so their relative
/// `scripts`/`tools` links resolve; the Makefile's absolute include of the
/// -common tree is pointed at the extracted copy. Returns KDIR.
fn kernel_headers(apt: &Apt, pkgs: &Path, abi: &str) -> Result<PathBuf> {
    let tree = pkgs.join(format!("headers-{abi}-arm64"));
    let kdir = tree.join(format!("usr/src/linux-headers-{abi}-arm64"));
    let done = tree.join(".extracted");
    if !done.exists() {
        if tree.exists() {
            fs::remove_dir_all(&tree)?;
        }
        for pkg in [
            format!("linux-headers-{abi}-arm64"),
            format!("linux-headers-{abi}-common"),
            format!("linux-kbuild-{abi}:amd64"),
        ] {
            apt::extract(&apt.download(&pkg)?, &tree)?;
        }
        fs::write(&done, "")?;
        step(&format!("kernel headers: {}", kdir.display()));
    }
    // Written on every build: the path is absolute, and target/ may have
    // moved (a CI cache restored elsewhere) since the extraction.
    let common = tree.join(format!("usr/src/linux-headers-{abi}-common"));
    let makefile = format!("include {}/Makefile\n", common.display());
    if fs::read_to_string(kdir.join("Makefile")).ok().as_deref() != Some(makefile.as_str()) {
        fs::write(kdir.join("Makefile"), makefile)?;
    }
    Ok(kdir)
}

/// The service's default config with the board's panel wiring, made by
/// the same script the Yocto and Buildroot images use.
fn service_config(root: &Path, board: Board, out: &Path) -> Result<()> {
    let default = root.join("firmware/usrbd.toml");
    if !default.is_file() {
        bail!(
            "{} is missing (the service's default config)",
            default.display()
        );
    }
    let text = cmd::stdout(
        Command::new("sh")
            .arg(root.join("board/pinmaps/apply-pinmap.sh"))
            .arg(&default)
            .arg(root.join("board/pinmaps").join(board.pinmap())),
    )?;
    fs::write(out, text)?;
    step(&format!(
        "config: firmware/usrbd.toml + board/pinmaps/{}",
        board.pinmap()
    ));
    Ok(())
}

/// Fills the boot partition's directory: firmware blobs, kernel, DTBs,
/// config.txt and cmdline.txt (the initramfs is already there).
fn boot_partition_files(
    root: &Path,
    board: Board,
    dir: &Path,
    kernel_pkg: &Path,
    firmware_pkg: &Path,
    release: &str,
) -> Result<()> {
    let blobs = firmware_pkg.join("usr/lib/raspi-firmware");
    for entry in fs::read_dir(&blobs).with_context(|| format!("reading {}", blobs.display()))? {
        let entry = entry?;
        fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    fs::copy(
        kernel_pkg.join(format!("boot/vmlinuz-{release}")),
        dir.join("vmlinuz"),
    )?;
    let dtbs = kernel_pkg.join(format!("usr/lib/linux-image-{release}/broadcom"));
    for entry in fs::read_dir(&dtbs).with_context(|| format!("reading {}", dtbs.display()))? {
        let entry = entry?;
        fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }

    let rpi = root.join("board/rpi");
    let image = root.join("board/image");
    let fragment = fs::read_to_string(rpi.join("config.txt"))
        .with_context(|| format!("reading {}", rpi.join("config.txt").display()))?;
    let ours = fs::read_to_string(image.join("config.txt"))?;
    fs::write(dir.join("config.txt"), format!("{fragment}\n{ours}"))?;

    let theirs = fs::read_to_string(rpi.join("cmdline.txt"))
        .with_context(|| format!("reading {}", rpi.join("cmdline.txt").display()))?;
    let ours = fs::read_to_string(image.join("cmdline.txt"))?;
    let cmdline = merge_cmdline(&theirs, &ours, board.cmdline());
    fs::write(dir.join("cmdline.txt"), format!("{cmdline}\n"))?;
    step(&format!(
        "boot files: raspi-firmware blobs, vmlinuz, initrd.img, DTBs; cmdline \"{cmdline}\""
    ));
    Ok(())
}

/// board/rpi/cmdline.txt, adjusted for Debian's kernel by
/// board/image/cmdline.txt: a key set there replaces the same key, and
/// `console=serial0` goes (only the Raspberry Pi kernel resolves that alias).
fn merge_cmdline(base: &str, overrides: &str, extra: &[&str]) -> String {
    let key = |t: &str| t.split('=').next().unwrap_or(t).to_owned();
    let ours: Vec<&str> = overrides
        .split_whitespace()
        .chain(extra.iter().copied())
        .collect();
    let replaced: Vec<String> = ours
        .iter()
        .map(|t| key(t))
        .filter(|k| k != "console")
        .collect();
    let kept = base.split_whitespace().filter(|t| {
        let is_alias = t.starts_with("console=serial");
        !is_alias && !replaced.contains(&key(t)) && !ours.contains(t)
    });
    kept.chain(ours.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn newest_abi_compares_numbers_not_text() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let found = names(&[
            "linux-image-6.12.99+deb12-arm64",
            "linux-image-6.12.117+deb12-arm64",
            "linux-image-6.12.107+deb12-arm64",
        ]);
        assert_eq!(newest_abi(&found).as_deref(), Some("6.12.117+deb12"));
        assert_eq!(
            newest_abi(&names(&["linux-image-6.12.5+deb12-amd64"])),
            None
        );
    }

    #[test]
    fn boards_parse() {
        assert_eq!(Board::parse("rpi4-64").unwrap(), Board::Rpi4);
        assert!(Board::parse("rpi5").is_err());
    }

    #[test]
    fn cmdline_merge_replaces_keys_and_drops_serial0() {
        let merged = merge_cmdline(
            "console=serial0,115200 console=tty1 root=/dev/mmcblk0p2 rootfstype=ext4 rootwait fsck.repair=yes",
            "console=tty1 console=ttyS1,115200 root=LABEL=usrbd-root rootwait",
            &["cma=64M"],
        );
        assert_eq!(
            merged,
            "rootfstype=ext4 fsck.repair=yes console=tty1 console=ttyS1,115200 root=LABEL=usrbd-root rootwait cma=64M"
        );
    }
}
