//! The request path: one worker thread per hardware queue, each looping on SERVE
//! (answer the previous batch and fetch the next in one call) until the device is
//! gone.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::errno::Errno;
use serde::Serialize;

use crate::backend::Backend;
use crate::device::{Control, DeviceInfo, ServerFd};
use crate::error::DeviceError;
use crate::uapi::*;

/// How long one SERVE call sleeps when idle. Long enough to cost nothing, short
/// enough that a worker notices a stop request without a device event.
const WAIT_MS: u32 = 1000;

/// `prctl` option from <linux/prctl.h> (Linux 5.6); not in the libc crate.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Locks the process's memory as it is touched and marks it an I/O flusher, so
/// serving a write never waits on reclaim that waits on that very write. Failures
/// are logged, not fatal: the service still works, with that deadlock risk.
pub fn prepare_process() {
    // SAFETY: mlockall has no memory-safety preconditions.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if r != 0 {
        warn!("mlockall: {}", io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
    if r != 0 {
        warn!("prctl(PR_SET_IO_FLUSHER): {}", io::Error::last_os_error());
    }
}

/// What the workers served, since the service started.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub fua: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub errors: AtomicU64,
}

/// A copy of [`Stats`] for the status report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub fua: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            reads: g(&self.reads),
            writes: g(&self.writes),
            flushes: g(&self.flushes),
            fua: g(&self.fua),
            discards: g(&self.discards),
            write_zeroes: g(&self.write_zeroes),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            errors: g(&self.errors),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Logs backend errors at most once a second, counting what it held back, so a
/// failing SD card cannot flood the log at request rate.
#[derive(Default)]
pub struct RateLimit {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    pub fn error(&self, msg: impl FnOnce() -> String) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        match st.0 {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => st.1 += 1,
            _ => {
                let held = std::mem::take(&mut st.1);
                st.0 = Some(now);
                if held > 0 {
                    error!("{} ({held} more errors not shown)", msg());
                } else {
                    error!("{}", msg());
                }
            }
        }
    }
}

fn op_name(op: u32) -> &'static str {
    match op {
        USRBD_OP_READ => "read",
        USRBD_OP_WRITE => "write",
        USRBD_OP_FLUSH => "flush",
        USRBD_OP_DISCARD => "discard",
        USRBD_OP_WRITE_ZEROES => "write_zeroes",
        _ => "unknown op",
    }
}

/// Serves one request against the backend; returns the answer's result (0 or a
/// negative errno). `slot` is the tag's data buffer, `len` bytes (None if the
/// request does not fit it).
pub fn execute(
    backend: &dyn Backend,
    req: &usrbd_request,
    slot: Option<&mut [u8]>,
    stats: &Stats,
    limit: &RateLimit,
) -> i32 {
    let len = u64::from(req.len);
    let res: io::Result<()> = match (req.op, slot) {
        (USRBD_OP_READ, Some(buf)) => backend.read(req.offset, buf).map(|()| {
            bump(&stats.reads, 1);
            bump(&stats.bytes_read, len);
        }),
        (USRBD_OP_WRITE, Some(buf)) => backend
            .write(req.offset, buf)
            .and_then(|()| {
                if req.flags & USRBD_REQ_FUA != 0 {
                    bump(&stats.fua, 1);
                    backend.flush()
                } else {
                    Ok(())
                }
            })
            .map(|()| {
                bump(&stats.writes, 1);
                bump(&stats.bytes_written, len);
            }),
        (USRBD_OP_FLUSH, _) => backend.flush().map(|()| bump(&stats.flushes, 1)),
        (USRBD_OP_DISCARD, _) => backend
            .discard(req.offset, len)
            .map(|()| bump(&stats.discards, 1)),
        (USRBD_OP_WRITE_ZEROES, _) => backend
            .write_zeroes(req.offset, len, req.flags & USRBD_REQ_NOUNMAP == 0)
            .map(|()| bump(&stats.write_zeroes, 1)),
        (USRBD_OP_READ | USRBD_OP_WRITE, None) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        _ => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            bump(&stats.errors, 1);
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            limit.error(|| {
                format!(
                    "{} backend: {} of {} bytes at {}: {e}",
                    backend.kind(),
                    op_name(req.op),
                    req.len,
                    req.offset
                )
            });
            -errno
        }
    }
}

/// Called once per served batch (drives the activity LED).
pub type ActivityHook = Arc<dyn Fn() + Send + Sync>;

/// The queues of a device, as created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub queues: u32,
    pub depth: u32,
    pub max_io: u32,
}

/// The running workers of one device.
pub struct Workers {
    threads: Vec<JoinHandle<Result<(), String>>>,
    stop: Arc<AtomicBool>,
}

impl Workers {
    /// Attaches one server per queue (all or nothing) and starts a thread for each.
    pub fn start(
        ctrl: &Control,
        dev: &DeviceInfo,
        geo: &Geometry,
        backend: Arc<dyn Backend>,
        stats: Arc<Stats>,
        activity: ActivityHook,
    ) -> Result<Workers, DeviceError> {
        let mut fds = Vec::with_capacity(geo.queues as usize);
        for q in 0..geo.queues {
            fds.push(ctrl.attach(dev.index, q, geo.depth, geo.max_io)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let limit = Arc::new(RateLimit::default());
        let mut threads = Vec::with_capacity(fds.len());
        for fd in fds {
            let w = Worker {
                fd,
                depth: geo.depth,
                backend: Arc::clone(&backend),
                stats: Arc::clone(&stats),
                activity: Arc::clone(&activity),
                stop: Arc::clone(&stop),
                limit: Arc::clone(&limit),
            };
            let name = format!("{}-q{}", dev.name, w.fd.queue());
            let t = thread::Builder::new()
                .name(name)
                .spawn(move || w.run())
                .map_err(|e| DeviceError::Ioctl {
                    op: "starting a worker thread".into(),
                    errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)),
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(Workers { threads, stop })
    }

    /// True once every worker has returned (device gone or failed).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Asks the workers to return at their next wake-up without a device event.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits for every worker; the first failure, if any.
    pub fn join(self) -> Result<(), String> {
        let mut first = Ok(());
        for t in self.threads {
            let name = t.thread().name().unwrap_or("worker").to_owned();
            let r = match t.join() {
                Ok(r) => r,
                Err(_) => Err(format!("{name} panicked")),
            };
            if let Err(e) = r {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

struct Worker {
    fd: ServerFd,
    depth: u32,
    backend: Arc<dyn Backend>,
    stats: Arc<Stats>,
    activity: ActivityHook,
    stop: Arc<AtomicBool>,
    limit: Arc<RateLimit>,
}

impl Worker {
    fn run(mut self) -> Result<(), String> {
        let batch = self.depth.min(USRBD_MAX_BATCH) as usize;
        let mut reqs = vec![usrbd_request::default(); batch];
        let mut answers: Vec<usrbd_completion> = Vec::with_capacity(batch);
        let q = self.fd.queue();
        debug!("queue {q}: worker started");
        loop {
            let served = match self.fd.serve(&answers, &mut reqs, WAIT_MS) {
                Ok(s) => s,
                Err(e) if e.errno == Errno::EINTR => continue,
                Err(e) if e.errno == Errno::EINVAL => {
                    // The module refused answer number `completed` (the ones
                    // before it were applied): drop it and resend the rest.
                    let bad = (e.completed as usize).min(answers.len());
                    error!("queue {q}: module rejected answer {:?}", answers.get(bad));
                    answers.drain(..(bad + 1).min(answers.len()));
                    continue;
                }
                Err(e) => {
                    let msg = format!("queue {q}: SERVE failed: {}", e.errno);
                    error!("{msg}");
                    return Err(msg);
                }
            };
            answers.clear();
            if served.events & USRBD_EV_GONE != 0 {
                info!("queue {q}: device gone, worker done");
                return Ok(());
            }
            let n = served.requests as usize;
            if n == 0 {
                if self.stop.load(Ordering::Acquire) {
                    debug!("queue {q}: stopped");
                    return Ok(());
                }
                continue;
            }
            for r in &reqs[..n] {
                let slot = match r.op {
                    USRBD_OP_READ | USRBD_OP_WRITE => self.fd.slot(r.tag, r.len),
                    _ => None,
                };
                let result = execute(&*self.backend, r, slot, &self.stats, &self.limit);
                answers.push(usrbd_completion {
                    tag: r.tag,
                    op: r.op,
                    result,
                    len: r.len,
                });
            }
            (self.activity)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BackendError;
    use std::sync::atomic::AtomicU32;

    /// Counts flushes; writes beyond `full_at` fail with ENOSPC.
    #[derive(Default)]
    struct Probe {
        flushes: AtomicU32,
        full_at: u64,
    }

    impl Backend for Probe {
        fn kind(&self) -> &'static str {
            "probe"
        }
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read(&self, _: u64, buf: &mut [u8]) -> io::Result<()> {
            buf.fill(9);
            Ok(())
        }
        fn write(&self, off: u64, _: &[u8]) -> io::Result<()> {
            if off >= self.full_at {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
            Ok(())
        }
        fn finish(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn used_bytes(&self) -> u64 {
            0
        }
    }

    fn req(op: u32, flags: u32, offset: u64) -> usrbd_request {
        usrbd_request {
            tag: 0,
            op,
            flags,
            len: 4096,
            offset,
        }
    }

    #[test]
    fn fua_write_is_flushed_before_the_answer() {
        let b = Probe {
            full_at: u64::MAX,
            ..Default::default()
        };
        let (st, rl) = (Stats::default(), RateLimit::default());
        let mut buf = vec![0u8; 4096];
        assert_eq!(
            execute(&b, &req(USRBD_OP_WRITE, 0, 0), Some(&mut buf), &st, &rl),
            0
        );
        assert_eq!(b.flushes.load(Ordering::Relaxed), 0);
        assert_eq!(
            execute(
                &b,
                &req(USRBD_OP_WRITE, USRBD_REQ_FUA, 0),
                Some(&mut buf),
                &st,
                &rl
            ),
            0
        );
        assert_eq!(b.flushes.load(Ordering::Relaxed), 1);
        let s = st.snapshot();
        assert_eq!((s.writes, s.fua, s.bytes_written), (2, 1, 8192));
    }

    #[test]
    fn backend_errors_are_answered_as_negative_errno() {
        let b = Probe {
            full_at: 4096,
            ..Default::default()
        };
        let (st, rl) = (Stats::default(), RateLimit::default());
        let mut buf = vec![0u8; 4096];
        let r = execute(&b, &req(USRBD_OP_WRITE, 0, 8192), Some(&mut buf), &st, &rl);
        assert_eq!(r, -libc::ENOSPC);
        assert_eq!(
            execute(&b, &req(99, 0, 0), None, &st, &rl),
            -libc::EOPNOTSUPP
        );
        assert_eq!(
            execute(&b, &req(USRBD_OP_READ, 0, 0), None, &st, &rl),
            -libc::EINVAL
        );
        assert_eq!(st.snapshot().errors, 3);
        assert_eq!(st.snapshot().writes, 0);
        assert_eq!(
            execute(&b, &req(USRBD_OP_READ, 0, 0), Some(&mut buf), &st, &rl),
            0
        );
        assert!(buf.iter().all(|x| *x == 9));
    }
}
