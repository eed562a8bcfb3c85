//! Debian's ARM kernels: picking a 6.12 version, downloading its headers,
//! image and busybox as `.deb`s, and unpacking them under `target/cross/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::setup::apt;

/// One Debian kernel flavour: `arm64`, `armmp` or `armmp-lpae`.
#[derive(Clone, Copy, Debug)]
pub struct Flavour {
    pub name: &'static str,
    /// The dpkg architecture its packages are built for.
    pub arch: &'static str,
    /// The kernel's `ARCH=`.
    pub kernel_arch: &'static str,
}

pub const ARM64: Flavour = Flavour {
    name: "arm64",
    arch: "arm64",
    kernel_arch: "arm64",
};
pub const ARMMP: Flavour = Flavour {
    name: "armmp",
    arch: "armhf",
    kernel_arch: "arm",
};
pub const ARMMP_LPAE: Flavour = Flavour {
    name: "armmp-lpae",
    arch: "armhf",
    kernel_arch: "arm",
};

/// Set to a version such as `6.12.107+deb12` to pin the kernel.
const KVER_ENV: &str = "USRBD_CROSS_KVER";

/// Package names apt knows for Linux 6.12 (headers, images, kbuild).
pub fn known_packages() -> Result<BTreeSet<String>> {
    let names = apt::search_names(r"^linux-(headers|image|kbuild)-6\.12\.[0-9]+\+deb12")?;
    Ok(names.into_iter().collect())
}

/// The 6.12 version (`6.12.N+deb12`) to use for `flavour`: one with headers,
/// their `-common`, kbuild and (if `need_image`) a kernel image. Prefers a
/// version whose kbuild is installed already, then the newest.
pub fn pick_version(
    known: &BTreeSet<String>,
    flavour: Flavour,
    need_image: bool,
) -> Result<String> {
    if let Ok(pinned) = std::env::var(KVER_ENV) {
        return Ok(pinned);
    }
    let mut complete: Vec<(Vec<u32>, String)> = known
        .iter()
        .filter_map(|p| {
            let ver = p
                .strip_prefix("linux-headers-")?
                .strip_suffix(&format!("-{}", flavour.name))?;
            // `6.12.N+deb12` only: skip `-rt`, `-cloud` and the like.
            if ver.contains('-') {
                return None;
            }
            Some(ver.to_owned())
        })
        .filter(|ver| {
            known.contains(&format!("linux-headers-{ver}-common"))
                && known.contains(&format!("linux-kbuild-{ver}"))
                && (!need_image || image_package(known, ver, flavour).is_some())
        })
        .map(|ver| (version_key(&ver), ver))
        .collect();
    complete.sort();
    let installed = complete
        .iter()
        .rev()
        .find(|(_, v)| apt::installed(&format!("linux-kbuild-{v}")));
    match installed.or(complete.last()) {
        Some((_, v)) => Ok(v.clone()),
        None => bail!(
            "apt knows no complete Linux 6.12 package set for {} ({}); \
             check `apt-cache search linux-headers-6.12` and the {} architecture",
            flavour.name,
            if need_image {
                "headers, common, kbuild, image"
            } else {
                "headers, common, kbuild"
            },
            flavour.arch
        ),
    }
}

/// Numeric sort key of `6.12.107+deb12`.
fn version_key(ver: &str) -> Vec<u32> {
    ver.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The kernel image package of `ver`: unsigned when it exists (what we boot
/// is not verified by firmware), else the signed one.
fn image_package(known: &BTreeSet<String>, ver: &str, flavour: Flavour) -> Option<String> {
    let unsigned = format!("linux-image-{ver}-{}-unsigned", flavour.name);
    let signed = format!("linux-image-{ver}-{}", flavour.name);
    [unsigned, signed].into_iter().find(|p| known.contains(p))
}

/// Unpacked headers of `ver`/`flavour`, ready for `make -C <dir> M=...`:
/// `-common` is referenced by absolute path and `scripts`/`tools` point at
/// the host's `linux-kbuild` (the host must have it installed).
pub fn headers(cache: &Path, ver: &str, flavour: Flavour) -> Result<PathBuf> {
    let root = cache.join(format!("headers-{ver}-{}", flavour.name));
    let src = root.join("usr/src");
    let flavour_dir = src.join(format!("linux-headers-{ver}-{}", flavour.name));
    let common_dir = src.join(format!("linux-headers-{ver}-common"));
    let ready = root.join(".usrbd-ready");
    if ready.exists() {
        return Ok(flavour_dir);
    }
    let debs = cache.join("debs");
    let flav_deb = apt::download(
        &format!("linux-headers-{ver}-{}:{}", flavour.name, flavour.arch),
        &debs,
    )?;
    let common_deb = apt::download(&format!("linux-headers-{ver}-common"), &debs)?;
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot clean {}", root.display()))?;
    }
    apt::extract(&flav_deb, &root)?;
    apt::extract(&common_deb, &root)?;

    let kbuild = PathBuf::from(format!("/usr/lib/linux-kbuild-{ver}"));
    for dir in [&flavour_dir, &common_dir] {
        for link in ["scripts", "tools"] {
            let path = dir.join(link);
            if path.symlink_metadata().is_ok() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot replace {}", path.display()))?;
            }
            std::os::unix::fs::symlink(kbuild.join(link), &path)
                .with_context(|| format!("cannot link {}", path.display()))?;
        }
    }
    let makefile = flavour_dir.join("Makefile");
    let abs_common = common_dir
        .canonicalize()
        .with_context(|| format!("{} missing after extraction", common_dir.display()))?;
    std::fs::write(
        &makefile,
        format!("include {}/Makefile\n", abs_common.display()),
    )
    .with_context(|| format!("cannot write {}", makefile.display()))?;
    std::fs::write(&ready, ver).with_context(|| format!("cannot write {}", ready.display()))?;
    Ok(flavour_dir)
}

/// The kernel image of `ver`/`flavour` (only `boot/` is unpacked).
pub fn kernel_image(
    cache: &Path,
    known: &BTreeSet<String>,
    ver: &str,
    flavour: Flavour,
) -> Result<PathBuf> {
    let root = cache.join(format!("kernel-{ver}-{}", flavour.name));
    let vmlinuz = root.join(format!("boot/vmlinuz-{ver}-{}", flavour.name));
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    let pkg = image_package(known, ver, flavour)
        .with_context(|| format!("no linux-image package for {ver}-{}", flavour.name))?;
    let deb = apt::download(&format!("{pkg}:{}", flavour.arch), &cache.join("debs"))?;
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    // Only boot/ of the package is wanted: stream its tar through `tar`
    // rather than extracting the modules too.
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-x", "--wildcards", "./boot/*"])
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start tar")?;
    let tar_in = tar.stdin.take().context("tar has no stdin")?;
    // The Command, and with it the pipe's write end, is dropped at the end
    // of this statement, so tar sees the end of its input.
    let unpacked = cmd::run(
        Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(&deb)
            .stdout(tar_in),
    );
    let status = tar.wait().context("tar did not finish")?;
    unpacked?;
    if !status.success() {
        bail!("tar of {}'s boot/ failed: {status}", deb.display());
    }
    if !vmlinuz.exists() {
        bail!("{} has no {}", deb.display(), vmlinuz.display());
    }
    Ok(vmlinuz)
}

/// A static busybox for `arch`, from Debian's `busybox-static:<arch>`.
pub fn busybox(cache: &Path, arch: &str) -> Result<PathBuf> {
    let root = cache.join(format!("busybox-{arch}"));
    let bin = root.join("bin/busybox");
    if bin.exists() {
        return Ok(bin);
    }
    let deb = apt::download(
        &format!("busybox-static:{arch}"),
        &cache.join(format!("debs-{arch}")),
    )?;
    apt::extract(&deb, &root)?;
    if !bin.exists() {
        bail!("{} has no bin/busybox", deb.display());
    }
    Ok(bin)
}
