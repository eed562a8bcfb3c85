//! Offline checks of the image recipes (what CI can check without the
//! network): oelint-adv on every recipe, kas's schema on the kas files, and
//! the recipe's crate list against Cargo.lock.

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
    check_crates(&paths)
}

/// oelint-adv, with the committed `yocto/.oelint.cfg`, on every recipe.
pub fn lint_recipes(paths: &Paths) -> Result<()> {
    let venv = ensure_tools(paths)?;
    let yocto = paths.repo.join("yocto");
    let mut recipes = Vec::new();
    files_with(&yocto.join("meta-usrbd"), &["bb", "bbappend"], &mut recipes)?;
    recipes.sort();
    let (ok, out) = cmd::capture(
        Command::new(venv.join("bin/oelint-adv"))
            .arg("--quiet")
            .args(&recipes)
            .current_dir(&yocto),
    )?;
    if !ok || !out.trim().is_empty() {
        bail!("oelint-adv on {} recipes:\n{out}", recipes.len());
    }
    println!("    oelint-adv: {} recipes, 0 findings", recipes.len());
    Ok(())
}

/// Every kas file against kas's own schema, layers pinned to commits.
pub fn check_kas(paths: &Paths) -> Result<()> {
    let venv = ensure_tools(paths)?;
    let mut files = Vec::new();
    files_with(&paths.repo.join("yocto/kas"), &["yml"], &mut files)?;
    files.retain(|f| f.file_name().is_some_and(|n| n != "common.yml"));
    files.sort();
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
