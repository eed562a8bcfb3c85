//! `cargo xtask test|demo --clean-room`: the task run inside a fresh root
//! file system that holds exactly the Debian packages of a new build
//! machine, so a missing install step fails here instead of on a user's
//! machine. What CI runs (`.ci/run`).
//!
//! The room: an overlay whose lower layer is a base bootstrapped by
//! mmdebstrap from the package list (cached, keyed by the list's hash) and
//! whose upper layer is new for every run; `/proc`, `/sys`, `/dev` mounted;
//! the machine's Rust toolchain (rustup and cargo homes, only rustup's own
//! programs in `~/.cargo/bin`) as overlays that discard the run's changes;
//! the clone bind-mounted at its own path with an empty `target/` over it;
//! the machine's network settings (resolver, proxy variables, added CAs).
//! Nothing from the host's `/usr/local`, `~/.local`, `/opt` or an earlier
//! `target/` is visible. The mounts live in a private mount namespace, so
//! they vanish with the run whatever happens.

use std::env;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::{self, apt, Paths};

/// The package list of a new machine, beside the project (override with
/// `USRBD_FRESH_PACKAGES`).
const PACKAGE_LIST: &str = "../shared/fresh-machine-packages.txt";
/// Cached bases, one per list hash.
const CACHE: &str = "/var/cache/usrbd-clean-room";
/// Where the runs' upper layers and fresh `target/` live; on disk, not
/// tmpfs: a test run writes several GiB.
const RUNS: &str = "/var/tmp/usrbd-clean-room";
/// The hidden task the re-executed xtask runs inside the new mount namespace.
pub const INNER_TASK: &str = "clean-room-inner";

/// Runs `cargo xtask <task> <args>` in a new clean room; exits with its code.
pub fn run(task: &str, args: &[String]) -> Result<()> {
    if !setup::is_root() {
        bail!("the clean room needs root (mmdebstrap, mounts, chroot): run as root");
    }
    let started = Instant::now();
    let paths = Paths::new();
    let list = package_list(&paths)?;
    apt::install_missing(&["mmdebstrap"])?;
    let base = ensure_base(&list)?;

    let run_dir = PathBuf::from(RUNS).join(format!("run-{}", std::process::id()));
    remove_tree(&run_dir)?;
    fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    eprintln!(
        "clean-room: base {}, this run's layer {}",
        base.display(),
        run_dir.display()
    );
    let exe = env::current_exe().context("cannot find the xtask binary")?;
    let mut inner = Command::new("unshare");
    inner
        .args(["--mount", "--propagation", "private", "--"])
        .arg(&exe)
        .arg(INNER_TASK)
        .arg(&base)
        .arg(&run_dir)
        .arg(&paths.repo)
        .arg(task)
        .args(args);
    let status = inner
        .status()
        .context("cannot start the clean room (unshare)")?;
    if env::var_os("USRBD_CLEAN_ROOM_KEEP").is_none() {
        remove_tree(&run_dir)?;
    }
    eprintln!(
        "clean-room: `cargo xtask {task}` ended ({status}) after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::process::exit(status.code().unwrap_or(1));
}

/// Inside the private mount namespace: build the room, chroot, run the task.
/// `args`: base, run dir, repo, task, task args.
pub fn inner(args: &[String]) -> Result<()> {
    let [base, run_dir, repo, task, rest @ ..] = args else {
        bail!("{INNER_TASK}: expected BASE RUN REPO TASK [ARGS]");
    };
    let (base, run_dir, repo) = (Path::new(base), Path::new(run_dir), Path::new(repo));
    let root = run_dir.join("root");
    overlay(base, &run_dir.join("rootfs"), &root)?;
    mount(&["-t", "proc", "proc"], &root.join("proc"))?;
    mount(&["--rbind", "/sys"], &root.join("sys"))?;
    mount(&["--rbind", "/dev"], &root.join("dev"))?;
    mount(&["-t", "tmpfs", "tmpfs"], &root.join("run"))?;
    // Podman's overlay storage cannot sit on an overlay: a plain directory.
    bind(
        &fresh_dir(&run_dir.join("containers"))?,
        &root.join("var/lib/containers"),
    )?;

    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let rustup = env::var_os("RUSTUP_HOME").map_or_else(|| home.join(".rustup"), PathBuf::from);
    let cargo = env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
    overlay(&rustup, &run_dir.join("rustup"), &root.join("root/.rustup"))?;
    let room_cargo = root.join("root/.cargo");
    overlay(&cargo, &run_dir.join("cargo"), &room_cargo)?;
    keep_only_rustup_programs(&room_cargo.join("bin"))?;

    let room_repo = inside(&root, repo);
    bind(repo, &room_repo)?;
    bind(
        &fresh_dir(&run_dir.join("target"))?,
        &room_repo.join("target"),
    )?;
    carry_network(&root)?;

    eprintln!(
        "clean-room: running `cargo xtask {task} {}`",
        rest.join(" ")
    );
    let status = Command::new("chroot")
        .arg(&root)
        .args(["/usr/bin/env", "-i"])
        .args([
            "HOME=/root",
            "USER=root",
            "LOGNAME=root",
            "LANG=C.UTF-8",
            "TERM=dumb",
            "PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .args(network_env())
        .args(["/bin/sh", "-c", r#"cd "$1" && shift && exec "$@""#, "sh"])
        .arg(repo)
        .args(["cargo", "xtask", task])
        .args(rest)
        .status()
        .context("cannot chroot into the clean room")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// The machine's way to the registries, which is no package's: name
/// resolution, and the certificate authorities it added (a TLS-inspecting
/// egress proxy's) both in the CA bundle and where `update-ca-certificates`
/// keeps them when a package install rebuilds the bundle.
fn carry_network(root: &Path) -> Result<()> {
    for file in ["etc/resolv.conf", "etc/hosts", "etc/pip.conf", CA_BUNDLE] {
        let from = Path::new("/").join(file);
        if from.exists() {
            fs::copy(&from, root.join(file)).with_context(|| format!("copying /{file}"))?;
        }
    }
    let local = root.join("usr/local/share/ca-certificates");
    fs::create_dir_all(&local)?;
    for entry in fs::read_dir("/etc/ssl/certs")?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".pem") else {
            continue;
        };
        let target = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        // Debian's own authorities, and ssl-cert's self-signed host key.
        if target.starts_with("/usr/share/ca-certificates") || stem == "ssl-cert-snakeoil" {
            continue;
        }
        fs::copy(&target, local.join(format!("host-{stem}.crt")))
            .with_context(|| format!("copying {}", target.display()))?;
    }
    Ok(())
}

const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// `NAME=value` for the environment variables that point programs at the
/// machine's proxy, CA bundle or registry mirrors.
fn network_env() -> Vec<String> {
    const NAMES: &[&str] = &[
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_DEFAULT_TIMEOUT",
        "CARGO_HTTP_CAINFO",
        "RUSTUP_AUTO_INSTALL",
    ];
    env::vars()
        .filter(|(k, _)| {
            NAMES.contains(&k.as_str())
                || k.to_ascii_lowercase().ends_with("_proxy")
                || k.starts_with("CARGO_REGISTRIES_")
                || k.starts_with("CARGO_NET_")
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The text of the new machine's package list.
fn package_list(paths: &Paths) -> Result<String> {
    let path = env::var_os("USRBD_FRESH_PACKAGES")
        .map_or_else(|| paths.repo.join(PACKAGE_LIST), PathBuf::from);
    fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the new machine's package list {} (set USRBD_FRESH_PACKAGES)",
            path.display()
        )
    })
}

/// `(name, suite)` for each listed package; `suite` is set for backports.
fn parse_list(text: &str) -> Vec<(String, Option<&'static str>)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next()?;
            let version = fields.next().unwrap_or_default();
            let suite = version.contains("~bpo12").then_some("bookworm-backports");
            Some((name.to_string(), suite))
        })
        .collect()
}

/// FNV-1a of the sorted install specs: stable across toolchains, blind to
/// version drift of the listed packages.
fn list_hash(text: &str) -> String {
    let mut specs: Vec<String> = parse_list(text)
        .into_iter()
        .map(|(name, suite)| format!("{name}/{}\n", suite.unwrap_or_default()))
        .collect();
    specs.sort();
    let hash = specs
        .concat()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// The bootstrapped base for `list`, built once per list.
fn ensure_base(list: &str) -> Result<PathBuf> {
    let base = PathBuf::from(CACHE).join(format!("base-{}", list_hash(list)));
    if base.join("etc/os-release").exists() {
        eprintln!("clean-room: cached base {}", base.display());
        return Ok(base);
    }
    let partial = base.with_extension("partial");
    remove_tree(&partial)?;
    fs::create_dir_all(CACHE).with_context(|| format!("cannot create {CACHE}"))?;

    let sources = host_sources()?;
    // New machines' qemu-utils comes from backports: the base needs it to
    // hold the same packages; the room itself gets only the host's sources.
    let backports = PathBuf::from(CACHE).join("backports.sources");
    fs::write(&backports, setup::BACKPORTS_STANZA)?;
    let (include, missing) = available(&parse_list(list), &sources, &backports)?;
    if !missing.is_empty() {
        eprintln!(
            "clean-room: {} listed package(s) are in none of this machine's apt sources, left out: {}",
            missing.len(),
            missing.join(" ")
        );
    }
    eprintln!(
        "clean-room: bootstrapping a base of {} packages into {} (once per package list)",
        include.len(),
        partial.display()
    );
    let started = Instant::now();
    cmd::run(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--mode=root", "--format=directory"])
            .arg(format!("--include={}", include.join(",")))
            .arg("bookworm")
            .arg(&partial)
            .args(&sources)
            .arg(&backports),
    )
    .context("mmdebstrap failed")?;
    // The room starts like a new machine: the host's sources, no indexes.
    for dir in ["etc/apt/sources.list.d", "var/lib/apt/lists"] {
        let _ = fs::remove_dir_all(partial.join(dir));
        fs::create_dir_all(partial.join(dir))?;
    }
    let _ = fs::remove_file(partial.join("etc/apt/sources.list"));
    for src in &sources {
        let name = src.file_name().context("source without a name")?;
        let to = if src.parent() == Some(Path::new("/etc/apt")) {
            partial.join("etc/apt").join(name)
        } else {
            partial.join("etc/apt/sources.list.d").join(name)
        };
        fs::copy(src, &to).with_context(|| format!("copying {}", src.display()))?;
    }
    fs::rename(&partial, &base)?;
    eprintln!(
        "clean-room: base ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(base)
}

/// The host's enabled apt source files, without the backports file the
/// project's setup adds (the room must add it itself).
fn host_sources() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let main = Path::new("/etc/apt/sources.list");
    if main.exists() && has_entries(main) {
        files.push(main.to_path_buf());
    }
    let mut parts: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.to_string_lossy();
            (name.ends_with(".list") || name.ends_with(".sources"))
                && p != Path::new(setup::BACKPORTS_SOURCES)
        })
        .filter(|p| has_entries(p))
        .collect();
    parts.sort();
    files.extend(parts);
    if files.is_empty() {
        bail!("this machine has no apt sources to build the clean room from");
    }
    Ok(files)
}

fn has_entries(path: &Path) -> bool {
    fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .map(str::trim)
                .any(|l| l.starts_with("deb ") || l.starts_with("Types:"))
        })
        .unwrap_or(false)
}

/// Splits the list into what apt can install (`name` or `name/suite`) and
/// the names none of `sources` offers (a vendor's repository). Asks the
/// host's apt with only those sources configured, so indexes left behind by
/// a disabled source or a package installed from elsewhere do not count.
fn available(
    list: &[(String, Option<&str>)],
    sources: &[PathBuf],
    backports: &Path,
) -> Result<(Vec<String>, Vec<String>)> {
    setup::ensure_backports_apt()?;
    let parts = PathBuf::from(CACHE).join("sources.d");
    let _ = fs::remove_dir_all(&parts);
    fs::create_dir_all(&parts)?;
    for (i, src) in sources.iter().chain([&backports.to_path_buf()]).enumerate() {
        let name = src.file_name().context("source without a name")?;
        let name = name.to_string_lossy();
        let ext = if name.ends_with(".sources") {
            "sources"
        } else {
            "list"
        };
        fs::copy(src, parts.join(format!("{i:02}.{ext}")))?;
    }
    let known = cmd::stdout(
        Command::new("apt-cache")
            .args(["-o", "Dir::Etc::SourceList=/dev/null"])
            .args(["-o", "Dir::State::status=/dev/null", "-o"])
            .arg(format!("Dir::Etc::SourceParts={}", parts.display()))
            .arg("pkgnames"),
    )?;
    let known: std::collections::HashSet<&str> = known.lines().collect();
    let mut include = Vec::new();
    let mut missing = Vec::new();
    for (name, suite) in list {
        let bare = name.split(':').next().unwrap_or(name);
        if !known.contains(bare) {
            missing.push(name.clone());
            continue;
        }
        include.push(match suite {
            Some(s) => format!("{name}/{s}"),
            None => name.clone(),
        });
    }
    Ok((include, missing))
}

/// Removes `dir` and everything below it, first detaching whatever is still
/// mounted there (an interrupted mmdebstrap leaves its chroot's /proc, /sys
/// and /dev mounted): deleting through a mount would delete its contents.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in below {
        cmd::run(Command::new("umount").args(["--lazy", m]))?;
    }
    fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// `path` seen from inside `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

fn mount(args: &[&str], target: &Path) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    let mut c = Command::new("mount");
    c.args(args).arg(target);
    cmd::run(&mut c).with_context(|| format!("mounting {}", target.display()))
}

fn bind(from: &Path, to: &Path) -> Result<()> {
    let from = from
        .to_str()
        .with_context(|| format!("{} is not UTF-8", from.display()))?;
    mount(&["--bind", from], to)
}

/// An overlay of `lower` (left unchanged) at `target`, its writes in `layer`.
fn overlay(lower: &Path, layer: &Path, target: &Path) -> Result<()> {
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for d in [&upper, &work] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(&["-t", "overlay", "overlay", "-o", &opts], target)
}

/// Removes from the room's `~/.cargo/bin` every program that is not
/// rustup's proxy (`cargo install`ed tools would hide missing install steps).
fn keep_only_rustup_programs(bin: &Path) -> Result<()> {
    let rustup = fs::metadata(bin.join("rustup"))
        .with_context(|| format!("no rustup in {}", bin.display()))?;
    for entry in fs::read_dir(bin)?.flatten() {
        let same = fs::metadata(entry.path())
            .map(|m| (m.dev(), m.ino()) == (rustup.dev(), rustup.ino()) || m.len() == rustup.len())
            .unwrap_or(false);
        if !same {
            eprintln!(
                "clean-room: hiding {} (not part of the Rust toolchain)",
                entry.path().display()
            );
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_and_backports() {
        let text = "# comment\nadduser\t3.134\nqemu-utils\t1:10.0.2+ds-2+deb13u1~bpo12+1\n\
                    binutils-common:amd64\t2.40-2\n\n";
        assert_eq!(
            parse_list(text),
            vec![
                ("adduser".to_string(), None),
                ("qemu-utils".to_string(), Some("bookworm-backports")),
                ("binutils-common:amd64".to_string(), None),
            ]
        );
    }

    #[test]
    fn hash_ignores_versions_and_order() {
        assert_eq!(list_hash("a\t1\nb\t2\n"), list_hash("b\t3\na\t1\n"));
        assert_ne!(list_hash("a\t1\n"), list_hash("a\t1\nc\t1\n"));
    }
}
