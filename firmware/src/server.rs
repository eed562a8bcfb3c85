//! The request path: one worker thread per hardware queue, each looping on SERVE
//! (answer the previous batch and fetch the next in one call) until the device is
//! gone.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::errno::Errno;
use serde::Serialize;

use crate::backend::{Backend, Memory};
use crate::device::{Control, DeviceInfo, ServerFd};
use crate::error::{DeviceError, WorkerError};
use crate::uapi::*;

/// How long one SERVE call sleeps when idle. Long enough to cost nothing, short
/// enough that a worker notices a stop request without a device event.
const WAIT_MS: u32 = 1000;

/// Request data a worker moves through the backend before it hands its answers
/// back: large requests are completed one by one, small ones in batches.
const ANSWER_BYTES: u64 = 256 << 10;

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

/// Logs a message at most once a second, counting what it held back, so a
/// failing SD card or a SERVE copy failing in a loop cannot flood the log at
/// request rate.
#[derive(Default)]
pub struct RateLimit {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    pub fn error(&self, msg: impl FnOnce() -> String) {
        self.log(log::Level::Error, msg);
    }

    pub fn warn(&self, msg: impl FnOnce() -> String) {
        self.log(log::Level::Warn, msg);
    }

    /// True if the message was logged, false if it was held back.
    fn log(&self, level: log::Level, msg: impl FnOnce() -> String) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        match st.0 {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                st.1 += 1;
                false
            }
            _ => {
                let held = std::mem::take(&mut st.1);
                st.0 = Some(now);
                if held > 0 {
                    log::log!(level, "{} ({held} more not shown)", msg());
                } else {
                    log::log!(level, "{}", msg());
                }
                true
            }
        }
    }
}

/// What a worker's next SERVE call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Hand the answers back and fetch up to `room` requests, sleeping up to
    /// `wait_ms` when none is queued.
    Serve { room: usize, wait_ms: u32 },
    /// Nothing held, every answer handed back: the fd may close without a
    /// request going back to the module's queue.
    Return,
}

/// The worker's loop, decided. Serving: fetch what fits, sleep only with
/// nothing left to serve. Stopping (a quiesce: the device goes to the next
/// server, e.g. an upgraded binary): fetch nothing more, serve what is held
/// and hand its answers back, then return; what arrives meanwhile waits in the
/// module's queue for the next server.
fn next_step(stopping: bool, batch: usize, pending: usize, answers: usize) -> Next {
    if !stopping {
        return Next::Serve {
            room: batch.saturating_sub(pending),
            wait_ms: if pending == 0 { WAIT_MS } else { 0 },
        };
    }
    if pending == 0 && answers == 0 {
        Next::Return
    } else {
        Next::Serve {
            room: 0,
            wait_ms: 0,
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

/// Where a READ or WRITE request's bytes are.
pub enum Payload<'a> {
    /// The tag's slot in the server buffer, `len` bytes.
    Slot(&'a mut [u8]),
    /// Already moved by the module, straight between the bio and the backend's
    /// memory (a linear attach): nothing left to copy.
    InPlace,
    /// The request does not fit the buffer.
    Missing,
}

/// Serves one request against the backend; returns the answer's result (0 or a
/// negative errno). `payload` is ignored for ops without data.
pub fn execute(
    backend: &dyn Backend,
    req: &usrbd_request,
    payload: Payload<'_>,
    stats: &Stats,
    limit: &RateLimit,
) -> i32 {
    let len = u64::from(req.len);
    let counted_write = |res: io::Result<()>| {
        res.and_then(|()| {
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
        })
    };
    let counted_read = |res: io::Result<()>| {
        res.map(|()| {
            bump(&stats.reads, 1);
            bump(&stats.bytes_read, len);
        })
    };
    let res: io::Result<()> = match (req.op, payload) {
        (USRBD_OP_READ, Payload::Slot(buf)) => counted_read(backend.read(req.offset, buf)),
        (USRBD_OP_READ, Payload::InPlace) => counted_read(Ok(())),
        (USRBD_OP_WRITE, Payload::Slot(buf)) => counted_write(backend.write(req.offset, buf)),
        (USRBD_OP_WRITE, Payload::InPlace) => counted_write(Ok(())),
        (USRBD_OP_FLUSH, _) => backend.flush().map(|()| bump(&stats.flushes, 1)),
        (USRBD_OP_DISCARD, _) => backend
            .discard(req.offset, len)
            .map(|()| bump(&stats.discards, 1)),
        (USRBD_OP_WRITE_ZEROES, _) => backend
            .write_zeroes(req.offset, len, req.flags & USRBD_REQ_NOUNMAP == 0)
            .map(|()| bump(&stats.write_zeroes, 1)),
        (USRBD_OP_READ | USRBD_OP_WRITE, Payload::Missing) => {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
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
    threads: Vec<JoinHandle<Result<(), WorkerError>>>,
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
        // A backend that keeps the device in memory gets it copied there by the
        // module itself, if this module can (an older one refuses the flag).
        let memory = backend.memory().filter(|_| {
            ctrl.version()
                .is_ok_and(|v| v.attach_flags & USRBD_ATTACH_LINEAR != 0)
        });
        let mut fds = Vec::with_capacity(geo.queues as usize);
        for q in 0..geo.queues {
            let fd = match memory {
                // SAFETY: the memory belongs to `backend`, which each Worker holds
                // (declared after its fd, so it outlives the fd).
                Some(mem) => unsafe { ctrl.attach_linear(dev.index, q, mem)? },
                None => ctrl.attach(dev.index, q, geo.depth, geo.max_io)?,
            };
            fds.push(fd);
        }
        if memory.is_some() {
            info!(
                "{}: {} backend attached linearly: the module copies straight into its memory",
                dev.name,
                backend.kind()
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let limit = Arc::new(RateLimit::default());
        let efault = Arc::new(RateLimit::default());
        let mut threads = Vec::with_capacity(fds.len());
        for fd in fds {
            let w = Worker {
                fd,
                index: dev.index,
                depth: geo.depth,
                max_io: geo.max_io,
                memory,
                backend: Arc::clone(&backend),
                stats: Arc::clone(&stats),
                activity: Arc::clone(&activity),
                stop: Arc::clone(&stop),
                limit: Arc::clone(&limit),
                efault: Arc::clone(&efault),
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

    /// Asks the workers to quiesce: fetch nothing more, answer what they hold,
    /// then return (an idle one once its SERVE wait, 1 s, ends).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits for every worker; the first failure, if any.
    pub fn join(self) -> Result<(), WorkerError> {
        let mut first = Ok(());
        for t in self.threads {
            let thread = t.thread().name().unwrap_or("worker").to_owned();
            let r = match t.join() {
                Ok(r) => r,
                Err(_) => Err(WorkerError::Panicked { thread }),
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
    // Declared before `backend`: a linear fd names the backend's memory, so it
    // must close before the last reference to the backend can go.
    fd: ServerFd,
    /// What attaching again needs: the device, the queue's geometry, and the
    /// backend's memory for a linear attach.
    index: u32,
    depth: u32,
    max_io: u32,
    memory: Option<Memory>,
    backend: Arc<dyn Backend>,
    stats: Arc<Stats>,
    activity: ActivityHook,
    stop: Arc<AtomicBool>,
    limit: Arc<RateLimit>,
    /// Shared by the queues: under memory pressure every one of them may fail
    /// its copies in a loop.
    efault: Arc<RateLimit>,
}

impl Worker {
    /// A new server fd for this worker's queue, replacing one the module
    /// unbound; the old fd and its buffer go.
    fn reattach(&mut self) -> Result<(), DeviceError> {
        let ctrl = Control::open()?;
        let q = self.fd.queue();
        self.fd = match self.memory {
            // SAFETY: the memory belongs to `self.backend`, which outlives the fd
            // (declared after it).
            Some(mem) => unsafe { ctrl.attach_linear(self.index, q, mem)? },
            None => ctrl.attach(self.index, q, self.depth, self.max_io)?,
        };
        Ok(())
    }

    fn run(mut self) -> Result<(), WorkerError> {
        let batch = self.depth.min(USRBD_MAX_BATCH) as usize;
        let mut fetched = vec![usrbd_request::default(); batch];
        // Fetched, not yet served: at most one per tag, so never more than `batch`.
        let mut pending: VecDeque<usrbd_request> = VecDeque::with_capacity(batch);
        let mut answers: Vec<usrbd_completion> = Vec::with_capacity(batch);
        let q = self.fd.queue();
        let linear = self.fd.is_linear();
        debug!("queue {q}: worker started");
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let (room, wait_ms) = match next_step(stopping, batch, pending.len(), answers.len()) {
                Next::Serve { room, wait_ms } => (room, wait_ms),
                Next::Return => {
                    debug!("queue {q}: stopped");
                    return Ok(());
                }
            };
            let served = match self.fd.serve(&answers, &mut fetched[..room], wait_ms) {
                Ok(s) => s,
                Err(e) if e.errno == Errno::EINTR => continue,
                Err(e) if e.errno == Errno::ENOTCONN => {
                    // A request we held timed out: the module unbound this fd
                    // and queued what we held again for the next server. Drop
                    // it all (its buffer goes with the fd) and be that server.
                    warn!("queue {q}: the module unbound this server (a request timed out); attaching again");
                    pending.clear();
                    answers.clear();
                    if let Err(source) = self.reattach() {
                        let e = WorkerError::Reattach { queue: q, source };
                        error!("{e}");
                        return Err(e);
                    }
                    continue;
                }
                Err(e) if e.errno == Errno::EFAULT => {
                    // A copy to or from our memory failed (a page the kernel
                    // could not fault in, e.g. out of memory): the module kept
                    // the unapplied answers' requests and requeued the fetched
                    // ones. Retry what it did not apply, after a pause.
                    self.efault
                        .warn(|| format!("queue {q}: SERVE could not copy request data; retrying"));
                    answers.drain(..(e.completed as usize).min(answers.len()));
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) if e.errno == Errno::EINVAL => {
                    // The module refused answer number `completed` (the ones
                    // before it were applied): drop it and resend the rest.
                    let bad = (e.completed as usize).min(answers.len());
                    error!("queue {q}: module rejected answer {:?}", answers.get(bad));
                    answers.drain(..(bad + 1).min(answers.len()));
                    continue;
                }
                Err(e) => {
                    let e = WorkerError::Serve {
                        queue: q,
                        errno: e.errno,
                    };
                    error!("{e}");
                    return Err(e);
                }
            };
            answers.clear();
            if served.events & USRBD_EV_GONE != 0 {
                info!("queue {q}: device gone, worker done");
                return Ok(());
            }
            pending.extend(&fetched[..served.requests as usize]);
            if pending.is_empty() {
                continue;
            }
            // Answer once ANSWER_BYTES have gone through the backend, not only
            // at the end of the batch: the block layer completes those requests
            // and their submitter queues more while the rest are served.
            let mut moved = 0u64;
            while moved < ANSWER_BYTES {
                let Some(r) = pending.pop_front() else { break };
                let payload = if linear {
                    Payload::InPlace
                } else {
                    match r.op {
                        USRBD_OP_READ | USRBD_OP_WRITE => {
                            moved += u64::from(r.len);
                            self.fd
                                .slot(r.tag, r.len)
                                .map_or(Payload::Missing, Payload::Slot)
                        }
                        _ => Payload::Missing,
                    }
                };
                let result = execute(&*self.backend, &r, payload, &self.stats, &self.limit);
                answers.push(usrbd_completion {
                    tag: r.tag,
                    op: r.op,
                    result,
                    len: r.len,
                    cookie: r.cookie,
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
            cookie: 0,
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
            execute(
                &b,
                &req(USRBD_OP_WRITE, 0, 0),
                Payload::Slot(&mut buf),
                &st,
                &rl
            ),
            0
        );
        assert_eq!(b.flushes.load(Ordering::Relaxed), 0);
        assert_eq!(
            execute(
                &b,
                &req(USRBD_OP_WRITE, USRBD_REQ_FUA, 0),
                Payload::Slot(&mut buf),
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
        let r = execute(
            &b,
            &req(USRBD_OP_WRITE, 0, 8192),
            Payload::Slot(&mut buf),
            &st,
            &rl,
        );
        assert_eq!(r, -libc::ENOSPC);
        assert_eq!(
            execute(&b, &req(99, 0, 0), Payload::Missing, &st, &rl),
            -libc::EOPNOTSUPP
        );
        assert_eq!(
            execute(&b, &req(USRBD_OP_READ, 0, 0), Payload::Missing, &st, &rl),
            -libc::EINVAL
        );
        assert_eq!(st.snapshot().errors, 3);
        assert_eq!(st.snapshot().writes, 0);
        assert_eq!(
            execute(
                &b,
                &req(USRBD_OP_READ, 0, 0),
                Payload::Slot(&mut buf),
                &st,
                &rl
            ),
            0
        );
        assert!(buf.iter().all(|x| *x == 9));
    }

    #[test]
    fn in_place_requests_are_counted_and_fua_still_flushes() {
        let b = Probe {
            full_at: 0,
            ..Default::default()
        };
        let (st, rl) = (Stats::default(), RateLimit::default());
        // full_at 0 would fail any backend write: in place, none is made.
        let w = req(USRBD_OP_WRITE, USRBD_REQ_FUA, 8192);
        assert_eq!(execute(&b, &w, Payload::InPlace, &st, &rl), 0);
        assert_eq!(
            execute(&b, &req(USRBD_OP_READ, 0, 0), Payload::InPlace, &st, &rl),
            0
        );
        assert_eq!(b.flushes.load(Ordering::Relaxed), 1);
        let s = st.snapshot();
        assert_eq!(
            (s.writes, s.reads, s.bytes_written, s.errors),
            (1, 1, 4096, 0)
        );
    }

    #[test]
    fn a_stopping_worker_fetches_nothing_and_returns_only_once_nothing_is_held() {
        // Serving: fetch what fits; sleep in SERVE only with nothing to serve.
        assert_eq!(
            next_step(false, 16, 0, 0),
            Next::Serve {
                room: 16,
                wait_ms: WAIT_MS
            }
        );
        assert_eq!(
            next_step(false, 16, 5, 3),
            Next::Serve {
                room: 11,
                wait_ms: 0
            }
        );
        // Stopping with requests held or answers not yet handed back: hand
        // them back without fetching or sleeping.
        let drain = Next::Serve {
            room: 0,
            wait_ms: 0,
        };
        assert_eq!(next_step(true, 16, 5, 0), drain);
        assert_eq!(next_step(true, 16, 0, 3), drain);
        assert_eq!(next_step(true, 16, 16, 16), drain);
        // Nothing held, nothing unanswered: only then may the fd close.
        assert_eq!(next_step(true, 16, 0, 0), Next::Return);
    }

    #[test]
    fn the_rate_limit_holds_back_repeats_within_a_second() {
        let rl = RateLimit::default();
        assert!(rl.log(log::Level::Warn, || "first".into()));
        for _ in 0..1000 {
            assert!(!rl.log(log::Level::Warn, || "again".into()));
        }
        assert_eq!(rl.state.lock().unwrap().1, 1000);
    }
}
