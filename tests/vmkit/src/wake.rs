//! `vmkit wake`: a request the module gives back to its queue must reach a
//! server already asleep in SERVE, with no new request arriving to wake it.
//!
//! Given back: one thread of a server polls SERVE with a request array it
//! cannot write (so the module takes a 1 MiB WRITE, copies its payload,
//! fails to report it, queues it again at the head and returns EFAULT)
//! while another thread of the same server sleeps in SERVE. The 1 MiB copy
//! leaves the sleeper time to look at the empty queue and sleep again;
//! only the wake-up in usrbd_requeue() tells it the WRITE is back. Without
//! it the WRITE waits for the sleeper's own 10 s wait_ms to run out. The
//! poller runs on CPU 0, the sleeper and the writer on CPU 1: the writer
//! queues the WRITE and wakes the sleeper, but the sleeper only runs once
//! the writer waits, by when the poller has taken the WRITE.
//!
//! Unbound: a thread holds a request past its timeout while a second
//! thread sleeps in SERVE on the same fd with no time limit; the timeout
//! unbinds the server and the sleeper must get ENOTCONN at once.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use usrbd::uapi::{self, usrbd_completion, usrbd_request, usrbd_serve, usrbd_status};

use crate::fuzz::rig::{self, AlignedBuf, BadMemory, DeviceSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rounds of the give-back race.
    #[arg(long, default_value_t = 30)]
    rounds: u32,
    /// A write slower than this (ms) waited for something other than the
    /// module's wake-up: normal writes here take a few ms even under TCG.
    #[arg(long, default_value_t = 3000)]
    stall_ms: u64,
}

const MAX_IO: u32 = 1 << 20;
const DEPTH: u32 = 4;
/// The sleeping thread's wait_ms: far above stall_ms.
const SLEEPER_WAIT_MS: u32 = 10_000;

/// Keeps the calling thread on `cpu` (best effort: a one-CPU guest merely
/// makes the give-back rarer, which the round counts show).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it
    // and sched_setaffinity(0) only changes the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One SERVE on `fd`; the requests fetched, or the errno.
fn serve(
    fd: RawFd,
    answers: &[usrbd_completion],
    reqs: u64,
    max: u32,
    wait_ms: u32,
) -> Result<u32, Errno> {
    let mut s = usrbd_serve {
        completions: answers.as_ptr() as u64,
        requests: reqs,
        nr_completions: answers.len() as u32,
        max_requests: max,
        wait_ms,
        ..Default::default()
    };
    rig::ioctl_struct(fd, rig::SERVE, &mut s).map(|_| s.nr_requests)
}

fn answer(r: &usrbd_request) -> usrbd_completion {
    usrbd_completion {
        tag: r.tag,
        op: r.op,
        result: 0,
        len: r.len,
        cookie: r.cookie,
    }
}

fn status(ctl: RawFd, index: u32) -> Result<usrbd_status> {
    let mut st = usrbd_status {
        index,
        ..Default::default()
    };
    rig::ioctl_struct(ctl, rig::STATUS, &mut st).context("STATUS")?;
    Ok(st)
}

fn create(ctl: RawFd, name: &'static str, timeout_ms: u32) -> Result<(u32, PathBuf)> {
    let spec = DeviceSpec {
        name,
        size: 16 << 20,
        queues: 1,
        depth: DEPTH,
        max_io: MAX_IO,
        flags: 0,
    };
    let mut c = rig::create_struct(&spec)?;
    c.timeout_ms = timeout_ms;
    rig::ioctl_struct(ctl, rig::CREATE, &mut c).with_context(|| format!("creating {name}"))?;
    let path = PathBuf::from(format!("/dev/{}", uapi::name_from_c(&c.name)));
    Ok((c.index, path))
}

/// A 1 MiB direct write at `offset` in a thread on CPU 1: how long it took.
fn write_async(path: &Path, offset: u64) -> Result<mpsc::Receiver<std::io::Result<Duration>>> {
    let file = rig::open_direct(path)?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        pin_to(1);
        let mut buf = AlignedBuf::new(MAX_IO as usize);
        buf.bytes_mut().fill(0xa5);
        let t = Instant::now();
        let r = file.write_all_at(buf.bytes(), offset).map(|()| t.elapsed());
        let _ = tx.send(r);
    });
    Ok(rx)
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let ctl = rig::open_control()?;
    let ctl = ctl.as_raw_fd();
    // Each part destroys its device itself before closing its fd: the fd
    // number must stay its own while a thread of it may still call SERVE.
    let ok_back = {
        let (index, path) = create(ctl, "usrbd-wake", 30_000)?;
        let r = given_back(ctl, index, &path, args);
        if r.is_err() {
            let _ = rig::destroy(ctl, index, true);
        }
        r?
    };
    let ok_unbound = {
        let (index, path) = create(ctl, "usrbd-wake-t", 2000)?;
        let r = unbound(ctl, index, &path);
        if r.is_err() {
            let _ = rig::destroy(ctl, index, true);
        }
        r?
    };
    Ok(if ok_back && ok_unbound {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The sleeping thread: serves (answers every WRITE) until the device is gone.
fn spawn_sleeper(fd: RawFd) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        pin_to(1);
        let mut reqs = vec![usrbd_request::default(); DEPTH as usize];
        let mut answers: Vec<usrbd_completion> = Vec::new();
        loop {
            let mut s = rig::serve_args(&answers, &mut reqs, SLEEPER_WAIT_MS);
            let r = rig::ioctl_struct(fd, rig::SERVE, &mut s);
            if r.is_err() || s.events & uapi::USRBD_EV_GONE != 0 {
                return;
            }
            let n = s.nr_requests.min(DEPTH) as usize;
            answers = reqs[..n].iter().map(answer).collect();
        }
    })
}

fn given_back(ctl: RawFd, index: u32, path: &Path, args: &Args) -> Result<bool> {
    // Touched, so copying a payload into it never has to fault.
    let buf = vec![1u8; (DEPTH * MAX_IO) as usize].into_boxed_slice();
    let fd =
        rig::attach(ctl, index, 0, buf.as_ptr() as u64, buf.len() as u64).context("attaching")?;
    let raw = fd.as_raw_fd();
    let bad = Arc::new(BadMemory::new()?);
    let sleeper = spawn_sleeper(raw);
    let stall = Duration::from_millis(args.stall_ms);
    let (mut given_back, mut direct, mut stalled) = (0u32, 0u32, 0u32);
    let mut slowest_back = Duration::ZERO;

    for round in 0..args.rounds {
        // The sleeper is asleep in SERVE by now: nothing is queued.
        thread::sleep(Duration::from_millis(50));
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (stop, bad) = (Arc::clone(&stop), Arc::clone(&bad));
            thread::spawn(move || -> Option<Instant> {
                pin_to(0);
                let reqs = bad.inaccessible() as u64;
                while !stop.load(Ordering::Relaxed) {
                    match serve(raw, &[], reqs, 1, 0) {
                        Err(Errno::EFAULT) => return Some(Instant::now()),
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(_) => return None,
                    }
                }
                None
            })
        };
        thread::sleep(Duration::from_millis(20));
        let offset = u64::from(round % 16) * u64::from(MAX_IO);
        let started = Instant::now();
        let done = write_async(path, offset)?;
        let mut r = done.recv_timeout(stall);
        if r.is_err() {
            let st = status(ctl, index)?;
            println!(
                "wake: round {round}: the WRITE is not done after {} ms: queued={} inflight={}, \
                 a server thread asleep in SERVE",
                stall.as_millis(),
                st.queued,
                st.inflight
            );
            r = done.recv_timeout(Duration::from_secs(30));
        }
        stop.store(true, Ordering::Relaxed);
        let back_at = poller.join().ok().flatten();
        let took = match r {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => bail!("round {round}: the WRITE failed: {e}"),
            Err(_) => bail!("round {round}: the WRITE never ended"),
        };
        match back_at {
            Some(at) => {
                given_back += 1;
                let after = (started + took).saturating_duration_since(at);
                slowest_back = slowest_back.max(after);
                if took >= stall {
                    stalled += 1;
                    println!(
                        "wake: round {round}: given back, then fetched only {:.1} s later \
                         (STALL: the sleeper was not woken)",
                        after.as_secs_f64()
                    );
                }
            }
            None => direct += 1,
        }
    }
    // The sleeper leaves on USRBD_EV_GONE.
    rig::destroy(ctl, index, true).context("destroying usrbd-wake")?;
    let _ = sleeper.join();
    drop(fd);
    println!(
        "wake: {} rounds: {given_back} given back to the queue, {direct} fetched first by the \
         sleeper, {stalled} stalled; slowest fetch after a give-back {} ms",
        args.rounds,
        slowest_back.as_millis()
    );
    println!(
        "FIGURES wake given_back={given_back} direct={direct} stalled={stalled} \
         slowest_after_give_back_ms={}",
        slowest_back.as_millis()
    );
    if given_back == 0 {
        println!("wake: the poller never took a request first: the give-back was not exercised");
        return Ok(false);
    }
    Ok(stalled == 0)
}

fn unbound(ctl: RawFd, index: u32, path: &Path) -> Result<bool> {
    let buf = vec![1u8; (DEPTH * MAX_IO) as usize].into_boxed_slice();
    let fd =
        rig::attach(ctl, index, 0, buf.as_ptr() as u64, buf.len() as u64).context("attaching")?;
    let raw = fd.as_raw_fd();
    let done = write_async(path, 0)?;
    let mut req = [usrbd_request::default()];
    let n = serve(raw, &[], req.as_mut_ptr() as u64, 1, 10_000).context("fetching")?;
    if n != 1 {
        bail!("no request fetched in 10 s");
    }
    // Held, never answered: the 2 s timeout unbinds the server.
    let fetched = Instant::now();
    let (tx, rx) = mpsc::channel();
    let sleeper = thread::spawn(move || {
        let mut reqs = [usrbd_request::default()];
        let r = serve(
            raw,
            &[],
            reqs.as_mut_ptr() as u64,
            1,
            uapi::USRBD_WAIT_FOREVER,
        );
        let _ = tx.send((r, Instant::now()));
    });
    let ok = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok((r, at)) => {
            let after = at.duration_since(fetched);
            println!(
                "wake: the thread asleep in SERVE (no time limit) returned {r:?} {:.1} s after \
                 its sibling fetched the request it then held past the 2 s timeout",
                after.as_secs_f64()
            );
            r == Err(Errno::ENOTCONN)
        }
        Err(_) => {
            println!(
                "wake: the thread asleep in SERVE was not woken 15 s after the fetch, though the \
                 held request timed out and unbound the server (STALL)"
            );
            false
        }
    };
    let w = done.recv_timeout(Duration::from_secs(10));
    println!("wake: the held WRITE ended: {w:?}");
    // Wakes a sleeper that is still asleep (USRBD_EV_GONE).
    rig::destroy(ctl, index, true).context("destroying usrbd-wake-t")?;
    let _ = sleeper.join();
    drop(fd);
    println!("FIGURES wake_unbound sleeper_woken={}", u8::from(ok));
    Ok(ok)
}
