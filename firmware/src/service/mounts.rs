//! Local mounts of the device: which mount points sit on it (or on its
//! partitions) and unmounting them, never lazily.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use log::warn;
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

use crate::device::DeviceInfo;
use crate::error::DetachError;

/// Mount points of `dev` and its partitions on this machine, newest first.
pub(super) fn of_device(dev: &DeviceInfo) -> Result<Vec<PathBuf>, DetachError> {
    let path = dev.path();
    let meta = match std::fs::metadata(&path) {
        Ok(m) if m.file_type().is_block_device() => m,
        Ok(_) | Err(_) => {
            warn!(
                "{} is not a block device node here; no mounts to check",
                path.display()
            );
            return Ok(Vec::new());
        }
    };
    let rdev = (
        u64::from(libc::major(meta.rdev())),
        u64::from(libc::minor(meta.rdev())),
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(DetachError::MountTable)?;
    Ok(mounts_in(&info, |mm| is_ours(&dev.name, rdev, mm)))
}

/// Unmounts one mount point; EBUSY is [`DetachError::Busy`].
pub(super) fn unmount(mountpoint: &Path) -> Result<(), DetachError> {
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => Err(DetachError::Busy {
            mountpoint: mountpoint.to_owned(),
        }),
        Err(errno) => Err(DetachError::Unmount {
            mountpoint: mountpoint.to_owned(),
            errno,
        }),
    }
}

/// The device's major:minor, and its partitions' by the sysfs name.
fn is_ours(name: &str, rdev: (u64, u64), maj_min: &str) -> bool {
    if maj_min == format!("{}:{}", rdev.0, rdev.1) {
        return true;
    }
    let part = Path::new("/sys/dev/block").join(maj_min);
    part.join("partition").exists()
        && std::fs::canonicalize(&part)
            .ok()
            .and_then(|p| p.parent().and_then(|d| d.file_name().map(|n| n == name)))
            .unwrap_or(false)
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Mount points whose source device satisfies `ours`, most recent first, so
/// stacked mounts come off top-down.
pub fn mounts_in(mountinfo: &str, ours: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let maj_min = f.nth(2)?;
            let mp = f.nth(1)?;
            ours(maj_min).then(|| unescape_mount_path(mp))
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_select_our_device_newest_first() {
        let info = "\
22 1 259:2 / / rw - ext4 /dev/root rw
40 22 254:0 / /mnt/a rw - ext4 /dev/usrbd0 rw
41 22 8:1 / /boot rw - vfat /dev/sda1 rw
42 40 254:0 / /mnt/with\\040space rw - ext4 /dev/usrbd0 rw
";
        let m = mounts_in(info, |mm| mm == "254:0");
        assert_eq!(
            m,
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/mnt/a")]
        );
        assert!(mounts_in(info, |mm| mm == "1:1").is_empty());
    }
}
