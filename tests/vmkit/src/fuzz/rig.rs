//! The fuzzer's test rig: its devices, a correct server for each of their
//! queues, I/O that keeps requests in flight, and raw ioctl plumbing.
//!
//! Each queue's SERVE calls are serialised by the queue's mutex, so
//! whoever holds it (the server thread or the fuzzer) knows exactly which
//! tags the kernel has handed out and not yet seen answered.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use usrbd::uapi::{self, usrbd_completion, usrbd_request, usrbd_serve};

/// An idle background server sleeps this long between polls, outside the
/// queue lock: sleeping inside SERVE would hold the lock the fuzzer needs.
const SERVER_IDLE: Duration = Duration::from_micros(200);

/// Applied answers each queue remembers, for the fuzzer to replay.
const ANSWERED_KEPT: usize = 64;

/// `_IOC` as asm-generic encodes it (x86, arm, arm64).
pub const fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | ((uapi::USRBD_IOCTL_MAGIC as u32) << 8) | nr
}
pub const IOC_WRITE: u32 = 1;
pub const IOC_READ: u32 = 2;

/// The real ioctls: name, number, on the control fd (else a server fd).
pub const REAL: [(&str, u32, bool); 7] = [
    ("VERSION", ioc(IOC_READ, 0x00, 32), true),
    ("CREATE", ioc(IOC_READ | IOC_WRITE, 0x01, 96), true),
    ("DESTROY", ioc(IOC_WRITE, 0x02, 16), true),
    ("LIST", ioc(IOC_READ, 0x03, 1032), true),
    ("STATUS", ioc(IOC_READ | IOC_WRITE, 0x04, 272), true),
    ("ATTACH", ioc(IOC_WRITE, 0x05, 32), true),
    ("SERVE", ioc(IOC_READ | IOC_WRITE, 0x10, 40), false),
];
pub const VERSION: u32 = REAL[0].1;
pub const CREATE: u32 = REAL[1].1;
pub const DESTROY: u32 = REAL[2].1;
pub const LIST: u32 = REAL[3].1;
pub const STATUS: u32 = REAL[4].1;
pub const ATTACH: u32 = REAL[5].1;
pub const SERVE: u32 = REAL[6].1;

// The numbers above are the ones the service library uses.
const _: () = {
    let mut i = 0;
    while i < REAL.len() {
        assert!(REAL[i].1 == uapi::IOCTLS[i].1);
        i += 1;
    }
};

/// Issues an ioctl with any number and argument; returns its result.
pub fn raw_ioctl(fd: RawFd, number: u32, arg: usize) -> Result<i32, Errno> {
    // SAFETY: the caller passes an argument the kernel may read or write
    // as the number's size says, or a deliberately bad address the kernel
    // must refuse; either way no Rust reference is aliased.
    Errno::result(unsafe { libc::ioctl(fd, number as _, arg) })
}

/// The control device, opened as every tool here needs it.
pub fn open_control() -> Result<OwnedFd> {
    let path = format!("/dev/{}", uapi::USRBD_CONTROL_NAME);
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("opening {path} (is usrbd.ko loaded?)"))?
        .into())
}

pub fn ioctl_struct<T>(fd: RawFd, number: u32, arg: &mut T) -> Result<i32, Errno> {
    raw_ioctl(fd, number, arg as *mut T as usize)
}

/// Addresses the kernel must refuse to read or write.
pub struct BadMemory {
    map: *mut libc::c_void,
    page: usize,
}

// SAFETY: the mapping is only ever handed to the kernel as an address.
unsafe impl Send for BadMemory {}
unsafe impl Sync for BadMemory {}

impl BadMemory {
    /// Maps one writable page followed by one inaccessible page.
    pub fn new() -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).context("page size")?;
        // SAFETY: a fresh anonymous mapping, owned by this struct.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap");
        }
        let bad = Self { map, page };
        // SAFETY: the second page lies inside the mapping made above.
        if unsafe { libc::mprotect(bad.inaccessible() as *mut _, page, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error()).context("mprotect");
        }
        Ok(bad)
    }

    pub fn inaccessible(&self) -> usize {
        self.map as usize + self.page
    }

    /// An address whose first `readable` bytes are accessible and the rest not.
    pub fn straddle(&self, readable: usize, fill: &[u8]) -> usize {
        let start = self.inaccessible() - readable;
        let n = readable.min(fill.len());
        // SAFETY: [start, start + n) lies in the writable first page.
        unsafe { std::ptr::copy_nonoverlapping(fill.as_ptr(), start as *mut u8, n) };
        start
    }
}

impl Drop for BadMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this struct made.
        unsafe { libc::munmap(self.map, 2 * self.page) };
    }
}

/// A kernel-half address: refused by access_ok on every 64-bit kernel.
pub const KERNEL_ADDR: u64 = 0xffff_8880_0000_0000;
/// Not canonical on x86_64; outside the user range on arm64.
pub const NONCANONICAL_ADDR: u64 = 0x8000_0000_0000_0000;

/// A request fetched and processed, whose answer is not yet given.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub req: usrbd_request,
    pub answer: usrbd_completion,
}

pub struct QueueState {
    /// Request data for tag T lives at T * max_io; the kernel writes into
    /// it during SERVE, which only runs while this state is locked.
    buf: Box<[u8]>,
    pub pending: Vec<Pending>,
    /// The last answers the kernel applied (their cookies are spent).
    pub answered: Vec<usrbd_completion>,
    pub gone: bool,
}

pub struct Queue {
    pub index: u32,
    pub fd: OwnedFd,
    state: Mutex<QueueState>,
    /// Fuzzer calls waiting for the lock: the server steps aside for them
    /// (a mutex is not fair, and the server would win every time).
    wanted: AtomicU32,
}

impl Queue {
    /// The fuzzer's way in.
    pub fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.wanted.fetch_add(1, Ordering::SeqCst);
        let guard = self.lock_server();
        self.wanted.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    fn lock_server(&self) -> MutexGuard<'_, QueueState> {
        // A poisoned lock means a thread panicked; its state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What went wrong while keeping the devices healthy.
#[derive(Default)]
pub struct Health {
    problems: Mutex<Vec<String>>,
}

impl Health {
    pub fn report(&self, what: String) {
        log::error!("{what}");
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct DeviceSpec {
    pub name: &'static str,
    pub size: u64,
    pub queues: u32,
    pub depth: u32,
    pub max_io: u32,
    pub flags: u32,
}

pub fn create_struct(spec: &DeviceSpec) -> Result<uapi::usrbd_create> {
    Ok(uapi::usrbd_create {
        abi_version: uapi::USRBD_ABI_VERSION,
        index: uapi::USRBD_INDEX_AUTO,
        name: uapi::name_to_c(spec.name).context("device name too long")?,
        size: spec.size,
        logical_block_size: 512,
        physical_block_size: 4096,
        nr_queues: spec.queues,
        queue_depth: spec.depth,
        max_io_bytes: spec.max_io,
        timeout_ms: 10_000,
        flags: spec.flags,
        reserved: [0; 5],
    })
}

/// A device created by the fuzzer; served when it has queues attached.
pub struct Device {
    pub index: u32,
    pub name: String,
    pub size: u64,
    pub depth: u32,
    pub max_io: u32,
    pub nr_queues: u32,
    pub queues: Vec<Arc<Queue>>,
    store: Mutex<Vec<u8>>,
}

impl Device {
    /// Creates the device; with `serve`, attaches every queue.
    pub fn create(ctl: RawFd, spec: &DeviceSpec, serve: bool) -> Result<Self> {
        Self::create_with_timeout(ctl, spec, serve, 10_000)
    }

    pub fn create_with_timeout(
        ctl: RawFd,
        spec: &DeviceSpec,
        serve: bool,
        timeout_ms: u32,
    ) -> Result<Self> {
        let mut c = create_struct(spec)?;
        c.timeout_ms = timeout_ms;
        ioctl_struct(ctl, CREATE, &mut c).with_context(|| format!("creating {}", spec.name))?;
        let mut dev = Self {
            index: c.index,
            name: uapi::name_from_c(&c.name),
            size: spec.size,
            depth: spec.depth,
            max_io: spec.max_io,
            nr_queues: spec.queues,
            queues: Vec::new(),
            store: Mutex::new(vec![0u8; spec.size as usize]),
        };
        if serve {
            for q in 0..spec.queues {
                let buf = vec![0u8; (spec.depth * spec.max_io) as usize].into_boxed_slice();
                let fd = attach(ctl, dev.index, q, buf.as_ptr() as u64, buf.len() as u64)
                    .with_context(|| format!("attaching {} queue {q}", dev.name))?;
                dev.queues.push(Arc::new(Queue {
                    index: q,
                    fd,
                    state: Mutex::new(QueueState {
                        buf,
                        pending: Vec::new(),
                        answered: Vec::new(),
                        gone: false,
                    }),
                    wanted: AtomicU32::new(0),
                }));
            }
        }
        Ok(dev)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/{}", self.name))
    }

    fn store(&self) -> MutexGuard<'_, Vec<u8>> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out a fetched request on the store and prepares its answer.
    pub fn process(&self, st: &mut QueueState, req: usrbd_request, health: &Health) -> Pending {
        let mut answer = usrbd_completion {
            tag: req.tag,
            op: req.op,
            result: 0,
            len: req.len,
            cookie: req.cookie,
        };
        let end = req.offset.checked_add(u64::from(req.len));
        let in_range = end.is_some_and(|e| e <= self.size);
        let data_op = matches!(req.op, uapi::USRBD_OP_READ | uapi::USRBD_OP_WRITE);
        let sane = req.tag < self.depth
            && (req.op == uapi::USRBD_OP_FLUSH || in_range)
            && (!data_op || req.len <= self.max_io)
            && req.op < uapi::USRBD_OP_COUNT as u32;
        if !sane {
            health.report(format!(
                "{}: kernel handed out a malformed request {req:?}",
                self.name
            ));
            answer.result = -libc::EIO;
            return Pending { req, answer };
        }
        let (off, len) = (req.offset as usize, req.len as usize);
        let slot = req.tag as usize * self.max_io as usize;
        let mut store = self.store();
        match req.op {
            uapi::USRBD_OP_READ => {
                st.buf[slot..slot + len].copy_from_slice(&store[off..off + len]);
            }
            uapi::USRBD_OP_WRITE => {
                store[off..off + len].copy_from_slice(&st.buf[slot..slot + len]);
            }
            uapi::USRBD_OP_DISCARD | uapi::USRBD_OP_WRITE_ZEROES => {
                store[off..off + len].fill(0);
            }
            _ => {}
        }
        Pending { req, answer }
    }

    /// One SERVE: answer everything pending, then fetch up to `max`.
    /// Returns how many requests were fetched.
    pub fn serve_once(
        &self,
        q: &Queue,
        st: &mut QueueState,
        max: u32,
        wait_ms: u32,
        health: &Health,
    ) -> Result<u32, Errno> {
        let answers: Vec<usrbd_completion> = st.pending.iter().map(|p| p.answer).collect();
        let mut reqs = vec![usrbd_request::default(); max as usize];
        let mut s = usrbd_serve {
            completions: answers.as_ptr() as u64,
            requests: reqs.as_mut_ptr() as u64,
            nr_completions: answers.len() as u32,
            max_requests: max,
            wait_ms,
            ..Default::default()
        };
        let result = ioctl_struct(q.fd.as_raw_fd(), SERVE, &mut s);
        let applied = (s.nr_completed as usize).min(answers.len());
        st.pending.drain(..applied);
        st.answered.extend_from_slice(&answers[..applied]);
        let old = st.answered.len().saturating_sub(ANSWERED_KEPT);
        st.answered.drain(..old);
        if let Err(e) = result {
            if e == Errno::EINVAL && !st.pending.is_empty() {
                // The kernel no longer holds this one (it timed out): drop it.
                let dropped = st.pending.remove(0);
                health.report(format!(
                    "{} queue {}: correct answer refused: {:?}",
                    self.name, q.index, dropped.req
                ));
            }
            return Err(e);
        }
        if s.events & uapi::USRBD_EV_GONE != 0 {
            st.gone = true;
        }
        let n = s.nr_requests.min(max);
        for req in &reqs[..n as usize] {
            let p = self.process(st, *req, health);
            st.pending.push(p);
        }
        Ok(n)
    }

    /// Keeps serving one queue until the device is gone or `stop` is set.
    pub fn spawn_server(
        self: &Arc<Self>,
        q: usize,
        stop: Arc<AtomicBool>,
        health: Arc<Health>,
    ) -> JoinHandle<()> {
        let dev = Arc::clone(self);
        std::thread::spawn(move || {
            let queue = Arc::clone(&dev.queues[q]);
            while !stop.load(Ordering::Relaxed) {
                let mut st = queue.lock_server();
                if st.gone {
                    break;
                }
                let idle = match dev.serve_once(&queue, &mut st, dev.depth, 0, &health) {
                    Ok(n) => n == 0 && st.pending.is_empty(),
                    Err(Errno::EINTR) | Err(Errno::EINVAL) => false,
                    Err(e) => {
                        health.report(format!("{} queue {q}: SERVE failed: {e}", dev.name));
                        break;
                    }
                };
                drop(st);
                if idle {
                    std::thread::sleep(SERVER_IDLE);
                }
                while queue.wanted.load(Ordering::SeqCst) > 0 {
                    std::thread::yield_now();
                }
            }
        })
    }

    /// Compares the device's contents (read through the block device) with
    /// data written through it, and with the server's store.
    pub fn data_check(&self, seed: u64) -> Result<()> {
        let file = open_direct(&self.path())?;
        let len = (self.size / 4).min(4 << 20) as usize;
        let mut rng = fastrand::Rng::with_seed(seed);
        let offset = rng.u64(0..(self.size - len as u64) / 4096) * 4096;
        let mut data = AlignedBuf::new(len);
        rng.fill(data.bytes_mut());
        file.write_all_at(data.bytes(), offset)
            .with_context(|| format!("writing {}", self.path().display()))?;
        file.sync_data()
            .with_context(|| format!("flushing {}", self.path().display()))?;
        let mut back = AlignedBuf::new(len);
        file.read_exact_at(back.bytes_mut(), offset)
            .with_context(|| format!("reading {}", self.path().display()))?;
        if back.bytes() != data.bytes() {
            bail!("{}: read back differs from what was written", self.name);
        }
        let store = self.store();
        if &store[offset as usize..offset as usize + len] != data.bytes() {
            bail!(
                "{}: the server's store differs from what was written",
                self.name
            );
        }
        Ok(())
    }
}

/// SERVE's argument: hands `answers` back and fetches up to `reqs.len()`
/// requests into `reqs`, sleeping at most `wait_ms` for one.
pub fn serve_args(
    answers: &[usrbd_completion],
    reqs: &mut [usrbd_request],
    wait_ms: u32,
) -> usrbd_serve {
    usrbd_serve {
        completions: answers.as_ptr() as u64,
        requests: reqs.as_mut_ptr() as u64,
        nr_completions: answers.len() as u32,
        max_requests: reqs.len() as u32,
        wait_ms,
        ..Default::default()
    }
}

pub fn attach(ctl: RawFd, index: u32, queue: u32, addr: u64, len: u64) -> Result<OwnedFd, Errno> {
    let mut a = uapi::usrbd_attach {
        index,
        queue,
        buf_addr: addr,
        buf_len: len,
        ..Default::default()
    };
    let fd = ioctl_struct(ctl, ATTACH, &mut a)?;
    // SAFETY: ATTACH returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn destroy(ctl: RawFd, index: u32, force: bool) -> Result<(), Errno> {
    let mut d = uapi::usrbd_destroy {
        index,
        flags: if force { uapi::USRBD_DESTROY_FORCE } else { 0 },
        timeout_ms: 10_000,
        reserved: 0,
    };
    ioctl_struct(ctl, DESTROY, &mut d).map(|_| ())
}

/// Page-aligned memory for O_DIRECT.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + 4096];
        let start = storage.as_ptr().align_offset(4096);
        Self {
            storage,
            start,
            len,
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

pub fn open_direct(path: &std::path::Path) -> Result<File> {
    let deadline = Instant::now() + Duration::from_secs(5);
    // devtmpfs creates the node shortly after the disk is added.
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Writes and reads back random extents of the device until `stop`: keeps
/// requests in flight while the fuzzer runs, and checks that no malformed
/// call disturbed them.
pub fn spawn_io(
    dev: &Arc<Device>,
    seed: u64,
    stop: Arc<AtomicBool>,
    health: Arc<Health>,
) -> Result<JoinHandle<u64>> {
    let file = open_direct(&dev.path())?;
    let dev = Arc::clone(dev);
    Ok(std::thread::spawn(move || {
        let mut rng = fastrand::Rng::with_seed(seed);
        let area = dev.size.min(8 << 20) / 4096;
        let mut buf = AlignedBuf::new(128 << 10);
        let mut back = AlignedBuf::new(128 << 10);
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) {
            // Up to 128 KiB: larger than A's max_io, so some extents
            // become several requests in flight at once.
            let blocks = rng.u64(1..=32).min(area);
            let offset = rng.u64(0..=area - blocks) * 4096;
            let len = (blocks * 4096) as usize;
            rng.fill(&mut buf.bytes_mut()[..len]);
            let result = file
                .write_all_at(&buf.bytes()[..len], offset)
                .and_then(|()| file.read_exact_at(&mut back.bytes_mut()[..len], offset))
                .and_then(|()| {
                    if done % 16 == 0 {
                        file.sync_data()
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = result {
                health.report(format!("{}: I/O at {offset}+{len} failed: {e}", dev.name));
                break;
            }
            if back.bytes()[..len] != buf.bytes()[..len] {
                health.report(format!(
                    "{}: read back of {offset}+{len} differs from what was written",
                    dev.name
                ));
                break;
            }
            done += 1;
            // Enough to keep requests coming; the CPU is for the fuzzer.
            std::thread::sleep(Duration::from_millis(1));
        }
        done
    }))
}
