//! The RAM backend: the device's bytes in one anonymous mapping, optionally loaded
//! from and saved to an image file.
//!
//! Why one `MAP_NORESERVE` anonymous mapping rather than a table of boxed pages: the
//! kernel's own page tables then are the sparse page table. A page never written
//! costs nothing (reads of it see the shared zero page), DISCARD and WRITE_ZEROES
//! hand whole pages back with `MADV_DONTNEED`, and the module copies request data
//! straight between the bio and the mapping ([`Backend::memory`], a linear attach),
//! so READ and WRITE cost this process no copy at all. The mapping is `munlock`ed
//! after the service's `mlockall(MCL_FUTURE)`: locked pages would be pinned as they
//! fault in and `MADV_DONTNEED` refuses locked ranges, so discarded data would never
//! be freed.
//!
//! Overlapping requests in flight at once are unordered on any block device; the
//! block layer does not serialize them, and neither do we: bytes are moved only by
//! the module or with raw-pointer copies, never through references into the mapping.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use log::{info, warn};
use nix::errno::Errno;

use super::{check_range, page_size, Backend, Memory};
use crate::error::BackendError;

/// Image files are read and written in chunks of this many bytes.
const CHUNK: usize = 1 << 20;

struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; concurrent access goes through raw-pointer
// copies only (see the module comment).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this struct owns.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct RamBackend {
    map: Mapping,
    size: u64,
    page: usize,
    image: Option<PathBuf>,
    /// The filesystem (st_dev) of the image's directory at start: a save
    /// must not land on a filesystem mounted over it later.
    image_fs: Option<u64>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |source| BackendError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn is_zero(b: &[u8]) -> bool {
    // Compare in u64 words where aligned; this runs over every saved and loaded page.
    // SAFETY: align_to yields a valid u64 view of the aligned middle part.
    let (head, mid, tail) = unsafe { b.align_to::<u64>() };
    head.iter().all(|x| *x == 0) && mid.iter().all(|x| *x == 0) && tail.iter().all(|x| *x == 0)
}

/// Logs progress at every further tenth of `total`.
struct Progress<'a> {
    what: &'a str,
    path: &'a Path,
    total: u64,
    next_tenth: u64,
}

impl<'a> Progress<'a> {
    fn new(what: &'a str, path: &'a Path, total: u64) -> Self {
        info!("{what} {}: {total} bytes", path.display());
        Progress {
            what,
            path,
            total,
            next_tenth: 1,
        }
    }

    fn at(&mut self, done: u64) {
        if self.total == 0 {
            return;
        }
        let tenths = done.saturating_mul(10) / self.total;
        if tenths >= self.next_tenth {
            info!("{} {}: {}%", self.what, self.path.display(), tenths * 10);
            self.next_tenth = tenths + 1;
        }
    }
}

impl RamBackend {
    /// Maps `size` bytes (or the image's size when `size` is `None`) and loads the
    /// image if it exists. Call after `mlockall` (see the module comment).
    pub fn open(size: Option<u64>, image: Option<&Path>, block: u32) -> Result<Self, BackendError> {
        let image_len = match image {
            Some(p) => match fs::metadata(p) {
                Ok(m) => Some(m.len()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("reading image", p)(e)),
            },
            None => None,
        };
        let size = match (size, image_len) {
            (Some(s), _) => s,
            (None, Some(l)) => l,
            (None, None) => return Err(BackendError::RamSizeRequired),
        };
        if size == 0 || size % u64::from(block) != 0 {
            return Err(BackendError::Unaligned { size, block });
        }
        if let (Some(p), Some(have)) = (image, image_len) {
            if have > size {
                return Err(BackendError::ImageTooLarge {
                    path: p.to_owned(),
                    have,
                    want: size,
                });
            }
        }
        let page = page_size();
        let len = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(page - 1))
            .map(|s| s / page * page)
            .ok_or(BackendError::Map {
                size,
                errno: Errno::ENOMEM,
            })?;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BackendError::Map {
                size,
                errno: Errno::last(),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(BackendError::Map {
            size,
            errno: Errno::ENOMEM,
        })?;
        let map = Mapping { ptr, len };
        // SAFETY: the range is exactly our mapping. Failure (nothing locked) is fine.
        unsafe { libc::munlock(map.ptr.as_ptr().cast(), map.len) };
        // Page-granular means 4 KiB pages: a transparent huge page would make
        // one small write cost 2 MiB and keep a discard from freeing anything.
        // SAFETY: as above; failure (no THP support) is fine.
        unsafe { libc::madvise(map.ptr.as_ptr().cast(), map.len, libc::MADV_NOHUGEPAGE) };
        let image_fs = match image {
            Some(p) => Some(dir_fs(&image_dir(p))?),
            None => None,
        };
        let ram = RamBackend {
            map,
            size,
            page,
            image: image.map(Path::to_owned),
            image_fs,
        };
        if let Some(p) = image {
            let dir = image_dir(p);
            remove_stale_temporaries(&dir, &temp_prefix(p));
            // The device may fill up: a save that cannot fit would keep the
            // data in RAM only, so refuse now rather than at the detach.
            let free = free_bytes(&dir)?;
            if free < size {
                return Err(BackendError::NoRoom {
                    dir,
                    free,
                    need: size,
                });
            }
            match image_len {
                Some(_) => ram.load(p)?,
                None => warn!(
                    "image {} does not exist: serving an empty device, saved there at detach",
                    p.display()
                ),
            }
        }
        Ok(ram)
    }

    /// Where device offset `offset` is. Computing the address is safe; the
    /// callers' `unsafe` blocks, which range-check first, dereference it.
    fn at(&self, offset: u64) -> *mut u8 {
        self.map.ptr.as_ptr().wrapping_add(offset as usize)
    }

    /// Gives whole pages in `[offset, offset + len)` back to the kernel; both are
    /// page-aligned.
    fn release(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: a page-aligned range inside our mapping; DONTNEED on private
        // anonymous memory makes it read back as zeros.
        let r = unsafe { libc::madvise(self.at(offset).cast(), len as usize, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// # Safety
    /// `[offset, offset + len)` lies inside the device.
    unsafe fn fill_zero(&self, offset: u64, len: u64) {
        std::ptr::write_bytes(self.at(offset), 0, len as usize);
    }

    /// Zeroes a range, releasing the whole pages in it when `release` is set.
    fn zero_range(&self, offset: u64, len: u64, release: bool) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        let page = self.page as u64;
        let end = offset + len;
        let first = offset.div_ceil(page) * page;
        let last = end / page * page;
        // SAFETY (all three): sub-ranges of the range checked above.
        if !release || first >= last {
            unsafe { self.fill_zero(offset, len) };
            return Ok(());
        }
        unsafe { self.fill_zero(offset, first - offset) };
        self.release(first, last - first)?;
        unsafe { self.fill_zero(last, end - last) };
        Ok(())
    }

    fn load(&self, path: &Path) -> Result<(), BackendError> {
        let f = File::open(path).map_err(io_err("opening image", path))?;
        let len = f.metadata().map_err(io_err("reading image", path))?.len();
        let mut progress = Progress::new("loading image", path, len);
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        while pos < len {
            let (data, hole) = match next_data(&f, pos, len) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(io_err("seeking image", path)(e)),
            };
            let mut off = data;
            while off < hole {
                let n = (hole - off).min(CHUNK as u64) as usize;
                f.read_exact_at(&mut buf[..n], off)
                    .map_err(io_err("reading image", path))?;
                for (i, pg) in buf[..n].chunks(self.page).enumerate() {
                    if !is_zero(pg) {
                        let at = off + (i * self.page) as u64;
                        // SAFETY: at + pg.len() <= len <= size, checked in open().
                        unsafe {
                            std::ptr::copy_nonoverlapping(pg.as_ptr(), self.at(at), pg.len())
                        };
                    }
                }
                off += n as u64;
                progress.at(off);
            }
            pos = hole;
        }
        info!("loaded image {}", path.display());
        Ok(())
    }

    /// Writes the device to `path` atomically: a temporary file in the same
    /// directory, zero pages left as holes, fsync, rename, fsync of the directory.
    fn save(&self, path: &Path) -> Result<(), BackendError> {
        let dir = image_dir(path);
        if self.image_fs != Some(dir_fs(&dir)?) {
            return Err(BackendError::ImageDirMoved { dir });
        }
        // The old image stays until the rename: the new one needs room beside
        // it. Checked first so a retry on a still full disk writes nothing.
        let need = self.used_bytes();
        let free = free_bytes(&dir)?;
        if free < need {
            return Err(BackendError::NoRoom { dir, free, need });
        }
        let tmp = dir.join(format!("{}{}", temp_prefix(path), std::process::id()));
        let res = self.write_image(&tmp).and_then(|()| {
            fs::rename(&tmp, path).map_err(io_err("renaming the saved image to", path))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing directory", &dir))
        });
        if res.is_err() {
            if let Err(e) = fs::remove_file(&tmp) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!("removing {}: {e}", tmp.display());
                }
            }
        }
        res?;
        info!("saved image {}", path.display());
        Ok(())
    }

    fn write_image(&self, tmp: &Path) -> Result<(), BackendError> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_err("creating", tmp))?;
        f.set_len(self.size).map_err(io_err("sizing", tmp))?;
        let mut progress = Progress::new("saving image", tmp, self.size);
        let mut off = 0u64;
        while off < self.size {
            let n = (self.size - off).min(CHUNK as u64) as usize;
            // SAFETY: [off, off + n) is inside the device; workers are stopped.
            let chunk = unsafe { std::slice::from_raw_parts(self.at(off), n) };
            let mut run: Option<(usize, usize)> = None;
            for (i, pg) in chunk.chunks(self.page).enumerate() {
                let start = i * self.page;
                if is_zero(pg) {
                    if let Some((s, e)) = run.take() {
                        f.write_all_at(&chunk[s..e], off + s as u64)
                            .map_err(io_err("writing", tmp))?;
                    }
                } else {
                    let end = start + pg.len();
                    run = Some(run.map_or((start, end), |(s, _)| (s, end)));
                }
            }
            if let Some((s, e)) = run {
                f.write_all_at(&chunk[s..e], off + s as u64)
                    .map_err(io_err("writing", tmp))?;
            }
            off += n as u64;
            progress.at(off);
        }
        f.sync_all().map_err(io_err("syncing", tmp))
    }
}

fn image_dir(image: &Path) -> PathBuf {
    match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `.<name>.tmp-`: the temporary file of a save is this plus the saver's pid.
fn temp_prefix(image: &Path) -> String {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    format!(".{name}.tmp-")
}

/// Removes what saves killed half-way left (they hold no data the image lacks:
/// the rename is the commit), so they do not eat the room a save needs.
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        match fs::remove_file(e.path()) {
            Ok(()) => warn!(
                "removed {}, left by an interrupted save",
                e.path().display()
            ),
            Err(err) => warn!("removing {}: {err}", e.path().display()),
        }
    }
}

fn dir_fs(dir: &Path) -> Result<u64, BackendError> {
    Ok(fs::metadata(dir)
        .map_err(io_err("reading the directory of the image", dir))?
        .dev())
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Result<u64, BackendError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| io_err("checking the free space of", dir)(io::Error::from(e)))?;
    // fsblkcnt_t and c_ulong are 32 bits wide on armv7.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// The next `[data, hole)` extent at or after `pos`, via SEEK_DATA/SEEK_HOLE; where
/// the filesystem cannot tell, all of `[pos, len)` is data.
fn next_data(f: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let seek = |off: u64, whence| {
        // SAFETY: lseek64 on an fd we own; no memory involved.
        let r = unsafe { libc::lseek64(fd, off as libc::off64_t, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let data = match seek(pos, libc::SEEK_DATA) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((pos, len))),
        Err(e) => return Err(e),
    };
    let hole = seek(data, libc::SEEK_HOLE)?.min(len);
    Ok(Some((data, hole)))
}

impl Backend for RamBackend {
    fn kind(&self) -> &'static str {
        "ram"
    }

    fn memory(&self) -> Option<Memory> {
        Some(Memory {
            addr: self.map.ptr.as_ptr() as usize as u64,
            len: self.map.len as u64,
        })
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        // SAFETY: range-checked; buf is a distinct allocation.
        unsafe { std::ptr::copy_nonoverlapping(self.at(offset), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Whole zero pages are released instead of copied, so a device full of
    /// written zeros (mkfs, dd if=/dev/zero) stays sparse.
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_range(self.size, offset, data.len() as u64)?;
        let page = self.page as u64;
        let mut pos = 0usize;
        let mut zero_run: Option<(u64, u64)> = None;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let n = ((abs / page + 1) * page - abs).min((data.len() - pos) as u64) as usize;
            let chunk = &data[pos..pos + n];
            if n == self.page && is_zero(chunk) {
                zero_run = Some(zero_run.map_or((abs, abs + page), |(s, _)| (s, abs + page)));
            } else {
                if let Some((s, e)) = zero_run.take() {
                    self.release(s, e - s)?;
                }
                // SAFETY: range-checked; data is a distinct allocation.
                unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), self.at(abs), n) };
            }
            pos += n;
        }
        if let Some((s, e)) = zero_run {
            self.release(s, e - s)?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        // RAM is as durable as it gets until the image is saved at detach.
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.zero_range(offset, len, unmap)
    }

    fn finish(&self) -> Result<(), BackendError> {
        match &self.image {
            Some(p) => self.save(p),
            None => Ok(()),
        }
    }

    /// Anonymous (not shared-zero-page) and swapped-out bytes of the mapping,
    /// from /proc/self/smaps; 0 if that cannot be read.
    fn used_bytes(&self) -> u64 {
        let start = format!("{:x}-", self.map.ptr.as_ptr() as usize);
        let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        let _header = lines.next();
        let mut kib = 0u64;
        for l in lines {
            // The next mapping's header line has no "Key:" form.
            let Some((key, rest)) = l.split_once(':') else {
                break;
            };
            if key.contains(' ') || key.contains('-') {
                break;
            }
            if key == "Anonymous" || key == "Swap" {
                kib += rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        kib * 1024
    }
}
