//! The root file system staging tree and the initramfs that mounts it.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::cpio;
use super::payload::Payload;
use super::progress::{self, step};
use crate::cmd;

/// Inputs the root file system is made of.
pub struct Parts<'a> {
    /// `board/image/`.
    pub board: &'a Path,
    /// The extracted kernel package (boot/, lib/modules/, usr/lib/).
    pub kernel_pkg: &'a Path,
    /// Kernel release, e.g. `6.12.117+deb12-arm64`.
    pub release: &'a str,
    /// The arm64 busybox-static binary.
    pub busybox: &'a Path,
    pub payload: &'a Payload,
}

/// Fills `dir` (emptied first) with the image's root file system.
pub fn stage(dir: &Path, parts: &Parts) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    for sub in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/init.d",
        "etc/usrbd",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "mnt",
        "data",
        "var/log",
        "boot/firmware",
    ] {
        fs::create_dir_all(dir.join(sub))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    // Init scripts keep pid files in /var/run, which is /run (a tmpfs).
    symlink("../run", dir.join("var/run"))?;
    fs::set_permissions(dir.join("root"), fs::Permissions::from_mode(0o700))?;

    install(parts.busybox, &dir.join("bin/busybox"), 0o755)?;
    for applet in busybox_applets()? {
        let link = dir.join(&applet);
        if link.exists() || applet == "bin/busybox" {
            continue;
        }
        // Relative links keep the tree valid wherever it is mounted.
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        symlink(target, &link)?;
    }

    let b = parts.board;
    install(&b.join("inittab"), &dir.join("etc/inittab"), 0o644)?;
    install(&b.join("rcS"), &dir.join("etc/init.d/rcS"), 0o755)?;
    install(&b.join("rcK"), &dir.join("etc/init.d/rcK"), 0o755)?;
    install(&b.join("modules"), &dir.join("etc/modules"), 0o644)?;
    fs::write(dir.join("etc/hostname"), "usrbd\n")?;
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    // An empty password field: the serial console is the appliance's only login.
    fs::write(dir.join("etc/shadow"), "root::19000:0:99999:7:::\n")?;
    fs::set_permissions(dir.join("etc/shadow"), fs::Permissions::from_mode(0o600))?;
    fs::write(
        dir.join("etc/fstab"),
        "# The root file system is mounted by the initramfs; see /etc/init.d/rcS.\n",
    )?;

    let p = parts.payload;
    install(&p.service, &dir.join("usr/bin/usrbd"), 0o755)?;
    install(&p.config, &dir.join("etc/usrbd/usrbd.toml"), 0o644)?;
    install(&p.init_script, &dir.join("etc/init.d/S50usrbd"), 0o755)?;

    let kept = install_modules(parts, &dir.join("lib/modules").join(parts.release))?;
    let extra = modules_dir(dir, parts.release).join("extra");
    fs::create_dir_all(&extra)?;
    install(&p.module, &extra.join("usrbd.ko"), 0o644)?;
    cmd::run_quiet(cmd::tool("depmod").arg("-b").arg(dir).arg(parts.release))?;
    step(&format!(
        "kernel modules: {kept} of the kernel's, decompressed, plus extra/usrbd.ko"
    ));
    Ok(())
}

/// The applet paths (`bin/sh`, `sbin/init`, ...) of Debian's busybox. The
/// host's busybox-static is the same Debian build for amd64; the arm64
/// binary cannot run here.
fn busybox_applets() -> Result<Vec<String>> {
    let out = cmd::stdout(cmd::tool("busybox").arg("--list-full"))?;
    let applets: Vec<String> = out
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    for needed in ["bin/sh", "sbin/init", "sbin/modprobe", "bin/mount"] {
        if !applets.iter().any(|a| a == needed) {
            bail!("busybox --list-full has no {needed}");
        }
    }
    Ok(applets)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies the modules `board/image/rootfs-modules` selects, with their
/// dependencies, into `dest` and decompresses them. Returns how many.
fn install_modules(parts: &Parts, dest: &Path) -> Result<usize> {
    let src = parts.kernel_pkg.join("lib/modules").join(parts.release);
    // The package ships no modules.dep (its postinst runs depmod): make one.
    if !src.join("modules.dep").is_file() {
        cmd::run_quiet(
            cmd::tool("depmod")
                .arg("-b")
                .arg(parts.kernel_pkg)
                .arg(parts.release),
        )?;
    }
    let deps = parse_modules_dep(&fs::read_to_string(src.join("modules.dep"))?);
    let prefixes = fs::read_to_string(parts.board.join("rootfs-modules"))?;
    let prefixes: Vec<&str> = prefixes
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut wanted: Vec<&str> = deps
        .keys()
        .map(String::as_str)
        .filter(|m| prefixes.iter().any(|p| m.starts_with(p)))
        .collect();
    wanted.sort_unstable();
    let all = load_order(&deps, &wanted)?;

    for meta in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if src.join(meta).is_file() {
            fs::create_dir_all(dest)?;
            fs::copy(src.join(meta), dest.join(meta))?;
        }
    }
    let mut compressed = Vec::new();
    for module in &all {
        let to = dest.join(module);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(src.join(module), &to).with_context(|| format!("copying module {module}"))?;
        if module.ends_with(".xz") {
            compressed.push(to);
        }
    }
    for batch in compressed.chunks(256) {
        cmd::run_quiet(Command::new("xz").args(["-d", "-f", "-T0"]).args(batch))?;
    }
    Ok(all.len())
}

/// Writes the gzip-compressed initramfs: busybox, `/init` and the modules
/// that `board/image/initramfs-modules` names, with their dependencies,
/// taken from the staged root (already decompressed, as busybox insmod
/// needs).
pub fn initramfs(out: &Path, parts: &Parts, modules_dir: &Path) -> Result<()> {
    let wanted = fs::read_to_string(parts.board.join("initramfs-modules"))?;
    let wanted: Vec<&str> = wanted
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let dep = fs::read_to_string(modules_dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules_dir.display()))?;
    let order = load_order(&parse_modules_dep(&dep), &wanted)?;

    let mut w = cpio::Writer::new(Vec::new());
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "etc",
        "lib",
        "lib/modules",
    ] {
        w.dir(d)?;
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, &fs::read(parts.busybox)?)?;
    w.file(
        "init",
        0o755,
        &fs::read(parts.board.join("initramfs-init"))?,
    )?;
    let mut list = String::new();
    for module in &order {
        let name = Path::new(module)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .context("module path without a file name")?;
        let data = fs::read(modules_dir.join(module))
            .with_context(|| format!("reading module {module}"))?;
        w.file(&format!("lib/modules/{name}"), 0o644, &data)?;
        list.push_str(&name);
        list.push('\n');
    }
    w.file("etc/initramfs-modules", 0o644, list.as_bytes())?;
    let archive = w.finish()?;

    let mut gzip = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(out)?)
        .spawn()
        .context("starting gzip")?;
    gzip.stdin
        .take()
        .context("gzip stdin")?
        .write_all(&archive)?;
    if !gzip.wait()?.success() {
        bail!("gzip of the initramfs failed");
    }
    step(&format!(
        "initramfs: {} modules ({}), {}",
        order.len(),
        order
            .iter()
            .filter_map(|m| Path::new(m).file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        progress::human(progress::tree_size(out))
    ));
    Ok(())
}

/// modules.dep: `module: dep dep ...`, module paths relative to the
/// release's module directory.
fn parse_modules_dep(text: &str) -> HashMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            (m.trim().to_owned(), deps)
        })
        .collect()
}

/// The modules to insert, dependencies first. `wanted` names modules
/// without their compression suffix.
fn load_order(deps: &HashMap<String, Vec<String>>, wanted: &[&str]) -> Result<Vec<String>> {
    fn visit(
        m: &str,
        deps: &HashMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_owned()) {
            return;
        }
        // modules.dep lists the deepest dependencies last.
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, seen, out);
        }
        out.push(m.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        let key = ["", ".xz", ".zst", ".gz"]
            .iter()
            .map(|suffix| format!("{w}{suffix}"))
            .find(|k| deps.contains_key(k))
            .with_context(|| format!("module {w} is not in modules.dep"))?;
        visit(&key, deps, &mut seen, &mut out);
    }
    Ok(out)
}

/// Path of the kernel's module directory inside a staged root.
pub fn modules_dir(root: &Path, release: &str) -> PathBuf {
    root.join("lib/modules").join(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once() {
        let deps = parse_modules_dep(
            "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
             kernel/fs/jbd2/jbd2.ko.xz:\n\
             kernel/fs/mbcache.ko.xz:\n\
             kernel/lib/crc16.ko.xz:\n\
             kernel/x/sdhci-iproc.ko.xz: kernel/x/sdhci-pltfm.ko.xz kernel/x/sdhci.ko.xz\n\
             kernel/x/sdhci-pltfm.ko.xz: kernel/x/sdhci.ko.xz\n\
             kernel/x/sdhci.ko.xz:\n",
        );
        let order = load_order(
            &deps,
            &["kernel/x/sdhci-iproc.ko", "kernel/fs/ext4/ext4.ko"],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/x/sdhci.ko.xz",
                "kernel/x/sdhci-pltfm.ko.xz",
                "kernel/x/sdhci-iproc.ko.xz",
                "kernel/fs/jbd2/jbd2.ko.xz",
                "kernel/fs/mbcache.ko.xz",
                "kernel/lib/crc16.ko.xz",
                "kernel/fs/ext4/ext4.ko.xz",
            ]
        );
        assert!(load_order(&deps, &["kernel/nope.ko"]).is_err());
    }
}
