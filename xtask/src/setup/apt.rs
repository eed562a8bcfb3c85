//! Debian packages, for every task: installing on the host (as root, or
//! through `sudo -n`), adding dpkg architectures, downloading and unpacking
//! `.deb`s, either through the host's apt or through a private apt root
//! under target/ that leaves the host's configuration alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// A command that needs root: itself when root, else through `sudo -n`.
pub fn privileged(program: &str) -> Result<Command> {
    if super::is_root() {
        return Ok(Command::new(program));
    }
    if cmd::succeeds(Command::new("sudo").args(["-n", "true"])) {
        let mut c = Command::new("sudo");
        c.args(["-n", "--preserve-env=DEBIAN_FRONTEND,INITRD", program]);
        return Ok(c);
    }
    bail!(
        "`{program}` needs root: run `cargo xtask` as root, \
         or allow sudo without a password, or do this step by hand"
    )
}

/// Whether dpkg reports `pkg` (may carry an `:arch` suffix) as installed.
pub fn installed(pkg: &str) -> bool {
    cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", pkg]))
        .map(|s| s == "installed")
        .unwrap_or(false)
}

fn apt_get(args: &[&str]) -> Result<()> {
    apt_get_with(args, &[])
}

fn apt_get_with(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let mut c = privileged("apt-get")?;
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .envs(envs.iter().copied())
        .args(["-y", "-q", "-o", "DPkg::Lock::Timeout=600"])
        .args(args);
    cmd::run(&mut c)
}

/// `apt-get update` of the host's indexes; a failure (a mirror mid-sync) is
/// reported, not fatal: the caller picks from what apt can see and fails if
/// that is not enough. Whether it succeeded.
pub fn update() -> bool {
    match apt_get(&["update"]) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("apt: update failed, going on with the indexes apt has: {e:#}");
            false
        }
    }
}

/// `apt-get install <extra> <pkgs>` on the host.
pub fn install(extra: &[&str], pkgs: &[impl AsRef<str>]) -> Result<()> {
    install_with(extra, pkgs, &[])
}

/// `install`, with kernel images' postinst hooks told that no initramfs is
/// wanted: the test VMs boot kernels without one, and generating it costs
/// a minute of CPU per kernel.
pub fn install_kernels(extra: &[&str], pkgs: &[impl AsRef<str>]) -> Result<()> {
    install_with(extra, pkgs, &[("INITRD", "No")])
}

fn install_with(extra: &[&str], pkgs: &[impl AsRef<str>], envs: &[(&str, &str)]) -> Result<()> {
    let mut args: Vec<&str> = vec!["install"];
    args.extend_from_slice(extra);
    args.extend(pkgs.iter().map(AsRef::as_ref));
    // One retry after refreshing the indexes: a fresh machine may have
    // none (`Unable to locate package`), stale ones name files the mirror
    // has dropped, and a mirror hiccup should not cost a CI run.
    if let Err(first) = apt_get_with(&args, envs) {
        eprintln!("apt: updating the indexes and retrying after: {first:#}");
        std::thread::sleep(Duration::from_secs(10));
        update();
        apt_get_with(&args, envs).with_context(|| format!("installing {}", args[1..].join(" ")))?;
    }
    Ok(())
}

/// Installs, without their recommendations, the packages of `pkgs` that
/// are not installed yet.
pub fn install_missing(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    install(&["--no-install-recommends"], &missing)
}

/// Lets the host's apt see packages of `archs`, so they can be downloaded
/// (not installed: an `:arm64` headers package would pull a native gcc that
/// displaces the cross compilers).
pub fn add_architectures(archs: &[&str]) -> Result<()> {
    let known = cmd::stdout(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    let missing = super::not_listed(archs, &known);
    if missing.is_empty() {
        return Ok(());
    }
    for arch in missing {
        cmd::run(privileged("dpkg")?.args(["--add-architecture", arch]))?;
    }
    update();
    Ok(())
}

/// Names of the packages the host's apt knows that match `regex`.
pub fn search_names(regex: &str) -> Result<Vec<String>> {
    names_matching(&host_command, regex)
}

/// Downloads `pkg` (`name` or `name:arch`) with the host's apt into `dir`,
/// unless the `.deb` of its candidate version is there already.
pub fn download(pkg: &str, dir: &Path) -> Result<PathBuf> {
    download_into(&host_command, pkg, dir)
}

/// Extracts a .deb's files into `dir` (merging with what is there).
pub fn extract(deb: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    cmd::run_quiet(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))
}

/// Builds an `apt-get`/`apt-cache` command line for one apt configuration.
type AptCommand<'a> = &'a dyn Fn(&str) -> Command;

fn host_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    // Downloads land in our own tree; the _apt sandbox user may not reach it.
    cmd.args(["-o", "APT::Sandbox::User=root"]);
    cmd
}

fn names_matching(apt: AptCommand, regex: &str) -> Result<Vec<String>> {
    let out = cmd::stdout(apt("apt-cache").args(["search", "--names-only", regex]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn download_into(apt: AptCommand, pkg: &str, dir: &Path) -> Result<PathBuf> {
    let (name, arch) = pkg.split_once(':').unwrap_or((pkg, ""));
    let version = candidate(apt, pkg)?;
    // apt writes the epoch's colon as %3a in file names.
    let prefix = format!("{name}_{}_", version.replace(':', "%3a"));
    let cached = |dir: &Path| -> Result<Option<PathBuf>> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let entries =
            fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        Ok(entries.flatten().map(|e| e.path()).find(|p| {
            let file = p.file_name().map(|f| f.to_string_lossy().into_owned());
            file.is_some_and(|f| {
                f.starts_with(&prefix)
                    && f.ends_with(".deb")
                    && (arch.is_empty() || f.contains(&format!("_{arch}.")) || f.contains("_all."))
            })
        }))
    };
    if let Some(path) = cached(dir)? {
        return Ok(path);
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    cmd::run_quiet(apt("apt-get").current_dir(dir).args([
        "-q",
        "download",
        &format!("{pkg}={version}"),
    ]))?;
    let path = cached(dir)?
        .with_context(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))?;
    eprintln!(
        "apt: downloaded {}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    Ok(path)
}

/// The version apt would install of `pkg`.
fn candidate(apt: AptCommand, pkg: &str) -> Result<String> {
    let out = cmd::stdout(apt("apt-cache").args(["policy", pkg]))?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| *v != "(none)")
        .map(str::to_owned)
        .with_context(|| format!("package {pkg} not found in the apt indexes"))
}

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Private indexes younger than this are reused: builds stay fast and work
/// while the mirror is briefly unreachable.
const INDEX_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// A private apt root: Debian bookworm indexes for arm64 (and amd64, for
/// host-side tools such as kbuild) with `non-free-firmware`, its `.deb`s in
/// `<root>/debs`.
pub struct Apt {
    root: PathBuf,
}

impl Apt {
    pub fn private(root: &Path) -> Result<Self> {
        for dir in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
            "debs",
        ] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        let status = root.join("state/status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let opts = format!("[arch=arm64,amd64 signed-by={KEYRING}]");
        let components = "main non-free-firmware";
        let sources = format!(
            "deb {opts} {MIRROR} bookworm {components}\n\
             deb {opts} {MIRROR} bookworm-updates {components}\n\
             deb {opts} {SECURITY} bookworm-security {components}\n"
        );
        fs::write(root.join("etc/sources.list"), sources)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let r = self.root.display();
        let mut cmd = host_command(program);
        for opt in [
            format!("Dir::Etc::SourceList={r}/etc/sources.list"),
            format!("Dir::Etc::SourceParts={r}/etc/sources.list.d"),
            format!("Dir::Etc::Preferences={r}/etc/preferences"),
            format!("Dir::Etc::PreferencesParts={r}/etc/preferences.d"),
            format!("Dir::State={r}/state"),
            format!("Dir::State::status={r}/state/status"),
            format!("Dir::Cache={r}/cache"),
            // Keep apt's binary cache even where the host disables it (Debian
            // container images do): every query would otherwise reparse the
            // indexes for seconds.
            "Dir::Cache::pkgcache=pkgcache.bin".into(),
            "Dir::Cache::srcpkgcache=srcpkgcache.bin".into(),
            "APT::Architecture=amd64".into(),
            "APT::Architectures::=amd64".into(),
            "APT::Architectures::=arm64".into(),
            "Acquire::Languages=none".into(),
        ] {
            cmd.arg("-o").arg(opt);
        }
        cmd
    }

    /// Refreshes the package indexes unless recent ones are present.
    pub fn update(&self) -> Result<()> {
        let stamp = self.root.join("state/updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() < INDEX_MAX_AGE)
            .unwrap_or(false);
        if fresh {
            eprintln!("apt: private indexes fresh, reused");
            return Ok(());
        }
        eprintln!("apt: updating the private indexes (bookworm main + non-free-firmware, arm64)");
        match cmd::run_quiet(self.command("apt-get").args(["-q", "update"])) {
            Ok(()) => fs::write(&stamp, "")?,
            // Stale indexes still name packages whose .debs may be cached.
            Err(e) if self.root.join("state/lists").read_dir()?.count() > 2 => {
                eprintln!("apt: update failed, using the old indexes: {e:#}");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Names of the packages the private indexes hold that match `regex`.
    pub fn search_names(&self, regex: &str) -> Result<Vec<String>> {
        names_matching(&|p| self.command(p), regex)
    }

    /// Downloads `pkg` (`name` or `name:arch`) unless its .deb is cached.
    pub fn download(&self, pkg: &str) -> Result<PathBuf> {
        download_into(&|p| self.command(p), pkg, &self.root.join("debs"))
    }
}
