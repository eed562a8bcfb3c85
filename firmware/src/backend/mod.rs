//! Where the data lives: [`ram::RamBackend`] or [`file::FileBackend`].
//!
//! Workers call a backend from several threads at once, so every method takes
//! `&self`. Per-request methods return `io::Error`; the worker answers its errno to
//! the kernel. Offsets and lengths have already been checked by the module against
//! the device size; backends check again and answer EINVAL rather than trust it.

pub mod file;
pub mod ram;

use std::io;

use crate::error::BackendError;

/// A backend's bytes in this process's memory: device offset `o` is at `addr + o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub addr: u64,
    pub len: u64,
}

pub trait Backend: Send + Sync {
    /// `"ram"` or `"file"`.
    fn kind(&self) -> &'static str;
    /// Bytes the device exposes.
    fn size(&self) -> u64;
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable (FLUSH, and after a FUA write).
    fn flush(&self) -> io::Result<()>;
    /// Forgets a range; it reads back as zeros.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Zeroes a range; `unmap` allows freeing the space (no REQ_NOUNMAP).
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The last step of a detach, once no request can arrive: fdatasync, or save
    /// the RAM image.
    fn finish(&self) -> Result<(), BackendError>;
    /// Memory (ram) or disk space (file) the data occupies now.
    fn used_bytes(&self) -> u64;
    /// Where the device's bytes live in this process, if they all do (ram): the
    /// module then copies request data straight between the bio and this memory,
    /// and READ and WRITE need no work here. Valid as long as the backend lives.
    fn memory(&self) -> Option<Memory> {
        None
    }
}

/// EINVAL unless `[offset, offset + len)` lies inside a device of `size` bytes.
pub(crate) fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// The MMU page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}
