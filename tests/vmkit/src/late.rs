//! `vmkit late-answer`: a server that holds a fetched READ past its
//! timeout, lets the block layer reuse the tag for a READ of another block,
//! then answers the first READ late. The late answer must be refused and the
//! second reader must get its own block's bytes, never the first one's.
//!
//! Depth 1, so the second request necessarily gets the first one's tag.
//! The module (ABI 2) unbinds a server that holds a request past its
//! timeout: the late answer fails on that fd, and once the server has
//! attached again and fetched the second READ, the late answer (same tag,
//! old cookie) is refused on the new fd too.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use usrbd::uapi::{self, usrbd_completion, usrbd_request};

use crate::fuzz::rig::{self, AlignedBuf, DeviceSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The device's request timeout.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u32,
}

const BLOCK: u32 = 4096;
/// The READ held past its timeout, and the one that gets its tag.
const FIRST: u64 = 1;
const SECOND: u64 = 7;

/// The bytes of block `b`: every 8 bytes say which block they belong to.
fn stamp(b: u64) -> Vec<u8> {
    (0..BLOCK / 8)
        .flat_map(|i| (b << 32 | u64::from(i)).to_le_bytes())
        .collect()
}

/// Which block a buffer of stamped bytes comes from, if any.
fn block_of(data: &[u8]) -> Option<u64> {
    let first = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) >> 32;
    (data == stamp(first).as_slice()).then_some(first)
}

/// A server fd with its one-slot buffer.
struct Server {
    fd: OwnedFd,
    buf: Box<[u8]>,
}

impl Server {
    fn attach(ctl: RawFd, index: u32) -> Result<Server, Errno> {
        let buf = vec![0u8; BLOCK as usize].into_boxed_slice();
        let fd = rig::attach(ctl, index, 0, buf.as_ptr() as u64, buf.len() as u64)?;
        Ok(Server { fd, buf })
    }

    /// One SERVE: `answers`, then fetch at most one request.
    fn serve(
        &mut self,
        answers: &[usrbd_completion],
        wait_ms: u32,
    ) -> Result<Option<usrbd_request>, Errno> {
        let mut req = [usrbd_request::default()];
        let mut s = rig::serve_args(answers, &mut req, wait_ms);
        rig::ioctl_struct(self.fd.as_raw_fd(), rig::SERVE, &mut s)?;
        Ok((s.nr_requests == 1).then_some(req[0]))
    }

    /// Fetches one request, waiting up to 10 s.
    fn fetch(&mut self) -> Result<usrbd_request> {
        match self.serve(&[], 10_000) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => bail!("no request fetched in 10 s"),
            Err(e) => bail!("SERVE failed: {e}"),
        }
    }

    /// Puts block `b`'s bytes in the slot and makes the answer to `r`.
    fn answer(&mut self, r: &usrbd_request, b: u64) -> usrbd_completion {
        self.buf.copy_from_slice(&stamp(b));
        usrbd_completion {
            tag: r.tag,
            op: r.op,
            result: 0,
            len: r.len,
            cookie: r.cookie,
        }
    }
}

type ReadResult = std::io::Result<Vec<u8>>;

fn read_block(path: &std::path::Path, b: u64) -> Result<mpsc::Receiver<ReadResult>> {
    let file = rig::open_direct(path)?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = AlignedBuf::new(BLOCK as usize);
        let r = file
            .read_exact_at(buf.bytes_mut(), b * u64::from(BLOCK))
            .map(|()| buf.bytes().to_vec());
        let _ = tx.send(r);
    });
    Ok(rx)
}

fn describe(r: &ReadResult, wanted: u64) -> (String, bool) {
    match r {
        Err(e) => (format!("failed: {e}"), true),
        Ok(d) => match block_of(d) {
            Some(b) if b == wanted => (format!("returned block {b} (its own)"), true),
            Some(b) => (format!("returned block {b}'s bytes (WRONG DATA)"), false),
            None => ("returned unstamped bytes (WRONG DATA)".into(), false),
        },
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let ctl = rig::open_control()?;
    let ctl = ctl.as_raw_fd();
    let spec = DeviceSpec {
        name: "usrbd-late",
        size: 1 << 20,
        queues: 1,
        depth: 1,
        max_io: BLOCK,
        flags: 0,
    };
    let mut c = rig::create_struct(&spec)?;
    c.timeout_ms = args.timeout_ms;
    rig::ioctl_struct(ctl, rig::CREATE, &mut c).context("creating usrbd-late")?;
    let index = c.index;
    let path = std::path::PathBuf::from(format!("/dev/{}", uapi::name_from_c(&c.name)));
    let result = scenario(ctl, index, &path, args.timeout_ms);
    rig::destroy(ctl, index, true).context("destroying usrbd-late")?;
    let ok = result?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn scenario(ctl: RawFd, index: u32, path: &std::path::Path, timeout_ms: u32) -> Result<bool> {
    let wait = Duration::from_millis(u64::from(timeout_ms)) + Duration::from_secs(20);
    let mut srv = Server::attach(ctl, index).context("attaching")?;

    let first = read_block(path, FIRST)?;
    let held = srv.fetch().context("fetching the first READ")?;
    println!("late: fetched {held:?}, holding it past the {timeout_ms} ms timeout");
    let started = Instant::now();
    let r = first
        .recv_timeout(wait)
        .context("the held READ never ended")?;
    let (what, _) = describe(&r, FIRST);
    println!(
        "late: first reader (block {FIRST}) {what} after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let second = read_block(path, SECOND)?;
    let late = srv.answer(&held, FIRST);
    let mut accepted = 0;
    let mut answered = false;
    match srv.serve(&[], 10_000) {
        Ok(Some(r)) => {
            println!(
                "late: the same server fetched {r:?} while still holding tag {}",
                held.tag
            );
            match srv.serve(&[late], 0) {
                Ok(_) => {
                    println!("late: late answer for tag {} ACCEPTED", late.tag);
                    accepted += 1;
                    answered = true;
                }
                Err(e) => println!("late: late answer for tag {} refused: {e}", late.tag),
            }
        }
        Ok(None) => bail!("the server fetched nothing in 10 s"),
        Err(e) => {
            println!("late: the server that held a timed-out request was unbound: SERVE {e}");
            match srv.serve(&[late], 0) {
                Ok(_) => {
                    println!("late: late answer on the unbound fd ACCEPTED");
                    accepted += 1;
                }
                Err(e) => println!("late: late answer on the unbound fd refused: {e}"),
            }
            let mut again = Server::attach(ctl, index).context("attaching again")?;
            let r = again.fetch().context("fetching the second READ")?;
            println!("late: attached again, fetched {r:?}");
            match again.serve(&[late], 0) {
                Ok(_) => {
                    println!(
                        "late: late answer (cookie {}) on the new fd ACCEPTED",
                        late.cookie
                    );
                    accepted += 1;
                }
                Err(e) => println!(
                    "late: late answer (tag {}, cookie {}) on the new fd refused: {e}",
                    late.tag, late.cookie
                ),
            }
            if accepted == 0 {
                let good = again.answer(&r, SECOND);
                again
                    .serve(&[good], 0)
                    .context("answering the second READ")?;
                answered = true;
            }
        }
    }

    let mut ok = accepted == 0;
    if answered {
        let r = second
            .recv_timeout(Duration::from_secs(10))
            .context("the second READ never ended")?;
        let (what, good) = describe(&r, SECOND);
        println!("late: second reader (block {SECOND}) {what}");
        ok &= good;
    }
    println!("FIGURES late_answer timeout_ms={timeout_ms} late_answers_accepted={accepted}");
    Ok(ok)
}
