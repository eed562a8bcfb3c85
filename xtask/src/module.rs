//! Building `usrbd.ko` out of tree against Debian's kernel headers, and
//! checkpatch on its sources.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::{kernel_headers, Paths};

/// Kbuild leftovers that must not be copied into a fresh build tree.
fn is_build_output(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".o", ".ko", ".mod", ".mod.c", ".cmd", ".a", ".order", ".symvers",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s)) || name == ".tmp_versions"
}

fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_build_output(&name) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_sources(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Compiler and modpost warnings in a Kbuild log.
pub fn warnings(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains("warning:"))
        .map(str::to_string)
        .collect()
}

/// A finished module build.
pub struct Built {
    pub ko: PathBuf,
}

/// Builds kmod/ against the headers of `release` with W=1, in a private copy
/// of the sources so builds for several kernels never share objects. Any
/// warning fails the build.
pub fn build(paths: &Paths, release: &str) -> Result<Built> {
    let src = paths.repo.join("kmod");
    if !src.join("Kbuild").exists() && !src.join("Makefile").exists() {
        bail!("kmod/ has neither Kbuild nor Makefile yet");
    }
    let dir = paths.xdir.join("kmod").join(release);
    let _ = fs::remove_dir_all(&dir);
    copy_sources(&src, &dir)?;
    let headers = kernel_headers(release);
    let (ok, log) = cmd::capture(
        Command::new("make")
            .arg("-C")
            .arg(&headers)
            .arg(format!("M={}", dir.display()))
            .args(["W=1", "-j2", "modules"]),
    )?;
    let found = warnings(&log);
    if !ok || !found.is_empty() {
        bail!(
            "module build against {release} {}:\n{}",
            if ok { "has warnings" } else { "failed" },
            cmd::tail(&log, 60)
        );
    }
    let ko = dir.join("usrbd.ko");
    if !ko.exists() {
        bail!(
            "the build against {release} made no usrbd.ko:\n{}",
            cmd::tail(&log, 30)
        );
    }
    Ok(Built { ko })
}

/// The module's own C sources and headers: kmod/*.c and kmod/*.h. The UAPI
/// header under kmod/include/ is left out: it is userspace-facing, where
/// checkpatch's kernel-only advice (BIT(), ...) does not apply.
fn kernel_sources(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file()
            && (name.ends_with(".c") || name.ends_with(".h"))
            && !is_build_output(&name)
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `checkpatch.pl --strict` over kmod/*.c and kmod/*.h; any ERROR, WARNING
/// or CHECK fails.
pub fn checkpatch(paths: &Paths, script: &Path) -> Result<String> {
    let files = kernel_sources(&paths.repo.join("kmod"))?;
    if files.is_empty() {
        bail!("no .c/.h files under kmod/");
    }
    let (ok, log) = cmd::capture(
        Command::new("perl")
            .arg(script)
            .args([
                "--strict",
                "--no-tree",
                "--color=never",
                "--show-types",
                "-f",
            ])
            .args(&files)
            .current_dir(&paths.repo),
    )?;
    let flagged = log
        .lines()
        .filter(|l| l.starts_with("ERROR:") || l.starts_with("WARNING:") || l.starts_with("CHECK:"))
        .count();
    if !ok || flagged > 0 {
        bail!("checkpatch --strict flagged {flagged} issue(s):\n{log}");
    }
    Ok(format!("{} files clean", files.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_catch_compiler_and_modpost_lines() {
        let log = "  CC [M]  main.o\n\
                   main.c:3:5: warning: no previous prototype for 'f' [-Wmissing-prototypes]\n\
                   WARNING: modpost: missing MODULE_DESCRIPTION() in usrbd.o\n\
                   \x20 LD [M]  usrbd.ko\n";
        assert_eq!(warnings(log).len(), 2);
        assert!(warnings("  CC [M]  main.o\n  LD [M]  usrbd.ko\n").is_empty());
    }

    #[test]
    fn build_outputs_are_not_sources() {
        assert!(is_build_output("usrbd.mod.c"));
        assert!(is_build_output("main.o"));
        assert!(is_build_output(".main.o.cmd"));
        assert!(is_build_output("modules.order"));
        assert!(!is_build_output("main.c"));
        assert!(!is_build_output("Kbuild"));
    }
}
