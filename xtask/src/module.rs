//! Building `usrbd.ko` out of tree against Debian's kernel headers or a
//! prepared kernel source tree, and checkpatch on its sources.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::{self, kernel_headers, toolchain, Paths};

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

/// modpost's complaints that only mean the tree has no Module.symvers.
fn is_unresolved_symbol(line: &str) -> bool {
    line.contains("Module.symvers is missing")
        || (line.contains("modpost: \"") && line.ends_with("undefined!"))
        || line.contains("unresolved symbol warnings")
}

/// A finished module build.
pub struct Built {
    pub ko: PathBuf,
}

/// Builds kmod/ against the headers of `release` with W=1, in a private copy
/// of the sources so builds for several kernels never share objects. Any
/// warning fails the build.
pub fn build(paths: &Paths, release: &str) -> Result<Built> {
    build_against(paths, &kernel_headers(release), release, &[])
}

/// `make` variables for building against a tree of `arch` (None: the host's):
/// ARCH and, for a foreign one, the CROSS_COMPILE of the project's cross gcc.
pub fn arch_vars(arch: Option<&str>) -> Result<Vec<String>> {
    let Some(arch) = arch else {
        return Ok(Vec::new());
    };
    let (triple, deb_arch) = match arch {
        "arm64" => ("aarch64-linux-gnu", "arm64"),
        "arm" => ("arm-linux-gnueabihf", "armhf"),
        "x86_64" | "x86" => return Ok(vec![format!("ARCH={arch}")]),
        other => bail!("no cross gcc known for ARCH={other} (arm64, arm or x86_64)"),
    };
    let tc = toolchain::ensure(triple, deb_arch)?;
    Ok(vec![
        format!("ARCH={arch}"),
        format!("CROSS_COMPILE={}", tc.prefix),
    ])
}

/// `make <defconfig>` then `make modules_prepare` in the kernel tree `kdir`,
/// which is what an out-of-tree build needs of a bare source tree. Returns
/// how long the two took.
pub fn prepare_tree(kdir: &Path, vars: &[String], defconfig: &str) -> Result<Duration> {
    setup::ensure_kernel_build_tools()?;
    let start = Instant::now();
    for target in [defconfig, "modules_prepare"] {
        let (ok, log) = cmd::capture(
            Command::new("nice")
                .args(["-n", "10", "make", "-j2"])
                .arg("-C")
                .arg(kdir)
                .args(vars)
                .arg(target),
        )?;
        if !ok {
            bail!(
                "`make {target}` in {} failed:\n{}",
                kdir.display(),
                cmd::tail(&log, 40)
            );
        }
    }
    Ok(start.elapsed())
}

/// Builds kmod/ with W=1 against the prepared kernel tree `kdir` (a source
/// tree after `modules_prepare`, or a headers directory), `label` naming the
/// private build directory; `vars` are extra `make` variables (ARCH...).
pub fn build_against(paths: &Paths, kdir: &Path, label: &str, vars: &[String]) -> Result<Built> {
    let src = paths.repo.join("kmod");
    if !src.join("Kbuild").exists() && !src.join("Makefile").exists() {
        bail!("kmod/ has neither Kbuild nor Makefile yet");
    }
    let dir = paths.xdir.join("kmod").join(label);
    let _ = fs::remove_dir_all(&dir);
    copy_sources(&src, &dir)?;
    // A tree after modules_prepare has no vmlinux, so no Module.symvers:
    // modpost cannot resolve any kernel symbol there. Its "undefined" lines
    // are then expected and left out; every other warning still counts, and
    // the symbols are resolved in the builds against Debian's headers and
    // against the 16 KiB-page test kernel.
    let unresolvable = !kdir.join("Module.symvers").exists();
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(kdir)
        .arg(format!("M={}", dir.display()))
        .args(vars)
        .args(["W=1", "-j2", "modules"]);
    if unresolvable {
        make.arg("KBUILD_MODPOST_WARN=1");
    }
    let (ok, log) = cmd::capture(&mut make)?;
    let found: Vec<String> = warnings(&log)
        .into_iter()
        .filter(|l| !(unresolvable && is_unresolved_symbol(l)))
        .collect();
    if !ok || !found.is_empty() {
        bail!(
            "module build against {label} {}:\n{}",
            if ok { "has warnings" } else { "failed" },
            cmd::tail(&log, 60)
        );
    }
    let ko = dir.join("usrbd.ko");
    if !ko.exists() {
        bail!(
            "the build against {label} made no usrbd.ko:\n{}",
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
    fn only_symbol_resolution_is_excused_without_symvers() {
        assert!(is_unresolved_symbol("WARNING: Module.symvers is missing."));
        assert!(is_unresolved_symbol(
            "WARNING: modpost: \"set_disk_ro\" [/t/usrbd.ko] undefined!"
        ));
        assert!(!is_unresolved_symbol(
            "WARNING: modpost: missing MODULE_DESCRIPTION() in usrbd.o"
        ));
        assert!(!is_unresolved_symbol(
            "WARNING: modpost: usrbd: section mismatch in reference: f (section: .text) -> g"
        ));
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
