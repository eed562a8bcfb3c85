//! `vmkit orphan`: a server process attaches, fetches a READ, forks a
//! child that inherits its server fd (fork without exec keeps O_CLOEXEC
//! fds) and dies. The child lives on, so the fd is never closed; a new
//! server must still be able to attach the queue, and must get the READ
//! the dead one held.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use usrbd::uapi::{self, usrbd_completion, usrbd_request};

use crate::fuzz::rig::{self, AlignedBuf, DeviceSpec};

#[derive(clap::Args, Debug)]
pub struct Args {}

const BLOCK: usize = 4096;

/// One SERVE; the number of requests fetched, or the errno.
fn serve(fd: i32, answers: &[usrbd_completion], reqs: &mut [usrbd_request]) -> Result<u32, i32> {
    let mut s = rig::serve_args(answers, reqs, 10_000);
    rig::ioctl_struct(fd, rig::SERVE, &mut s)
        .map(|_| s.nr_requests)
        .map_err(|e| e as i32)
}

pub fn run(_: &Args) -> Result<ExitCode> {
    let ctl = rig::open_control()?;
    let ctl = ctl.as_raw_fd();
    let spec = DeviceSpec {
        name: "usrbd-orphan",
        size: 1 << 20,
        queues: 1,
        depth: 4,
        max_io: BLOCK as u32,
        flags: 0,
    };
    let mut c = rig::create_struct(&spec)?;
    c.timeout_ms = 30_000;
    rig::ioctl_struct(ctl, rig::CREATE, &mut c).context("creating usrbd-orphan")?;
    let index = c.index;
    let path = std::path::PathBuf::from(format!("/dev/{}", uapi::name_from_c(&c.name)));
    let r = scenario(ctl, index, &path);
    rig::destroy(ctl, index, true).context("destroying usrbd-orphan")?;
    r
}

fn scenario(ctl: i32, index: u32, path: &std::path::Path) -> Result<ExitCode> {
    let file = rig::open_direct(path)?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = AlignedBuf::new(BLOCK);
        let r = file
            .read_exact_at(buf.bytes_mut(), 0)
            .map(|()| buf.bytes()[0]);
        let _ = tx.send(r);
    });

    // Everything the first server needs, made before fork: after it only
    // async-signal-safe calls (ioctl, fork, write, pause, _exit).
    let buf = vec![0u8; spec_len()];
    let mut reqs = vec![usrbd_request::default(); 4];
    let mut pipe = [0i32; 2];
    // SAFETY: pipe writes two fds into the array.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the child runs only async-signal-safe calls, then _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // The first server: attach, fetch the READ, leave a child holding the fd, die.
        let mut a = uapi::usrbd_attach {
            index,
            queue: 0,
            buf_addr: buf.as_ptr() as u64,
            buf_len: buf.len() as u64,
            ..Default::default()
        };
        let fd = rig::ioctl_struct(ctl, rig::ATTACH, &mut a).unwrap_or(-1);
        let fetched = if fd >= 0 {
            serve(fd, &[], &mut reqs).unwrap_or(0)
        } else {
            0
        };
        // SAFETY: async-signal-safe calls only (see above).
        unsafe {
            let holder = libc::fork();
            if holder == 0 {
                libc::pause();
                libc::_exit(0);
            }
            let msg = [fetched as i32, holder];
            libc::write(pipe[1], msg.as_ptr().cast(), std::mem::size_of_val(&msg));
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(pipe[1]) };
    let mut msg = [0i32; 2];
    // SAFETY: reads at most the size of msg into it.
    let n = unsafe {
        libc::read(
            pipe[0],
            msg.as_mut_ptr().cast(),
            std::mem::size_of_val(&msg),
        )
    };
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if n as usize != std::mem::size_of_val(&msg) {
        bail!("the first server reported nothing");
    }
    let (fetched, holder) = (msg[0], msg[1]);
    println!(
        "orphan: the first server fetched {fetched} request(s) and died; pid {holder} holds its fd"
    );

    let result = second_server(ctl, index, &rx);
    // SAFETY: ending the holder we forked.
    unsafe {
        libc::kill(holder, libc::SIGKILL);
        libc::waitpid(holder, &mut status, 0);
    }
    let ok = result?;
    println!("FIGURES orphan reattach_ok={}", u8::from(ok));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn spec_len() -> usize {
    4 * BLOCK
}

fn second_server(ctl: i32, index: u32, rx: &mpsc::Receiver<std::io::Result<u8>>) -> Result<bool> {
    let mut buf = vec![0u8; spec_len()].into_boxed_slice();
    let fd = match rig::attach(ctl, index, 0, buf.as_mut_ptr() as u64, buf.len() as u64) {
        Ok(fd) => fd,
        Err(e) => {
            println!("orphan: a new server cannot attach while the orphan's fd lives: {e}");
            return Ok(false);
        }
    };
    println!("orphan: a new server attached");
    let mut reqs = vec![usrbd_request::default(); 4];
    let n = serve(fd.as_raw_fd(), &[], &mut reqs).unwrap_or(0);
    if n == 0 {
        println!("orphan: the new server got no request: the dead server's READ is lost");
        return Ok(false);
    }
    let r = reqs[0];
    println!("orphan: the new server fetched the dead one's READ: {r:?}");
    let slot = r.tag as usize * BLOCK;
    buf[slot..slot + BLOCK].fill(0x5a);
    let answer = usrbd_completion {
        tag: r.tag,
        op: r.op,
        result: 0,
        len: r.len,
        cookie: r.cookie,
    };
    if let Err(e) = serve(fd.as_raw_fd(), &[answer], &mut []) {
        bail!("answering the READ: errno {e}");
    }
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(0x5a)) => {
            println!("orphan: the reader got the new server's data");
            Ok(true)
        }
        Ok(Ok(b)) => {
            println!("orphan: the reader got byte {b:#x}, not the answer's");
            Ok(false)
        }
        Ok(Err(e)) => {
            println!("orphan: the READ failed: {e}");
            Ok(false)
        }
        Err(_) => bail!("the READ never ended"),
    }
}
