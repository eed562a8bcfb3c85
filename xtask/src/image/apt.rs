//! A private apt root under target/: Debian bookworm indexes for arm64 (and
//! amd64, for the host-side kbuild tools) with `non-free-firmware`, so
//! packages are downloaded without touching the host's apt configuration.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use super::host::{self, step};

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Indexes younger than this are reused: builds stay fast and work while the
/// mirror is briefly unreachable.
const INDEX_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

pub struct Apt {
    root: PathBuf,
}

impl Apt {
    pub fn new(root: &Path) -> Result<Self> {
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
        let mut cmd = Command::new(program);
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
            // Files land in our own tree; the _apt sandbox user may not reach it.
            "APT::Sandbox::User=root".into(),
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
            step("apt indexes: fresh, reused");
            return Ok(());
        }
        step("apt indexes: updating (bookworm main + non-free-firmware, arm64)");
        let mut cmd = self.command("apt-get");
        match host::run(cmd.args(["-q", "update"])) {
            Ok(()) => fs::write(&stamp, "")?,
            // Stale indexes still name packages whose .debs may be cached.
            Err(e) if self.root.join("state/lists").read_dir()?.count() > 2 => {
                step(&format!("apt update failed, using the old indexes: {e:#}"));
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The newest `6.12.N+deb12` kernel ABI the indexes hold for arm64.
    pub fn newest_kernel(&self) -> Result<String> {
        let out = host::capture(self.command("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.12\.[0-9]+\+deb12-arm64$",
        ]))?;
        newest_abi(&out).context("no linux-image-6.12.N+deb12-arm64 in the bookworm indexes")
    }

    /// Downloads `pkg` (`name` or `name:arch`) unless its .deb is cached.
    pub fn download(&self, pkg: &str) -> Result<PathBuf> {
        let debs = self.root.join("debs");
        let (name, arch) = pkg.split_once(':').unwrap_or((pkg, ""));
        let version = self.candidate(pkg)?;
        // apt writes the epoch's colon as %3a in file names.
        let file_version = version.replace(':', "%3a");
        let existing = fs::read_dir(&debs)?.flatten().map(|e| e.path()).find(|p| {
            let file = p.file_name().map(|f| f.to_string_lossy().into_owned());
            file.is_some_and(|f| {
                f.starts_with(&format!("{name}_{file_version}_"))
                    && f.ends_with(".deb")
                    && (arch.is_empty() || f.contains(&format!("_{arch}.")) || f.contains("_all."))
            })
        });
        if let Some(path) = existing {
            return Ok(path);
        }
        host::run(self.command("apt-get").current_dir(&debs).args([
            "-q",
            "download",
            &format!("{pkg}={version}"),
        ]))?;
        let path = fs::read_dir(&debs)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .map(|f| {
                        f.to_string_lossy()
                            .starts_with(&format!("{name}_{file_version}_"))
                    })
                    .unwrap_or(false)
            })
            .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
        match path {
            Some(p) => {
                step(&format!(
                    "downloaded {} ({})",
                    p.file_name().unwrap_or_default().to_string_lossy(),
                    host::human(host::tree_size(&p))
                ));
                Ok(p)
            }
            None => bail!("apt-get download {pkg} left no .deb in {}", debs.display()),
        }
    }

    fn candidate(&self, pkg: &str) -> Result<String> {
        let out = host::capture(self.command("apt-cache").args(["policy", pkg]))?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .map(str::to_owned)
            .with_context(|| format!("package {pkg} not found in the private apt indexes"))
    }
}

/// Extracts a .deb's files into `dest` (merging with what is there).
pub fn extract(deb: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest)?;
    host::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))
}

/// Picks the highest N among `linux-image-6.12.N+deb12-arm64` lines.
fn newest_abi(search_output: &str) -> Option<String> {
    search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_abi_compares_numbers_not_text() {
        let out = "linux-image-6.12.99+deb12-arm64 - Linux\n\
                   linux-image-6.12.117+deb12-arm64 - Linux\n\
                   linux-image-6.12.107+deb12-arm64 - Linux\n";
        assert_eq!(newest_abi(out).as_deref(), Some("6.12.117+deb12"));
        assert_eq!(newest_abi("linux-image-6.12.5+deb12-amd64 - x\n"), None);
    }
}
