//! Setup that happens inside `cargo xtask test|demo|vm|kmod`: Debian packages,
//! the test kernels and their headers, checkpatch, virtme-ng, rustup
//! components. Idempotent and quiet when everything is present.
//!
//! `apt` (host packages, `.deb` downloads) and `toolchain` (the ARM cross
//! gcc) serve the cross and image tasks as well.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::cmd;

pub mod apt;
pub mod toolchain;

/// virtme-ng version the harness was checked with.
const VNG_VERSION: &str = "1.42";

pub const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
pub const BACKPORTS_STANZA: &str = "\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// What the guest scenarios, the module build and virtme-ng use from the host.
const PACKAGES: &[&str] = &[
    "busybox-static",
    "coreutils",
    "e2fsprogs",
    "fio",
    "gcc",
    "jq",
    "kmod",
    "libc6-dev",
    "make",
    "openssl",
    "perl",
    "procps",
    "python3",
    "python3-venv",
    "util-linux",
];

/// How much of the environment a task needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The module builds only.
    Kmod,
    /// Module (6.12) and the VM, no host lint tools.
    Vm,
    /// Everything `cargo xtask test` does.
    Full,
}

/// Where things are.
pub struct Paths {
    pub repo: PathBuf,
    /// Scratch space of the xtask: module builds, the VM's shared dir, venv.
    pub xdir: PathBuf,
}

impl Paths {
    pub fn new() -> Self {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let target = env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { repo.join(t) })
            .unwrap_or_else(|| repo.join("target"));
        Paths {
            xdir: target.join("xtask"),
            repo,
        }
    }

    pub fn target(&self) -> PathBuf {
        self.xdir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.repo.join("target"))
    }
}

/// The environment the tasks run in once setup is done.
pub struct Env {
    /// Release of the kernel booted in the VM and built against, e.g.
    /// `6.12.117+deb12-amd64`.
    pub kernel: String,
    /// Release of the 6.1 headers the module must also build against.
    pub kernel_61: Option<String>,
    /// The `vng` program.
    pub vng: PathBuf,
    /// `scripts/checkpatch.pl` (Full scope only).
    pub checkpatch: Option<PathBuf>,
}

pub fn ensure(paths: &Paths, scope: Scope) -> Result<Env> {
    let (kernel, kernel_61) = ensure_packages(scope)?;
    if scope == Scope::Full {
        ensure_rust_components()?;
    }
    let checkpatch = match scope {
        Scope::Full => Some(ensure_checkpatch(paths)?),
        _ => None,
    };
    let vng = match scope {
        Scope::Kmod => PathBuf::new(),
        _ => ensure_vng(paths)?,
    };
    Ok(Env {
        kernel,
        kernel_61,
        vng,
        checkpatch,
    })
}

pub fn is_root() -> bool {
    cmd::stdout(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn os_release(key: &str) -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}="))
            .map(|v| v.trim_matches('"').to_string())
    })
}

fn ensure_backports_source() -> Result<bool> {
    if Path::new(BACKPORTS_SOURCES).exists() {
        return Ok(false);
    }
    let listed = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .chain(fs::read_dir("/etc/apt").into_iter().flatten().flatten())
        .filter(|e| e.path().is_file())
        .any(|e| {
            fs::read_to_string(e.path())
                .map(|t| {
                    t.lines().any(|l| {
                        !l.trim_start().starts_with('#') && l.contains("bookworm-backports")
                    })
                })
                .unwrap_or(false)
        });
    if listed {
        return Ok(false);
    }
    eprintln!("setup: adding {BACKPORTS_SOURCES}");
    let mut tee = apt::privileged("tee")?;
    tee.arg(BACKPORTS_SOURCES)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = tee.spawn().context("cannot start tee")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(BACKPORTS_STANZA.as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!("cannot write {BACKPORTS_SOURCES}");
    }
    Ok(true)
}

/// apt's lists are missing or older than a day.
fn apt_lists_stale() -> bool {
    let newest = fs::read_dir("/var/lib/apt/lists")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("Release"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    match newest {
        None => true,
        Some(t) => {
            SystemTime::now().duration_since(t).unwrap_or_default() > Duration::from_secs(24 * 3600)
        }
    }
}

/// The number after `prefix` and before `suffix` in `name`.
fn middle_number(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Newest `6.12.N+deb12-amd64` release whose image and headers are both
/// offered by apt.
fn newest_612_in(names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| middle_number(n, "linux-image-6.12.", "+deb12-amd64-unsigned"))
        .filter(|n| {
            let headers = format!("linux-headers-6.12.{n}+deb12-amd64");
            names.contains(&headers)
        })
        .max()
        .map(|n| format!("6.12.{n}+deb12-amd64"))
}

/// Newest `6.1.0-N-amd64` headers release offered by apt.
fn newest_61_in(names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| middle_number(n, "linux-headers-6.1.0-", "-amd64"))
        .max()
        .map(|n| format!("6.1.0-{n}-amd64"))
}

fn headers_dir(release: &str) -> PathBuf {
    let build = PathBuf::from(format!("/lib/modules/{release}/build"));
    if build.join("Makefile").exists() {
        build
    } else {
        PathBuf::from(format!("/usr/src/linux-headers-{release}"))
    }
}

pub fn kernel_headers(release: &str) -> PathBuf {
    headers_dir(release)
}

fn headers_present(release: &str) -> bool {
    headers_dir(release).join("Makefile").exists()
}

fn image_present(release: &str) -> bool {
    Path::new(&format!("/boot/vmlinuz-{release}")).exists()
        && Path::new(&format!("/lib/modules/{release}/modules.dep")).exists()
}

/// Newest installed release in /boot matching prefix/suffix, with headers.
fn newest_installed_612() -> Option<String> {
    fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            middle_number(&name, "vmlinuz-6.12.", "+deb12-amd64")
        })
        .map(|n| format!("6.12.{n}+deb12-amd64"))
        .filter(|r| image_present(r) && headers_present(r))
        .max_by_key(|r| middle_number(r, "6.12.", "+deb12-amd64"))
}

fn newest_installed_61() -> Option<String> {
    fs::read_dir("/usr/src")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            middle_number(&name, "linux-headers-6.1.0-", "-amd64")
        })
        .max()
        .map(|n| format!("6.1.0-{n}-amd64"))
}

struct Kernels {
    main: String,
    k61: Option<String>,
}

/// The kernels to use: `USRBD_KERNEL` / `USRBD_KERNEL_61` when set, else the
/// newest Debian ones apt offers (falling back to installed ones offline).
fn pick_kernels(scope: Scope, debian: bool) -> Result<Kernels> {
    if let Ok(main) = env::var("USRBD_KERNEL") {
        return Ok(Kernels {
            main,
            k61: env::var("USRBD_KERNEL_61").ok(),
        });
    }
    if !debian {
        bail!(
            "the VM tests boot Debian bookworm's 6.12 kernel; on this distribution set \
             USRBD_KERNEL to a release installed in /boot with its headers \
             (and USRBD_KERNEL_61 for the second build)"
        );
    }
    // Offline, apt finds nothing and the installed kernels are used.
    let search = |regex: &str| apt::search_names(regex).unwrap_or_default();
    let mut names = search(r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$");
    names.extend(search(r"^linux-headers-6\.12\.[0-9]+\+deb12-amd64$"));
    let main = newest_612_in(&names)
        .or_else(newest_installed_612)
        .context("no linux-image-6.12.*+deb12-amd64-unsigned offered by apt nor installed")?;
    let k61 = if scope == Scope::Vm {
        None
    } else {
        let names = search(r"^linux-headers-6\.1\.0-[0-9]+-amd64$");
        Some(
            newest_61_in(&names)
                .or_else(newest_installed_61)
                .context("no linux-headers-6.1.0-*-amd64 offered by apt nor installed")?,
        )
    };
    Ok(Kernels { main, k61 })
}

fn missing_packages(scope: Scope, k: &Kernels) -> (Vec<String>, bool) {
    let mut missing: Vec<String> = PACKAGES
        .iter()
        .filter(|p| !apt::installed(p))
        .map(|p| p.to_string())
        .collect();
    if scope != Scope::Kmod && !image_present(&k.main) {
        missing.push(format!("linux-image-{}-unsigned", k.main));
    }
    if !headers_present(&k.main) {
        missing.push(format!("linux-headers-{}", k.main));
    }
    if let Some(k61) = &k.k61 {
        if !headers_present(k61) {
            missing.push(format!("linux-headers-{k61}"));
        }
    }
    if scope == Scope::Full && !apt::installed("linux-source-6.12") {
        missing.push("linux-source-6.12".to_string());
    }
    let qemu_missing = scope != Scope::Kmod && !Path::new("/usr/bin/qemu-system-x86_64").exists();
    (missing, qemu_missing)
}

fn ensure_packages(scope: Scope) -> Result<(String, Option<String>)> {
    let debian = os_release("ID").as_deref() == Some("debian");
    let bookworm = os_release("VERSION_CODENAME").as_deref() == Some("bookworm");
    let mut updated = false;
    let mut stale = apt_lists_stale();
    if bookworm && ensure_backports_source()? {
        stale = true;
    }
    if stale {
        updated = apt::update();
    }
    let mut kernels = pick_kernels(scope, debian)?;
    let (mut missing, mut qemu_missing) = missing_packages(scope, &kernels);
    if (!missing.is_empty() || qemu_missing) && !updated {
        // Lists may predate what we ask for: refresh, then choose again.
        apt::update();
        kernels = pick_kernels(scope, debian)?;
        (missing, qemu_missing) = missing_packages(scope, &kernels);
    }
    if qemu_missing {
        ensure_qemu(&["qemu-system-x86"])?;
    }
    if !missing.is_empty() {
        apt::install_kernels(&["--no-install-recommends"], &missing)?;
    }
    for (what, ok) in [
        (
            format!("/boot/vmlinuz-{}", kernels.main),
            scope == Scope::Kmod || image_present(&kernels.main),
        ),
        (
            format!("headers of {}", kernels.main),
            headers_present(&kernels.main),
        ),
    ] {
        if !ok {
            bail!("setup: {what} still missing after installing packages");
        }
    }
    Ok((kernels.main, kernels.k61))
}

/// On bookworm: the backports suite among apt's sources and apt's indexes
/// fresh. Whether this is bookworm.
pub fn ensure_backports_apt() -> Result<bool> {
    if os_release("VERSION_CODENAME").as_deref() != Some("bookworm") {
        return Ok(false);
    }
    if ensure_backports_source()? || apt_lists_stale() {
        apt::update();
    }
    Ok(true)
}

/// Installs the QEMU packages of `pkgs` that are missing, from the suite the
/// machine's qemu-utils came from: on bookworm that is bookworm-backports
/// (new machines carry its qemu-utils 10.x, and apt refuses bookworm's 7.2
/// `qemu-system-*` beside it).
pub fn ensure_qemu(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !apt::installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut extra = vec!["--no-install-recommends"];
    if ensure_backports_apt()? {
        extra.extend(["-t", "bookworm-backports"]);
    }
    apt::install(&extra, &missing).context("installing QEMU")
}

/// What configuring and preparing a kernel tree needs on the host beyond
/// gcc and make: Kconfig's lexer and parser, `bc` for the timeconst header,
/// OpenSSL for the signing tools, libelf for objtool and resolve_btfids.
const KERNEL_BUILD_PACKAGES: &[&str] = &["bc", "bison", "cpio", "flex", "libelf-dev", "libssl-dev"];

/// Installs the host packages a kernel tree's `make <defconfig>`,
/// `modules_prepare` and a kernel build use.
pub fn ensure_kernel_build_tools() -> Result<()> {
    apt::install_missing(KERNEL_BUILD_PACKAGES).context("installing the kernel build tools")
}

fn ensure_rust_components() -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let have = |sub: &str| cmd::succeeds(Command::new(&cargo).args([sub, "--version"]));
    let mut missing = Vec::new();
    if !have("fmt") {
        missing.push("rustfmt");
    }
    if !have("clippy") {
        missing.push("clippy");
    }
    if !missing.is_empty() {
        cmd::run(
            Command::new("rustup")
                .args(["component", "add"])
                .args(&missing),
        )
        .context("installing rustup components")?;
    }
    Ok(())
}

/// The items of `wanted` that are not a line of `listing`.
fn not_listed<'a>(wanted: &[&'a str], listing: &str) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|w| !listing.lines().any(|l| l.trim() == *w))
        .collect()
}

/// Adds the rustup targets of `triples` that are not installed yet.
pub fn ensure_rust_targets(triples: &[&str]) -> Result<()> {
    let installed = cmd::stdout(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let missing = not_listed(triples, &installed);
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
}

/// checkpatch.pl and the data files it reads, extracted once from Debian's
/// linux-source-6.12 tarball (Debian packages no checkpatch on its own).
fn ensure_checkpatch(paths: &Paths) -> Result<PathBuf> {
    let dir = paths.xdir.join("checkpatch");
    let script = dir.join("scripts/checkpatch.pl");
    if script.exists() {
        return Ok(script);
    }
    let tarball = fs::read_dir("/usr/src")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("linux-source-6.12") && n.ends_with(".tar.xz")
                })
                .unwrap_or(false)
        })
        .max()
        .context(
            "checkpatch.pl comes from Debian's linux-source-6.12, but /usr/src has no \
             linux-source-6.12*.tar.xz (is the package installed?)",
        )?;
    eprintln!("setup: extracting checkpatch from {}", tarball.display());
    let partial = paths.xdir.join("checkpatch.partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    cmd::run(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&partial)
            .args(["--strip-components=1", "--wildcards"])
            .args([
                "*/scripts/checkpatch.pl",
                "*/scripts/spelling.txt",
                "*/scripts/const_structs.checkpatch",
            ]),
    )?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)?;
    Ok(script)
}

/// virtme-ng, pinned, in a venv of its own under target/ so a fresh machine
/// and a developer's get the same one.
/// A new, empty Python venv at `dir` (whatever was there is removed).
pub fn new_venv(dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    cmd::run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(dir),
    )
}

fn ensure_vng(paths: &Paths) -> Result<PathBuf> {
    let venv = paths.xdir.join("venv");
    let vng = venv.join("bin/vng");
    let wanted = format!("virtme-ng {VNG_VERSION}");
    if let Ok(v) = cmd::stdout(Command::new(&vng).arg("--version")) {
        if v.trim() == wanted {
            return Ok(vng);
        }
    }
    eprintln!(
        "setup: installing virtme-ng {VNG_VERSION} into {}",
        venv.display()
    );
    new_venv(&venv)?;
    let pip = venv.join("bin/pip");
    let spec = format!("virtme-ng=={VNG_VERSION}");
    if cmd::run(Command::new(&pip).args(["install", "-q", &spec])).is_err() {
        std::thread::sleep(Duration::from_secs(10));
        cmd::run(Command::new(&pip).args(["install", "-q", &spec]))?;
    }
    Ok(vng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn newest_612_needs_image_and_headers() {
        let n = names(&[
            "linux-image-6.12.95+deb12-amd64-unsigned",
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "linux-image-6.12.120+deb12-amd64-unsigned",
            "linux-headers-6.12.95+deb12-amd64",
            "linux-headers-6.12.117+deb12-amd64",
        ]);
        // 120 has no headers; 117 beats 95 numerically, not as text.
        assert_eq!(newest_612_in(&n).as_deref(), Some("6.12.117+deb12-amd64"));
        assert_eq!(newest_612_in(&[]), None);
    }

    #[test]
    fn newest_61_compares_numbers() {
        let n = names(&[
            "linux-headers-6.1.0-9-amd64",
            "linux-headers-6.1.0-56-amd64",
            "linux-headers-6.1.0-54-amd64",
            "linux-headers-6.1.0-56-rt-amd64",
        ]);
        assert_eq!(newest_61_in(&n).as_deref(), Some("6.1.0-56-amd64"));
    }
}
