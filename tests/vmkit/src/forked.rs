//! `vmkit forked`: a server that forks again and again while it serves.
//!
//! Fork write-protects the parent's pages for copy-on-write; the next write
//! by either side gives the writer a new page. The module copies into the
//! server buffer through pinned pages (copy.c): a copy must land in the
//! page the server will read, never in the one a child keeps. Checkers
//! write blocks that say which block and which generation they are and
//! read them back: every block must be the last one written there.
//!
//! Each child inherited the server fd (fork without exec keeps O_CLOEXEC
//! fds). The contract: SERVE runs only in the attaching address space, so
//! the child's SERVE (an answer for a request the parent holds, with the
//! right tag and cookie, and a fetch) must fail with EPERM and change
//! nothing: the parent's own answer still completes the request.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use usrbd::uapi::{self, usrbd_completion, usrbd_request, usrbd_serve};

use crate::fuzz::rig::{self, AlignedBuf, DeviceSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long the checkers run while the server forks.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Two queues attached USRBD_ATTACH_LINEAR to one image (as the RAM
    /// backend attaches), written a 512-byte sector at a time: the two
    /// queues' copies then land in the same pages.
    #[arg(long)]
    linear: bool,
}

const BLOCK: usize = 4096;
const DEPTH: u32 = 16;
const MAX_IO: u32 = 64 << 10;
const SIZE: u64 = 32 << 20;
/// Checkers of per-tag slots: each keeps up to two 64 KiB WRITEs queued,
/// so a fetch after a fork finds many slots write-protected at once.
const SLOT_CHECKERS: u64 = 8;
/// Checkers of a linear image: one per queue (and CPU).
const LINEAR_CHECKERS: u64 = 2;

/// Child exit codes.
const CHILD_REFUSED: i32 = 0;
const CHILD_ANSWER_ACCEPTED: i32 = 3;
const CHILD_FETCH_ACCEPTED: i32 = 4;
const CHILD_OTHER_ERRNO: i32 = 5;

/// Block `b`, generation `g` (0: never written, all zeroes).
fn fill_block(out: &mut [u8], b: u64, g: u32) {
    if g == 0 {
        out.fill(0);
        return;
    }
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        let v = 0x464f_524b_0000_0000 ^ (b << 40) ^ (u64::from(g) << 12) ^ i as u64;
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// The answer a child tries to steal: the request the parent holds now.
#[derive(Default)]
struct Held {
    valid: AtomicBool,
    tag: AtomicU32,
    op: AtomicU32,
    len: AtomicU32,
    cookie: AtomicU64,
}

struct Server {
    fd: RawFd,
    /// Per-tag slots and the store they are copied to and from; empty for
    /// a linear server, whose buffer is the image the module copies to.
    buf: Box<[u8]>,
    store: Vec<u8>,
}

impl Server {
    fn process(&mut self, r: &usrbd_request) -> usrbd_completion {
        let mut c = usrbd_completion {
            tag: r.tag,
            op: r.op,
            result: 0,
            len: r.len,
            cookie: r.cookie,
        };
        let (off, len) = (r.offset as usize, r.len as usize);
        let slot = r.tag as usize * MAX_IO as usize;
        let fits = r.tag < DEPTH && len <= MAX_IO as usize && off + len <= SIZE as usize;
        if self.store.is_empty() && fits {
            return c;
        }
        match r.op {
            uapi::USRBD_OP_READ if fits => {
                self.buf[slot..slot + len].copy_from_slice(&self.store[off..off + len])
            }
            uapi::USRBD_OP_WRITE if fits => {
                self.store[off..off + len].copy_from_slice(&self.buf[slot..slot + len])
            }
            uapi::USRBD_OP_FLUSH => {}
            _ => c.result = -libc::EIO,
        }
        c
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let ctl = rig::open_control()?;
    let ctl = ctl.as_raw_fd();
    let spec = DeviceSpec {
        name: "usrbd-forked",
        size: SIZE,
        queues: if args.linear { 2 } else { 1 },
        depth: DEPTH,
        max_io: MAX_IO,
        flags: 0,
    };
    let mut c = rig::create_struct(&spec)?;
    c.timeout_ms = 30_000;
    rig::ioctl_struct(ctl, rig::CREATE, &mut c).context("creating usrbd-forked")?;
    let index = c.index;
    let path = PathBuf::from(format!("/dev/{}", uapi::name_from_c(&c.name)));
    let r = scenario(ctl, index, &path, args);
    let _ = rig::destroy(ctl, index, true);
    r
}

fn scenario(ctl: RawFd, index: u32, path: &Path, args: &Args) -> Result<ExitCode> {
    // The linear image: both queues' server buffer.
    let image = vec![0u8; if args.linear { SIZE as usize } else { 0 }].into_boxed_slice();
    let mut fds = Vec::new();
    let mut servers = Vec::new();
    for q in 0..if args.linear { 2 } else { 1 } {
        let srv = if args.linear {
            let mut a = uapi::usrbd_attach {
                index,
                queue: q,
                buf_addr: image.as_ptr() as u64,
                buf_len: SIZE,
                flags: uapi::USRBD_ATTACH_LINEAR,
                ..Default::default()
            };
            let fd = rig::ioctl_struct(ctl, rig::ATTACH, &mut a)
                .with_context(|| format!("attaching queue {q} linear"))?;
            // SAFETY: ATTACH returned a new fd that nothing else owns.
            fds.push(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            Server {
                fd,
                buf: Box::default(),
                store: Vec::new(),
            }
        } else {
            let buf = vec![0u8; (DEPTH * MAX_IO) as usize].into_boxed_slice();
            let fd = rig::attach(ctl, index, 0, buf.as_ptr() as u64, buf.len() as u64)
                .context("attaching")?;
            let raw = fd.as_raw_fd();
            fds.push(fd);
            Server {
                fd: raw,
                buf,
                store: vec![0u8; SIZE as usize],
            }
        };
        servers.push(srv);
    }
    let held = Arc::new(Held::default());
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));

    let servers: Vec<_> = servers
        .into_iter()
        .enumerate()
        .map(|(q, srv)| {
            let (held, served) = (Arc::clone(&held), Arc::clone(&served));
            thread::spawn(move || serve_loop(srv, (q == 0).then_some(&*held), &served))
        })
        .collect();
    let fd = fds[0].as_raw_fd();
    let forker = {
        let (held, stop) = (Arc::clone(&held), Arc::clone(&stop));
        thread::spawn(move || fork_loop(fd, &held, &stop))
    };

    let wrong = Arc::new(AtomicU64::new(0));
    let checked = Arc::new(AtomicU64::new(0));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let nr_checkers = if args.linear {
        LINEAR_CHECKERS
    } else {
        SLOT_CHECKERS
    };
    let checkers: Vec<_> = (0..nr_checkers)
        .map(|k| {
            let file = rig::open_direct(path)?;
            let (wrong, checked, problems) = (
                Arc::clone(&wrong),
                Arc::clone(&checked),
                Arc::clone(&problems),
            );
            let linear = args.linear;
            Ok(thread::spawn(move || {
                let r = if linear {
                    check_sectors(&file, k, deadline, &wrong, &checked)
                } else {
                    check_loop(&file, k, deadline, &wrong, &checked)
                };
                if let Err(e) = r {
                    problems
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("checker {k}: {e:#}"));
                }
            }))
        })
        .collect::<Result<_>>()?;
    for c in checkers {
        let _ = c.join();
    }
    stop.store(true, Ordering::SeqCst);
    let forks = forker
        .join()
        .map_err(|_| anyhow::anyhow!("the forking thread panicked"))??;
    rig::destroy(ctl, index, true).context("destroying usrbd-forked")?;
    let mut server_result = Ok(());
    for s in servers {
        let r = s
            .join()
            .map_err(|_| anyhow::anyhow!("a server thread panicked"))?;
        if server_result.is_ok() {
            server_result = r;
        }
    }
    drop(fds);
    drop(image);

    let wrong = wrong.load(Ordering::Relaxed);
    let checked = checked.load(Ordering::Relaxed);
    let problems = problems.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!(
        "forked: {} forks while serving {} requests; children refused (EPERM) {}, with a held \
         request's answer {}; answer accepted {}, fetch accepted {}, other errno {}",
        forks.total,
        served.load(Ordering::Relaxed),
        forks.refused,
        forks.with_answer,
        forks.answer_accepted,
        forks.fetch_accepted,
        forks.other
    );
    println!("forked: {checked} blocks read back, {wrong} wrong");
    for p in &problems {
        println!("forked: {p}");
    }
    if let Err(e) = &server_result {
        println!("forked: the server failed: {e:#}");
    }
    println!(
        "FIGURES forked linear={} forks={} children_refused={} child_accepted={} blocks_checked={checked} \
         wrong_blocks={wrong}",
        u8::from(args.linear),
        forks.total,
        forks.refused,
        forks.answer_accepted + forks.fetch_accepted
    );
    let ok = wrong == 0
        && problems.is_empty()
        && server_result.is_ok()
        && forks.total >= 20
        && forks.refused == forks.total
        && forks.with_answer > 0;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Serves one queue until the device is gone; with `held`, publishes a
/// request it holds for the children to try to answer.
fn serve_loop(mut srv: Server, held: Option<&Held>, served: &AtomicU64) -> Result<()> {
    let mut reqs = vec![usrbd_request::default(); DEPTH as usize];
    let mut answers: Vec<usrbd_completion> = Vec::new();
    loop {
        let mut s = rig::serve_args(&answers, &mut reqs, 200);
        if let Some(h) = held {
            h.valid.store(false, Ordering::SeqCst);
        }
        rig::ioctl_struct(srv.fd, rig::SERVE, &mut s)
            .with_context(|| format!("the server's SERVE ({} answers)", answers.len()))?;
        served.fetch_add(u64::from(s.nr_completed), Ordering::Relaxed);
        if s.events & uapi::USRBD_EV_GONE != 0 {
            return Ok(());
        }
        let n = s.nr_requests.min(DEPTH) as usize;
        if let (Some(h), Some(r)) = (held, reqs[..n].first()) {
            h.tag.store(r.tag, Ordering::SeqCst);
            h.op.store(r.op, Ordering::SeqCst);
            h.len.store(r.len, Ordering::SeqCst);
            h.cookie.store(r.cookie, Ordering::SeqCst);
            h.valid.store(true, Ordering::SeqCst);
        }
        answers = reqs[..n].iter().map(|r| srv.process(r)).collect();
    }
}

#[derive(Default)]
struct Forks {
    total: u64,
    refused: u64,
    with_answer: u64,
    answer_accepted: u64,
    fetch_accepted: u64,
    other: u64,
}

/// Forks until `stop`; each child tries the parent's fd, then exits.
fn fork_loop(fd: RawFd, held: &Held, stop: &AtomicBool) -> Result<Forks> {
    let mut f = Forks::default();
    let mut rng = fastrand::Rng::with_seed(1);
    while !stop.load(Ordering::SeqCst) {
        let answer = held.valid.load(Ordering::SeqCst).then(|| usrbd_completion {
            tag: held.tag.load(Ordering::SeqCst),
            op: held.op.load(Ordering::SeqCst),
            result: 0,
            len: held.len.load(Ordering::SeqCst),
            cookie: held.cookie.load(Ordering::SeqCst),
        });
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::c_long::from(rng.i32(0..3_000_000)),
        };
        let mut req = usrbd_request::default();
        // SAFETY: the child makes only async-signal-safe calls (ioctl,
        // nanosleep, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            let code = child(fd, answer.as_ref(), &mut req);
            // SAFETY: see above.
            unsafe {
                libc::nanosleep(&nap, std::ptr::null_mut());
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            bail!("waitpid: {}", std::io::Error::last_os_error());
        }
        f.total += 1;
        f.with_answer += u64::from(answer.is_some());
        match libc::WEXITSTATUS(status) {
            CHILD_REFUSED => f.refused += 1,
            CHILD_ANSWER_ACCEPTED => f.answer_accepted += 1,
            CHILD_FETCH_ACCEPTED => f.fetch_accepted += 1,
            _ => f.other += 1,
        }
    }
    Ok(f)
}

/// In the child: SERVE on the inherited fd must fail with EPERM.
fn child(fd: RawFd, answer: Option<&usrbd_completion>, req: &mut usrbd_request) -> i32 {
    let try_serve = |s: &mut usrbd_serve| {
        // SAFETY: s and the arrays it points at live on this stack frame.
        let r = unsafe { libc::ioctl(fd, rig::SERVE as _, s as *mut usrbd_serve) };
        // SAFETY: reading errno right after the call.
        (r, unsafe { *libc::__errno_location() })
    };
    if let Some(a) = answer {
        let mut s = usrbd_serve {
            completions: a as *const usrbd_completion as u64,
            nr_completions: 1,
            ..Default::default()
        };
        match try_serve(&mut s) {
            (0.., _) => return CHILD_ANSWER_ACCEPTED,
            (_, libc::EPERM) => {}
            _ => return CHILD_OTHER_ERRNO,
        }
    }
    let mut s = usrbd_serve {
        requests: req as *mut usrbd_request as u64,
        max_requests: 1,
        wait_ms: 0,
        ..Default::default()
    };
    match try_serve(&mut s) {
        (0.., _) => CHILD_FETCH_ACCEPTED,
        (_, libc::EPERM) => CHILD_REFUSED,
        _ => CHILD_OTHER_ERRNO,
    }
}

/// Checker `k`: writes and reads back extents of its own eighth of the
/// device until `deadline`, counting blocks that are not the last written.
fn check_loop(
    file: &std::fs::File,
    k: u64,
    deadline: Instant,
    wrong: &AtomicU64,
    checked: &AtomicU64,
) -> Result<()> {
    let blocks = SIZE / BLOCK as u64 / SLOT_CHECKERS;
    let first = k * blocks;
    let mut gens = vec![0u32; blocks as usize];
    let mut rng = fastrand::Rng::with_seed(k + 7);
    let mut buf = AlignedBuf::new(32 * BLOCK);
    let mut expect = vec![0u8; BLOCK];
    let mut gen = 0u32;
    while Instant::now() < deadline {
        let n = rng.u64(1..=32);
        let at = rng.u64(0..=blocks - n);
        let len = n as usize * BLOCK;
        let off = (first + at) * BLOCK as u64;
        if rng.bool() {
            gen += 1;
            for (i, out) in buf.bytes_mut()[..len].chunks_exact_mut(BLOCK).enumerate() {
                fill_block(out, first + at + i as u64, gen);
                gens[(at as usize) + i] = gen;
            }
            file.write_all_at(&buf.bytes()[..len], off)
                .with_context(|| format!("writing {n} blocks at {off}"))?;
        } else {
            file.read_exact_at(&mut buf.bytes_mut()[..len], off)
                .with_context(|| format!("reading {n} blocks at {off}"))?;
            for (i, got) in buf.bytes()[..len].chunks_exact(BLOCK).enumerate() {
                let b = at as usize + i;
                fill_block(&mut expect, first + b as u64, gens[b]);
                if got != expect.as_slice() && wrong.fetch_add(1, Ordering::Relaxed) < 10 {
                    println!(
                        "forked: block {} is not generation {} (WRONG DATA)",
                        first + b as u64,
                        gens[b]
                    );
                }
                checked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Checker `k` of a linear device, on CPU `k` (so its requests go to queue
/// `k`): single 512-byte sectors, the ones whose number is `k` mod 2, so
/// every page of the image takes copies from both queues.
fn check_sectors(
    file: &std::fs::File,
    k: u64,
    deadline: Instant,
    wrong: &AtomicU64,
    checked: &AtomicU64,
) -> Result<()> {
    const SECTOR: usize = 512;
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it and
    // sched_setaffinity(0) only moves the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(k as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    // The first 4 MiB: dense enough that both queues hit the same pages.
    let sectors = (4 << 20) / SECTOR as u64 / 2;
    let mut gens = vec![0u32; sectors as usize];
    let mut rng = fastrand::Rng::with_seed(k + 11);
    let mut buf = AlignedBuf::new(SECTOR);
    let mut expect = vec![0u8; SECTOR];
    let mut gen = 0u32;
    while Instant::now() < deadline {
        let i = rng.u64(0..sectors);
        let sector = i * 2 + k;
        let off = sector * SECTOR as u64;
        if rng.bool() {
            gen += 1;
            fill_block(buf.bytes_mut(), sector, gen);
            gens[i as usize] = gen;
            file.write_all_at(buf.bytes(), off)
                .with_context(|| format!("writing sector {sector}"))?;
        } else {
            file.read_exact_at(buf.bytes_mut(), off)
                .with_context(|| format!("reading sector {sector}"))?;
            fill_block(&mut expect, sector, gens[i as usize]);
            if buf.bytes() != expect.as_slice() && wrong.fetch_add(1, Ordering::Relaxed) < 10 {
                println!(
                    "forked: sector {sector} is not generation {} (WRONG DATA)",
                    gens[i as usize]
                );
            }
            checked.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
