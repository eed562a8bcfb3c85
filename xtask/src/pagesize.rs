//! `cargo xtask test --pagesize 16k`: usrbd.ko and the aarch64 service on an
//! arm64 kernel with 16 KiB pages (what Raspberry Pi 5 kernels run), booted
//! with QEMU `virt` (`-cpu max`, TCG) through the arm64 tier's initramfs.
//!
//! The kernel is Debian's linux-source-6.12 with a small configuration
//! (allnoconfig plus [`FRAGMENT`]), built once and cached under
//! `target/pagesize/` keyed by the source and the configuration.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::cross::build::{self as cross_build, AARCH64};
use crate::cross::{debian, vm};
use crate::module;
use crate::setup::{self, apt, Paths};

/// What a QEMU `virt` guest with an initramfs needs beyond allnoconfig:
/// the PL011 console, ELF and scripts for busybox, /proc, /sys, devtmpfs,
/// Unix sockets for the service's control socket, ext4, modules, and BUG so
/// that a WARN_ON shows. The page size line comes first, from the option.
const FRAGMENT: &str = "\
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_PRINTK=y
CONFIG_PRINTK_TIME=y
CONFIG_BUG=y
CONFIG_KALLSYMS=y
CONFIG_MULTIUSER=y
CONFIG_FUTEX=y
CONFIG_EPOLL=y
CONFIG_POSIX_TIMERS=y
CONFIG_HIGH_RES_TIMERS=y
CONFIG_SHMEM=y
CONFIG_FILE_LOCKING=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_TTY=y
CONFIG_SERIAL_AMBA_PL011=y
CONFIG_SERIAL_AMBA_PL011_CONSOLE=y
CONFIG_DEVTMPFS=y
CONFIG_PROC_FS=y
CONFIG_PROC_SYSCTL=y
CONFIG_PROC_PAGE_MONITOR=y
CONFIG_SYSFS=y
CONFIG_TMPFS=y
CONFIG_BLOCK=y
CONFIG_EXT4_FS=y
CONFIG_NET=y
CONFIG_UNIX=y
";

/// Size of the ext4 image the guest mounts through usrbd (the service's
/// RAM backend holds it).
const EXT4_MIB: u64 = 64;

/// A page size the test knows: its `--pagesize` spelling and Kconfig symbol.
struct PageSize {
    name: &'static str,
    kconfig: &'static str,
}

const SIZES: [PageSize; 1] = [PageSize {
    name: "16k",
    kconfig: "CONFIG_ARM64_16K_PAGES",
}];

/// 64-bit FNV-1a: a cache key that stays the same across Rust releases.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The configuration fragment for `size`.
fn fragment(size: &PageSize) -> String {
    format!("{}=y\n{FRAGMENT}", size.kconfig)
}

/// Lines of `fragment` that the resolved `.config` does not have: symbols
/// Kconfig dropped for an unmet dependency.
fn missing_from_config(fragment: &str, config: &str) -> Vec<String> {
    fragment
        .lines()
        .filter(|l| !l.is_empty() && !config.lines().any(|c| c == *l))
        .map(str::to_string)
        .collect()
}

/// Debian's newest linux-source-6.12 tarball under /usr/src.
fn source_tarball() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/src")
        .context("reading /usr/src")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-6.12") && n.ends_with(".tar.xz"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .context("no /usr/src/linux-source-6.12*.tar.xz after installing linux-source-6.12")
}

/// A built kernel: its tree (for the module build) and image.
struct Kernel {
    build: PathBuf,
    image: PathBuf,
    /// Seconds the build took when it was made (it may come from the cache).
    build_seconds: f64,
}

fn make(src: &Path, build: &Path, vars: &[String]) -> Command {
    let mut c = Command::new("nice");
    c.args(["-n", "10", "make", "-j2"])
        .arg("-C")
        .arg(src)
        .arg(format!("O={}", build.display()))
        .args(vars);
    c
}

/// The kernel for `size`, built unless the cache has it.
fn kernel(paths: &Paths, size: &PageSize, vars: &[String]) -> Result<Kernel> {
    let tarball = source_tarball()?;
    let frag = fragment(size);
    let key = fnv1a(format!("{}\n{frag}", tarball.display()).as_bytes());
    let root = paths.target().join("pagesize");
    let dir = root.join(format!("linux-{}-{key:016x}", size.name));
    let build = dir.join("build");
    let image = build.join("arch/arm64/boot/Image");
    let stamp = dir.join("build-seconds");
    if let Ok(secs) = fs::read_to_string(&stamp) {
        if image.exists() && build.join("Module.symvers").exists() {
            return Ok(Kernel {
                build,
                image,
                build_seconds: secs.trim().parse().unwrap_or(0.0),
            });
        }
    }
    let src = root.join("src").join(
        tarball
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.xz"))
            .context("tarball name")?,
    );
    if !src.join("Makefile").exists() {
        eprintln!("pagesize: unpacking {}", tarball.display());
        let _ = fs::remove_dir_all(&src);
        fs::create_dir_all(&src)?;
        cmd::run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .arg("--strip-components=1")
                .arg("-C")
                .arg(&src),
        )?;
    }
    // An interrupted build resumes (make is incremental); its time then
    // counts only the resumed part.
    fs::create_dir_all(&build)?;
    let frag_path = dir.join("fragment.config");
    fs::write(&frag_path, &frag)?;
    eprintln!(
        "pagesize: building a {} page arm64 kernel in {} (nice, -j2)",
        size.name,
        build.display()
    );
    let start = Instant::now();
    cmd::run(
        make(&src, &build, vars)
            .arg(format!("KCONFIG_ALLCONFIG={}", frag_path.display()))
            .arg("allnoconfig"),
    )?;
    let config = fs::read_to_string(build.join(".config")).context("reading the new .config")?;
    let dropped = missing_from_config(&frag, &config);
    if !dropped.is_empty() {
        bail!(
            "Kconfig dropped {} of the fragment's options (an unmet dependency): {}",
            dropped.len(),
            dropped.join(", ")
        );
    }
    // `modules` writes Module.symvers, so the module build resolves symbols.
    cmd::run_quiet(make(&src, &build, vars).args(["Image", "modules"]))?;
    let secs = start.elapsed().as_secs_f64();
    fs::write(&stamp, format!("{secs:.0}\n"))?;
    Ok(Kernel {
        build,
        image,
        build_seconds: secs,
    })
}

/// A `EXT4_MIB` ext4 image made on the host (the guest has no mke2fs).
fn ext4_image(dir: &Path) -> Result<PathBuf> {
    let img = dir.join("ext4.img");
    let _ = fs::remove_file(&img);
    fs::write(&img, [])?;
    let file = fs::OpenOptions::new().write(true).open(&img)?;
    file.set_len(EXT4_MIB << 20)?;
    cmd::run_quiet(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "usrbd-pages"])
            .arg(&img),
    )?;
    Ok(img)
}

/// `tests/arm64/create.c`, static for aarch64: reaches the module's create
/// checks directly (the service checks first and would hide them).
fn create_tool(paths: &Paths, gcc: &str, out: &Path) -> Result<PathBuf> {
    let bin = out.join("usrbd-create");
    cmd::run(
        Command::new(gcc)
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(paths.repo.join("kmod/include/uapi"))
            .arg(paths.repo.join("tests/arm64/create.c"))
            .arg("-o")
            .arg(&bin),
    )?;
    Ok(bin)
}

/// `cargo xtask test --pagesize SIZE`.
pub fn run(size_name: &str) -> Result<()> {
    let Some(size) = SIZES.iter().find(|s| s.name == size_name) else {
        bail!(
            "--pagesize takes {} (got `{size_name}`)",
            SIZES.map(|s| s.name).join(", ")
        );
    };
    let paths = Paths::new();
    crate::cross::prepare()?;
    apt::install_missing(&["linux-source-6.12", "e2fsprogs"])?;
    setup::ensure_kernel_build_tools()?;
    setup::ensure_qemu(&["qemu-system-arm"])?;
    let tc = cross_build::toolchain(AARCH64)?;
    let vars = module::arch_vars(Some("arm64"))?;

    let k = kernel(&paths, size, &vars)?;
    println!(
        "pagesize: {} kernel {} (built in {:.0} s)",
        size.name,
        k.image.display(),
        k.build_seconds
    );
    let built = module::build_against(&paths, &k.build, &format!("pagesize-{}", size.name), &vars)?;
    println!("pagesize: built {} (W=1, no warnings)", built.ko.display());
    cross_build::userspace(AARCH64, &tc, false)?;

    let cache = cross_build::cross_dir();
    let work = paths
        .target()
        .join("pagesize")
        .join(format!("vm-{}", size.name));
    fs::create_dir_all(&work)?;
    let bin = |name: &str| cache.join(AARCH64.name).join(name);
    let inputs = vm::Inputs {
        kernel: k.image,
        busybox: debian::busybox(&cache, "arm64")?,
        binaries: vec![
            ("usrbd-aarch64".into(), bin("usrbd")),
            ("vmkit-aarch64".into(), bin("vmkit")),
            (
                "usrbd-create".into(),
                create_tool(&paths, &tc.gcc(), &work)?,
            ),
        ],
        module: built.ko,
        tests: paths.repo.join("tests/arm64"),
        scenarios: paths.repo.join("tests/arm64/pagesize"),
        files: vec![("data/ext4.img".into(), ext4_image(&work)?)],
        // Pointer authentication's QEMU-defined algorithm is much cheaper
        // under TCG than the architected one.
        cpu: "max,pauth-impdef=on",
        led_tags: &[],
        // `-cpu max` under TCG on a shared machine: about 3 minutes when
        // idle, so a wide margin.
        timeout: Duration::from_secs(900),
        work,
    };
    let (_, failed) = vm::run(&inputs)?;
    if failed > 0 {
        bail!("{failed} {} page scenario(s) failed", size.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_options_are_named() {
        let frag = "CONFIG_A=y\nCONFIG_B=y\n";
        assert!(missing_from_config(frag, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\n").is_empty());
        assert_eq!(
            missing_from_config(frag, "CONFIG_A=y\n# CONFIG_B is not set\n"),
            ["CONFIG_B=y"]
        );
    }

    #[test]
    fn the_key_follows_the_configuration() {
        let a = fragment(&SIZES[0]);
        assert!(a.starts_with("CONFIG_ARM64_16K_PAGES=y\n"));
        assert_ne!(fnv1a(a.as_bytes()), fnv1a(FRAGMENT.as_bytes()));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
