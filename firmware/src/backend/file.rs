//! The file backend: an image file (sparse, created at the device size if missing)
//! or a block device / partition, served with pread/pwrite.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use log::{info, warn};

use super::{check_range, Backend};
use crate::error::BackendError;

// The BLK* ioctls of <linux/fs.h>. BLKGETSIZE64 encodes sizeof(size_t) but always
// writes a u64, hence the "bad" form with the size spelled out.
nix::ioctl_read_bad!(
    blk_get_size64,
    nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()),
    u64
);
nix::ioctl_write_ptr_bad!(blk_discard, nix::request_code_none!(0x12, 119), [u64; 2]);
nix::ioctl_write_ptr_bad!(blk_zeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// Zeros written per call when the filesystem cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
    block_device: bool,
    /// A page-aligned run of zeros (usable with O_DIRECT) for the write fallback.
    zeros: Vec<u8>,
    zeros_offset: usize,
    /// The errno of a failed fdatasync. The kernel reports a lost write-back
    /// to one fdatasync only, and the file is shared by every queue's worker:
    /// once one saw it, every later flush and the final sync must fail too.
    flush_error: AtomicI32,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |source| BackendError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn errno_of(r: nix::Result<i32>) -> io::Result<()> {
    r.map(|_| ())
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS)
    )
}

impl FileBackend {
    /// Opens `path`. A missing path is created as a sparse file of `size` bytes; an
    /// existing file shorter than `size` is extended; a block device must hold at
    /// least `size`. Without `size`, the file or device size is used.
    pub fn open(
        path: &Path,
        size: Option<u64>,
        block: u32,
        direct: bool,
        read_only: bool,
    ) -> Result<Self, BackendError> {
        let exists = path.exists();
        let block_device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        if !exists && size.is_none() {
            return Err(BackendError::SizeRequired {
                path: path.to_owned(),
            });
        }
        let mut opts = OpenOptions::new();
        opts.read(true)
            .write(!read_only)
            .create(!exists && !read_only);
        // O_EXCL on a block device claims it: a mounted partition (the root
        // filesystem, say) or one another driver holds cannot be served.
        let flags =
            if direct { libc::O_DIRECT } else { 0 } | if block_device { libc::O_EXCL } else { 0 };
        opts.custom_flags(flags);
        if !exists {
            opts.mode(0o600);
        }
        let file = opts.open(path).map_err(|e| {
            if block_device && e.raw_os_error() == Some(libc::EBUSY) {
                BackendError::InUse {
                    path: path.to_owned(),
                }
            } else {
                io_err("opening", path)(e)
            }
        })?;
        let meta = file.metadata().map_err(io_err("reading", path))?;
        let have = if block_device {
            let mut n = 0u64;
            // SAFETY: n is a valid u64 for the kernel to write.
            unsafe { blk_get_size64(file.as_raw_fd(), &mut n) }
                .map_err(|e| io_err("reading the size of", path)(io::Error::from(e)))?;
            n
        } else {
            meta.len()
        };
        let size = match size {
            None => have,
            Some(want) if want <= have => want,
            Some(want) if block_device || read_only => {
                return Err(BackendError::TooSmall {
                    path: path.to_owned(),
                    have,
                    want,
                })
            }
            Some(want) => {
                if exists {
                    info!("extending {} from {have} to {want} bytes", path.display());
                } else {
                    info!("created {} ({want} bytes, sparse)", path.display());
                }
                file.set_len(want).map_err(io_err("sizing", path))?;
                want
            }
        };
        if size == 0 || size % u64::from(block) != 0 {
            return Err(BackendError::Unaligned { size, block });
        }
        let align = super::page_size();
        let zeros = vec![0u8; ZERO_CHUNK + align];
        let zeros_offset = zeros.as_ptr().align_offset(align);
        Ok(FileBackend {
            file,
            path: path.to_owned(),
            size,
            block_device,
            zeros,
            zeros_offset,
            flush_error: AtomicI32::new(0),
        })
    }

    /// fdatasync, failing for ever once one failed (see `flush_error`).
    fn sync(&self) -> io::Result<()> {
        let seen = self.flush_error.load(Ordering::Acquire);
        if seen != 0 {
            return Err(io::Error::from_raw_os_error(seen));
        }
        self.file.sync_data().map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            self.flush_error.store(errno, Ordering::Release);
            e
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn zero_buf(&self) -> &[u8] {
        &self.zeros[self.zeros_offset..self.zeros_offset + ZERO_CHUNK]
    }

    fn write_zeros(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(ZERO_CHUNK as u64) as usize;
            self.file.write_all_at(&self.zero_buf()[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on an fd we own; no memory involved.
        let r = unsafe {
            libc::fallocate64(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off64_t,
                len as libc::off64_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn blk_range(&self, discard: bool, offset: u64, len: u64) -> io::Result<()> {
        let range = [offset, len];
        let fd = self.file.as_raw_fd();
        // SAFETY: range is a valid [u64; 2] for the kernel to read.
        errno_of(unsafe {
            if discard {
                blk_discard(fd, &range)
            } else {
                blk_zeroout(fd, &range)
            }
        })
    }
}

impl Backend for FileBackend {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                // Past the end of a file shrunk behind our back: zeros, like a hole.
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_range(self.size, offset, data.len() as u64)?;
        self.file.write_all_at(data, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.sync()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        let r = if self.block_device {
            self.blk_range(true, offset, len)
        } else {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match r {
            // Discarded data must not come back: write zeros where we cannot punch.
            Err(e) if unsupported(&e) => self.write_zeros(offset, len),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        let r = if self.block_device {
            self.blk_range(false, offset, len)
        } else {
            self.fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len)
        };
        match r {
            Err(e) if unsupported(&e) => self.write_zeros(offset, len),
            r => r,
        }
    }

    fn finish(&self) -> Result<(), BackendError> {
        self.sync()
            .map_err(io_err("final fdatasync of", &self.path))
    }

    /// Bytes allocated on disk (a sparse image uses less than its size); for a
    /// block device, its size.
    fn used_bytes(&self) -> u64 {
        if self.block_device {
            return self.size;
        }
        match self.file.metadata() {
            Ok(m) => m.blocks() * 512,
            Err(e) => {
                warn!("stat {}: {e}", self.path.display());
                0
            }
        }
    }
}
