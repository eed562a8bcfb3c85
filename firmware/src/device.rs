//! Safe API over the control device (`/dev/usrbd-control`) and server fds.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use nix::errno::Errno;
use serde::Serialize;

use crate::backend::Memory;
use crate::error::DeviceError;
use crate::uapi::*;

/// Where the module's control device lives.
pub fn control_path() -> PathBuf {
    Path::new("/dev").join(USRBD_CONTROL_NAME)
}

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateParams {
    /// Disk name; empty lets the module name it `usrbdN`.
    pub name: String,
    pub size: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub queues: u32,
    pub queue_depth: u32,
    pub max_io: u32,
    pub timeout_ms: u32,
    /// `USRBD_F_*`.
    pub flags: u32,
}

/// A device the module created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub index: u32,
    pub name: String,
    pub size: u64,
}

impl DeviceInfo {
    pub fn path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
}

/// Device names the service accepts: the module's rule (ABI 2, kmod
/// lifecycle.c): `usrbd`, then more of `[a-z0-9_-]`, so no device squats another
/// driver's name (`sda`, `mmcblk0`). The module also takes an empty name (it
/// picks `usrbdN`), but the service needs the name for its socket and lock.
pub fn valid_name(name: &str) -> bool {
    name.starts_with("usrbd")
        && name.len() < USRBD_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub fn state_name(state: u32) -> &'static str {
    match state {
        USRBD_STATE_WAITING => "waiting",
        USRBD_STATE_LIVE => "live",
        USRBD_STATE_DRAINING => "draining",
        USRBD_STATE_DEAD => "dead",
        _ => "unknown",
    }
}

fn ioctl_err(op: &str, index: Option<u32>, errno: Errno) -> DeviceError {
    let op = match index {
        Some(i) => format!("{op} (device index {i})"),
        None => op.to_owned(),
    };
    DeviceError::Ioctl { op, errno }
}

/// An open control device.
pub struct Control {
    file: File,
}

impl Control {
    /// Opens `/dev/usrbd-control`.
    pub fn open() -> Result<Control, DeviceError> {
        Control::open_path(&control_path())
    }

    pub fn open_path(path: &Path) -> Result<Control, DeviceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| DeviceError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Control { file })
    }

    fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    pub fn version(&self) -> Result<usrbd_version, DeviceError> {
        let mut v = usrbd_version::default();
        // SAFETY: v is a valid, writable usrbd_version.
        unsafe { usrbd_ioc_version(self.fd(), &mut v) }
            .map_err(|e| ioctl_err("USRBD_IOC_VERSION", None, e))?;
        Ok(v)
    }

    /// Checks that the module speaks our ABI; returns its limits.
    pub fn check_version(&self) -> Result<usrbd_version, DeviceError> {
        let v = self.version()?;
        if v.abi_version != USRBD_ABI_VERSION {
            return Err(DeviceError::Abi {
                module: v.abi_version,
                ours: USRBD_ABI_VERSION,
            });
        }
        Ok(v)
    }

    pub fn create(&self, p: &CreateParams) -> Result<DeviceInfo, DeviceError> {
        let name = name_to_c(&p.name).ok_or_else(|| DeviceError::Name(p.name.clone()))?;
        let mut c = usrbd_create {
            abi_version: USRBD_ABI_VERSION,
            index: USRBD_INDEX_AUTO,
            name,
            size: p.size,
            logical_block_size: p.logical_block_size,
            physical_block_size: p.physical_block_size,
            nr_queues: p.queues,
            queue_depth: p.queue_depth,
            max_io_bytes: p.max_io,
            timeout_ms: p.timeout_ms,
            flags: p.flags,
            reserved: [0; 5],
        };
        // SAFETY: c is a valid usrbd_create, read and written by the kernel.
        unsafe { usrbd_ioc_create(self.fd(), &mut c) }
            .map_err(|e| ioctl_err(&format!("USRBD_IOC_CREATE `{}`", p.name), None, e))?;
        Ok(DeviceInfo {
            index: c.index,
            name: name_from_c(&c.name),
            size: c.size,
        })
    }

    /// Graceful destroy waits (up to `timeout_ms`, 0 = module default) for the
    /// in-flight requests to drain; forced fails what is left.
    pub fn destroy(&self, index: u32, force: bool, timeout_ms: u32) -> Result<(), DeviceError> {
        let d = usrbd_destroy {
            index,
            flags: if force { USRBD_DESTROY_FORCE } else { 0 },
            timeout_ms,
            reserved: 0,
        };
        // SAFETY: d is a valid usrbd_destroy.
        unsafe { usrbd_ioc_destroy(self.fd(), &d) }
            .map_err(|e| ioctl_err("USRBD_IOC_DESTROY", Some(index), e))?;
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<u32>, DeviceError> {
        let mut l = usrbd_list::default();
        // SAFETY: l is a valid, writable usrbd_list.
        unsafe { usrbd_ioc_list(self.fd(), &mut l) }
            .map_err(|e| ioctl_err("USRBD_IOC_LIST", None, e))?;
        let n = (l.count as usize).min(USRBD_MAX_DEVICES);
        Ok(l.index[..n].to_vec())
    }

    pub fn status(&self, index: u32) -> Result<usrbd_status, DeviceError> {
        let mut s = usrbd_status {
            index,
            ..Default::default()
        };
        // SAFETY: s is a valid usrbd_status, read and written by the kernel.
        unsafe { usrbd_ioc_status(self.fd(), &mut s) }
            .map_err(|e| ioctl_err("USRBD_IOC_STATUS", Some(index), e))?;
        Ok(s)
    }

    /// The status of every device, in index order.
    pub fn statuses(&self) -> Result<Vec<usrbd_status>, DeviceError> {
        let mut out = Vec::new();
        for i in self.list()? {
            match self.status(i) {
                Ok(s) => out.push(s),
                // Destroyed between LIST and STATUS.
                Err(e) if e.errno() == Some(Errno::ENODEV) || e.errno() == Some(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn find_by_name(&self, name: &str) -> Result<u32, DeviceError> {
        self.statuses()?
            .iter()
            .find(|s| name_from_c(&s.name) == name)
            .map(|s| s.index)
            .ok_or_else(|| DeviceError::NotFound(name.to_owned()))
    }

    /// Attaches a server to one hardware queue, with a fresh buffer of
    /// `depth * max_io` bytes (one slot per tag).
    pub fn attach(
        &self,
        index: u32,
        queue: u32,
        depth: u32,
        max_io: u32,
    ) -> Result<ServerFd, DeviceError> {
        let tags = TagBuffer::new(depth, max_io)?;
        let (addr, len) = (tags.ptr.as_ptr() as usize as u64, tags.len as u64);
        // SAFETY: the buffer lives in the returned ServerFd, which closes the fd
        // before unmapping it (fields drop in order).
        let fd = unsafe { self.attach_raw(index, queue, addr, len, 0)? };
        Ok(ServerFd {
            fd,
            buf: Some(tags),
            queue,
        })
    }

    /// Attaches a server to one hardware queue whose buffer is the whole device,
    /// `mem` (USRBD_ATTACH_LINEAR): the module copies request data straight between
    /// the bio and that memory.
    ///
    /// # Safety
    /// `mem` must stay mapped and writable until the returned fd is dropped.
    pub unsafe fn attach_linear(
        &self,
        index: u32,
        queue: u32,
        mem: Memory,
    ) -> Result<ServerFd, DeviceError> {
        // SAFETY: the caller keeps `mem` mapped for the fd's lifetime.
        let fd = unsafe { self.attach_raw(index, queue, mem.addr, mem.len, USRBD_ATTACH_LINEAR)? };
        Ok(ServerFd {
            fd,
            buf: None,
            queue,
        })
    }

    /// # Safety
    /// `[addr, addr + len)` must stay mapped and writable until the fd is dropped.
    unsafe fn attach_raw(
        &self,
        index: u32,
        queue: u32,
        addr: u64,
        len: u64,
        flags: u32,
    ) -> Result<OwnedFd, DeviceError> {
        let a = usrbd_attach {
            index,
            queue,
            buf_addr: addr,
            buf_len: len,
            flags,
            reserved: 0,
        };
        // SAFETY: a is a valid usrbd_attach; the caller keeps the memory it names.
        let fd = unsafe { usrbd_ioc_attach(self.fd(), &a) }
            .map_err(|e| ioctl_err(&format!("USRBD_IOC_ATTACH queue {queue}"), Some(index), e))?;
        // SAFETY: ATTACH returns a new fd that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// One page-aligned anonymous mapping holding every tag's data slot.
struct TagBuffer {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes per tag: the device's max_io.
    slot_len: u32,
}

// SAFETY: the mapping is owned by one ServerFd; only its owner touches it.
unsafe impl Send for TagBuffer {}

impl TagBuffer {
    fn new(depth: u32, max_io: u32) -> Result<TagBuffer, DeviceError> {
        let len = depth as usize * max_io as usize;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DeviceError::Buffer {
                len,
                errno: Errno::last(),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(DeviceError::Buffer {
            len,
            errno: Errno::ENOMEM,
        })?;
        Ok(TagBuffer {
            ptr,
            len,
            slot_len: max_io,
        })
    }
}

impl Drop for TagBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in new().
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// What one SERVE call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub completed: u32,
    pub requests: u32,
    pub events: u32,
}

/// A SERVE call that failed; `completed` answers before the failure were applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeError {
    pub errno: Errno,
    pub completed: u32,
}

/// A server fd bound to one device queue, with its tag buffer (none when the
/// buffer is the backend's memory, a linear attach).
pub struct ServerFd {
    // Declared before `buf`: the fd closes (kernel forgets the buffer) before unmap.
    fd: OwnedFd,
    buf: Option<TagBuffer>,
    queue: u32,
}

impl ServerFd {
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Applies `completions`, then fetches up to `requests.len()` requests, waiting
    /// up to `wait_ms` if none is queued.
    pub fn serve(
        &mut self,
        completions: &[usrbd_completion],
        requests: &mut [usrbd_request],
        wait_ms: u32,
    ) -> Result<Served, ServeError> {
        let mut s = usrbd_serve {
            completions: completions.as_ptr() as usize as u64,
            requests: requests.as_mut_ptr() as usize as u64,
            nr_completions: completions.len() as u32,
            max_requests: requests.len() as u32,
            wait_ms,
            ..Default::default()
        };
        // SAFETY: both arrays are valid for the lengths given and outlive the call;
        // the tag buffer is not borrowed while the kernel copies into or out of it
        // (serve takes &mut self).
        match unsafe { usrbd_ioc_serve(self.fd.as_raw_fd(), &mut s) } {
            Ok(_) => Ok(Served {
                completed: s.nr_completed,
                requests: s.nr_requests.min(requests.len() as u32),
                events: s.events,
            }),
            Err(errno) => Err(ServeError {
                errno,
                completed: s.nr_completed,
            }),
        }
    }

    /// True when the module moves request data to and from the backend's memory.
    pub fn is_linear(&self) -> bool {
        self.buf.is_none()
    }

    /// The data slot of `tag`, `len` bytes long; `None` if out of range or linear.
    pub fn slot(&mut self, tag: u32, len: u32) -> Option<&mut [u8]> {
        let buf = self.buf.as_ref()?;
        if len > buf.slot_len {
            return None;
        }
        let start = (tag as usize).checked_mul(buf.slot_len as usize)?;
        if start.checked_add(len as usize)? > buf.len {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked above); the kernel only touches
        // it inside serve(), which needs &mut self, so this borrow is exclusive.
        Some(unsafe { std::slice::from_raw_parts_mut(buf.ptr.as_ptr().add(start), len as usize) })
    }
}
