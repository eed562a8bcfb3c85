//! The SD-card image: an MBR with a FAT32 boot partition and an ext4 root
//! partition, each file system built in its own file and copied in. No loop
//! devices, no mounts.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::progress::{self, step};
use crate::cmd;

const MIB: u64 = 1 << 20;
/// Partitions start on 4 MiB boundaries, the erase-block size SD cards
/// are tuned for.
const ALIGN: u64 = 4 * MIB;
pub const BOOT_SIZE: u64 = 128 * MIB;
pub const ROOT_LABEL: &str = "usrbd-root";
/// MBR disk identifier ("usrb"); PARTUUIDs read 75737262-01 and -02.
const DISK_ID: u32 = 0x7573_7262;

pub struct Layout {
    pub total: u64,
    pub boot_start: u64,
    pub root_start: u64,
}

impl Layout {
    /// QEMU's SD card model wants a power-of-two size, so the image has one.
    pub fn new(total: u64) -> Result<Self> {
        if !total.is_power_of_two() {
            bail!("image size {total} is not a power of two (QEMU's SD card needs one)");
        }
        let layout = Self {
            total,
            boot_start: ALIGN,
            root_start: ALIGN + BOOT_SIZE,
        };
        if layout.root_size() < 64 * MIB {
            bail!(
                "image size {} leaves no room for the root file system",
                progress::human(total)
            );
        }
        Ok(layout)
    }

    pub fn root_size(&self) -> u64 {
        self.total.saturating_sub(self.root_start)
    }

    fn sfdisk_script(&self) -> String {
        format!(
            "label: dos\nlabel-id: {DISK_ID:#010x}\nunit: sectors\n\n\
             start={}, size={}, type=c, bootable\n\
             start={}, size={}, type=83\n",
            self.boot_start / 512,
            BOOT_SIZE / 512,
            self.root_start / 512,
            self.root_size() / 512,
        )
    }
}

/// FAT32 boot file system holding every file of `dir`.
pub fn make_boot_fs(out: &Path, dir: &Path) -> Result<()> {
    let _ = fs::remove_file(out);
    File::create(out)?.set_len(BOOT_SIZE)?;
    cmd::run_quiet(
        cmd::tool("mkfs.vfat")
            .args(["-F", "32", "-n", "BOOT", "-i"])
            .arg(format!("{DISK_ID:08x}"))
            .arg(out),
    )?;
    let mut names: Vec<_> = fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    names.sort();
    cmd::run_quiet(
        cmd::tool("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(out)
            .args(["-s", "-o", "-Q"])
            .args(&names)
            .arg("::/"),
    )?;
    step(&format!(
        "boot partition: FAT32, {} files, {} used of {}",
        names.len(),
        progress::human(progress::tree_size(dir)),
        progress::human(BOOT_SIZE)
    ));
    Ok(())
}

/// ext4 root file system built from a staging tree (`mkfs.ext4 -d`).
pub fn make_root_fs(out: &Path, dir: &Path, size: u64) -> Result<()> {
    let used = progress::tree_size(dir);
    // Headroom for ext4's own metadata (inode tables, journal).
    if used + used / 4 + 32 * MIB > size {
        bail!(
            "root file system needs about {} but the partition has {}: pass a larger --size",
            progress::human(used + used / 4 + 32 * MIB),
            progress::human(size)
        );
    }
    let _ = fs::remove_file(out);
    cmd::run_quiet(
        cmd::tool("mkfs.ext4")
            .args(["-q", "-F", "-L", ROOT_LABEL, "-E", "root_owner=0:0", "-d"])
            .arg(dir)
            .arg(out)
            .arg(format!("{}k", size / 1024)),
    )?;
    step(&format!(
        "root partition: ext4 \"{ROOT_LABEL}\", {} used of {}",
        progress::human(used),
        progress::human(size)
    ));
    Ok(())
}

/// Writes the partition table and copies both file systems in place.
pub fn assemble(image: &Path, layout: &Layout, boot: &Path, root: &Path) -> Result<()> {
    let _ = fs::remove_file(image);
    File::create(image)?.set_len(layout.total)?;
    let mut sfdisk = cmd::tool("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting sfdisk")?;
    sfdisk
        .stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(layout.sfdisk_script().as_bytes())?;
    let out = sfdisk.wait_with_output()?;
    if !out.status.success() {
        bail!("sfdisk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    copy_sparse(boot, image, layout.boot_start)?;
    copy_sparse(root, image, layout.root_start)?;
    Ok(())
}

/// Copies `from` into `to` at `offset`, skipping all-zero blocks so the
/// image stays sparse (its unwritten parts already read as zeros).
fn copy_sparse(from: &Path, to: &Path, offset: u64) -> Result<()> {
    let mut src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = OpenOptions::new().write(true).open(to)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = offset;
    loop {
        let n = read_full(&mut src, &mut buf)?;
        if n == 0 {
            break;
        }
        for (i, chunk) in buf[..n].chunks(64 * 1024).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                dst.seek(SeekFrom::Start(pos + (i * 64 * 1024) as u64))?;
                dst.write_all(chunk)?;
            }
        }
        pos += n as u64;
    }
    dst.sync_all()?;
    Ok(())
}

fn read_full(src: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Byte offset of partition `n` (1-based, primary) read from the image's MBR.
pub fn partition_offset(image: &Path, n: usize) -> Result<u64> {
    let mut mbr = [0u8; 512];
    File::open(image)
        .with_context(|| format!("opening {}", image.display()))?
        .read_exact(&mut mbr)?;
    if mbr[510..512] != [0x55, 0xaa] || !(1..=4).contains(&n) {
        bail!("{} has no MBR partition {n}", image.display());
    }
    let entry = &mbr[446 + (n - 1) * 16..446 + n * 16];
    let lba = u32::from_le_bytes([entry[8], entry[9], entry[10], entry[11]]);
    if lba == 0 {
        bail!("{}: partition {n} is empty", image.display());
    }
    Ok(u64::from(lba) * 512)
}

/// `fdisk -l` of the image, as a user would check it.
pub fn fdisk_list(image: &Path) -> Result<String> {
    cmd::stdout(cmd::tool("fdisk").arg("-l").arg(image))
}

/// Copies files out of the image's FAT boot partition with mtools.
pub fn copy_from_boot(image: &Path, names: &[&str], dest: &Path) -> Result<()> {
    let offset = partition_offset(image, 1)?;
    fs::create_dir_all(dest)?;
    for name in names {
        cmd::run_quiet(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(format!("{}@@{offset}", image.display()))
                .args(["-o", "-n"])
                .arg(format!("::/{name}"))
                .arg(dest.join(name)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_needs_a_power_of_two() {
        assert!(Layout::new(500 * MIB).is_err());
        assert!(Layout::new(128 * MIB).is_err());
        let l = Layout::new(512 * MIB).unwrap();
        assert_eq!(l.root_start, 132 * MIB);
        assert_eq!(l.root_size(), 380 * MIB);
        let script = l.sfdisk_script();
        assert!(script.contains("start=8192, size=262144, type=c, bootable"));
        assert!(script.contains("start=270336, size=778240, type=83"));
    }

    #[test]
    fn sparse_copy_lands_at_offset() {
        let dir = std::env::temp_dir().join(format!("usrbd-disk-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        let mut data = vec![0u8; 200 * 1024];
        data[150 * 1024] = 7;
        fs::write(&src, &data).unwrap();
        File::create(&dst).unwrap().set_len(1 << 20).unwrap();
        copy_sparse(&src, &dst, 4096).unwrap();
        let out = fs::read(&dst).unwrap();
        assert_eq!(out[4096 + 150 * 1024], 7);
        assert_eq!(out.iter().filter(|&&b| b != 0).count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
