//! Offline checks of the image recipes (what CI can check without the
//! network beyond crates.io): oelint-adv on every recipe, kas's schema on the
//! kas files, the recipe's crate list against Cargo.lock, and every locked
//! crate's manifest against the oldest supported Yocto series' cargo.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::{self, Paths};

/// Pinned so a fresh machine checks with the same rules as a developer's.
const TOOLS: &[&str] = &["oelint-adv==9.11.2", "kas==5.5", "jsonschema==4.26.0"];

/// The Python tools, in a venv of their own under target/.
fn ensure_tools(paths: &Paths) -> Result<PathBuf> {
    let venv = paths.xdir.join("venv-yocto");
    let stamp = venv.join("usrbd-tools");
    let wanted = TOOLS.join(" ");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv);
    }
    eprintln!("setup: installing {wanted} into {}", venv.display());
    setup::new_venv(&venv)?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q"])
            .args(TOOLS),
    )?;
    fs::write(&stamp, wanted)?;
    Ok(venv)
}

fn files_with(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files_with(&path, exts, out)?;
        } else if exts
            .iter()
            .any(|e| path.extension().is_some_and(|x| x == *e))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// `cargo xtask yocto-check`: the three checks `cargo xtask test` runs.
pub fn run(_args: &[String]) -> Result<()> {
    let paths = Paths::new();
    lint_recipes(&paths)?;
    check_kas(&paths)?;
    check_crates(&paths)?;
    check_lock_rust(&paths)
}

/// oelint-adv, with the committed `yocto/.oelint.cfg`, on every recipe,
/// with the rules of each supported series.
pub fn lint_recipes(paths: &Paths) -> Result<()> {
    let venv = ensure_tools(paths)?;
    let yocto = paths.repo.join("yocto");
    let mut recipes = Vec::new();
    files_with(&yocto.join("meta-usrbd"), &["bb", "bbappend"], &mut recipes)?;
    recipes.sort();
    for series in SERIES {
        let (ok, out) = cmd::capture(
            Command::new(venv.join("bin/oelint-adv"))
                .args(["--quiet", "--release", series])
                .args(&recipes)
                .current_dir(&yocto),
        )?;
        if !ok || !out.trim().is_empty() {
            bail!(
                "oelint-adv --release {series} on {} recipes:\n{out}",
                recipes.len()
            );
        }
        println!(
            "    oelint-adv --release {series}: {} recipes, 0 findings",
            recipes.len()
        );
    }
    Ok(())
}

/// The Yocto series the layer supports: one directory of kas files each.
const SERIES: &[&str] = &["scarthgap", "wrynose"];

/// Every machine file of every series against kas's own schema, layers
/// pinned to commits on that series' branches, the same machines in each.
pub fn check_kas(paths: &Paths) -> Result<()> {
    let venv = ensure_tools(paths)?;
    let mut files = Vec::new();
    let mut machines: Vec<(&str, Vec<String>)> = Vec::new();
    for series in SERIES {
        let mut these = Vec::new();
        files_with(
            &paths.repo.join("yocto/kas").join(series),
            &["yml"],
            &mut these,
        )?;
        these.sort();
        let names = these
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        machines.push((series, names));
        files.extend(these);
    }
    if let Some((series, names)) = machines.iter().find(|(_, n)| *n != machines[0].1) {
        bail!(
            "yocto/kas/{series}/ has {names:?}, yocto/kas/{}/ has {:?}: every series needs the same machines",
            machines[0].0,
            machines[0].1
        );
    }
    let (ok, out) = cmd::capture(
        Command::new(venv.join("bin/python3"))
            .arg(paths.repo.join("yocto/scripts/check-kas.py"))
            .args(&files),
    )?;
    if !ok {
        bail!("kas files:\n{out}");
    }
    println!("{}", crate::test::indent(out.trim_end()));
    Ok(())
}

/// The recipe's `usrbd-crates.inc` is what Cargo.lock says.
pub fn check_crates(paths: &Paths) -> Result<()> {
    let inc = paths
        .repo
        .join("yocto/meta-usrbd/recipes-core/usrbd/usrbd-crates.inc");
    let fresh = cmd::stdout(
        Command::new("sh")
            .arg(paths.repo.join("yocto/scripts/crates-inc.sh"))
            .arg(paths.repo.join("Cargo.lock")),
    )?;
    let committed =
        fs::read_to_string(&inc).with_context(|| format!("reading {}", inc.display()))?;
    if fresh != committed {
        bail!(
            "{} is out of date with Cargo.lock: regenerate it with \
             `yocto/scripts/crates-inc.sh Cargo.lock > {}`",
            inc.display(),
            inc.display()
        );
    }
    println!(
        "    usrbd-crates.inc: {} crates, matches Cargo.lock",
        fresh.matches("crate://").count()
    );
    Ok(())
}

/// Rust of the oldest Yocto series the layer supports (oe-core scarthgap).
const OLDEST_RUST: (u32, u32) = (1, 75);
/// Editions that cargo knows.
const OLDEST_EDITIONS: &[&str] = &["2015", "2018", "2021"];

/// One `[[package]]` of Cargo.lock that comes from crates.io.
#[derive(Debug, PartialEq)]
struct Locked {
    name: String,
    version: String,
}

/// The crates.io packages of a Cargo.lock (path members have no `source`).
fn registry_packages(lock: &str) -> Vec<Locked> {
    let field = |block: &str, key: &str| {
        block.lines().find_map(|l| {
            l.strip_prefix(key)?
                .trim_start()
                .strip_prefix('=')
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    lock.split("[[package]]")
        .skip(1)
        .filter(|b| {
            field(b, "source").is_some_and(|s| {
                s.starts_with("registry+https://github.com/rust-lang/crates.io-index")
            })
        })
        .filter_map(|b| {
            Some(Locked {
                name: field(b, "name")?,
                version: field(b, "version")?,
            })
        })
        .collect()
}

/// Why cargo `OLDEST_RUST` cannot parse or build with this (crates.io
/// normalised) manifest, if it cannot: a newer edition, a higher
/// `rust-version`, or unstable `cargo-features`.
fn too_new(manifest: &str) -> Option<String> {
    let mut table = "";
    let mut edition = "2015";
    let mut rust_version = None;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            table = line;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match (table, key.trim()) {
            ("", "cargo-features") => return Some(format!("cargo-features = {value}")),
            ("[package]", "edition") => edition = value,
            ("[package]", "rust-version") => rust_version = Some(value),
            _ => {}
        }
    }
    if !OLDEST_EDITIONS.contains(&edition) {
        return Some(format!("edition {edition}"));
    }
    let rv = rust_version?;
    let mut parts = rv.split('.').map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (have > OLDEST_RUST).then(|| format!("rust-version {rv}"))
}

/// cargo's home: `CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The `.crate` file cargo downloaded for `pkg` (any crates.io index dir).
fn crate_file(cache: &Path, pkg: &Locked) -> Option<PathBuf> {
    let file = format!("{}-{}.crate", pkg.name, pkg.version);
    fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path().join(&file))
        .find(|p| p.is_file())
}

/// Every crate of Cargo.lock (dev-dependencies and other targets' too: Yocto
/// vendors them all and cargo parses every vendored manifest) must be one
/// the oldest supported series' cargo reads. The manifests are the ones in
/// the downloaded `.crate`s, fetched by `cargo fetch --locked`.
pub fn check_lock_rust(paths: &Paths) -> Result<()> {
    cmd::run_quiet(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["fetch", "--locked"])
            .current_dir(&paths.repo),
    )?;
    let lock_path = paths.repo.join("Cargo.lock");
    let lock = fs::read_to_string(&lock_path)
        .with_context(|| format!("reading {}", lock_path.display()))?;
    let cache = cargo_home()?.join("registry/cache");
    let packages = registry_packages(&lock);
    let mut bad = Vec::new();
    for pkg in &packages {
        let file = crate_file(&cache, pkg).with_context(|| {
            format!(
                "{}-{}.crate not in {} after cargo fetch",
                pkg.name,
                pkg.version,
                cache.display()
            )
        })?;
        let inner = format!("{}-{}/Cargo.toml", pkg.name, pkg.version);
        let manifest = cmd::stdout(Command::new("tar").arg("-xzOf").arg(&file).arg(&inner))?;
        if let Some(why) = too_new(&manifest) {
            bad.push(format!("{} {}: {why}", pkg.name, pkg.version));
        }
    }
    let (major, minor) = OLDEST_RUST;
    if !bad.is_empty() {
        bail!(
            "{} of {} locked crates need a cargo newer than scarthgap's {major}.{minor} \
             (`failed to parse manifest` in do_compile):\n    {}\n\
             downgrade them: CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo update",
            bad.len(),
            packages.len(),
            bad.join("\n    ")
        );
    }
    println!(
        "    Cargo.lock: {} crates.io crates, all edition <= 2021 and rust-version <= {major}.{minor}",
        packages.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lists_registry_packages_only() {
        let lock = r#"
[[package]]
name = "anyhow"
version = "1.0.100"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "00"

[[package]]
name = "usrbd"
version = "0.1.0"
dependencies = [
 "anyhow",
]
"#;
        assert_eq!(
            registry_packages(lock),
            [Locked {
                name: "anyhow".into(),
                version: "1.0.100".into()
            }]
        );
    }

    #[test]
    fn manifests_newer_than_scarthgap_are_rejected() {
        let m = |body: &str| {
            format!("[package]\nname = \"x\"\n{body}\n[dependencies.y]\nversion = \"1\"\n")
        };
        assert_eq!(
            too_new(&m("edition = \"2024\"\nrust-version = \"1.85.0\"")).as_deref(),
            Some("edition 2024")
        );
        assert_eq!(
            too_new(&m("edition = \"2021\"\nrust-version = \"1.87.0\"")).as_deref(),
            Some("rust-version 1.87.0")
        );
        assert_eq!(
            too_new("cargo-features = [\"x\"]\n[package]\n").as_deref(),
            Some("cargo-features = [\"x\"]")
        );
        assert_eq!(
            too_new(&m("edition = \"2021\"\nrust-version = \"1.75\"")),
            None
        );
        assert_eq!(too_new(&m("edition = \"2018\"")), None);
        // `edition` of another table is not the package's.
        assert_eq!(
            too_new("[package]\nname = \"x\"\n[lib]\nedition = \"2024\"\n"),
            None
        );
    }
}
