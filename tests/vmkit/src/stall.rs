//! `vmkit stall`: a server whose buffer can never be faulted in (registered
//! with userfaultfd, and nobody answers the faults). The module must not let
//! that hold a request forever: the READ whose answer it cannot copy and the
//! WRITE it cannot hand over both time out, and the device is destroyed while
//! the server thread is still stuck in its SERVE call.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use nix::errno::Errno;
use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use usrbd::uapi::{self, usrbd_completion, usrbd_request, usrbd_status};

use crate::fuzz::rig::{self, AlignedBuf, DeviceSpec};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The devices' request timeout.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u32,
}

const DEPTH: u32 = 4;
const MAX_IO: u32 = 64 << 10;

// <linux/userfaultfd.h>
const UFFD_API: u64 = 0xAA;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

nix::ioctl_readwrite!(uffdio_api, 0xAA, 0x3F, UffdioApi);
nix::ioctl_readwrite!(uffdio_register, 0xAA, 0x00, UffdioRegister);

/// Anonymous memory whose every page fault waits for an answer that never
/// comes. Lives until the process exits (the server thread stays stuck in it).
struct FaultingMemory {
    addr: NonNull<u8>,
    len: usize,
    _uffd: OwnedFd,
}

impl FaultingMemory {
    fn new(len: usize) -> Result<Self> {
        let len_nz = NonZeroUsize::new(len).context("empty server buffer")?;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let addr = unsafe {
            mmap_anonymous(
                None,
                len_nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .context("mmap of the server buffer")?
        .cast::<u8>();
        // SAFETY: plain syscall; kernel-mode faults are allowed to root.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("userfaultfd");
        }
        // SAFETY: a new fd that nothing else owns.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        // SAFETY: api is a valid uffdio_api.
        unsafe { uffdio_api(uffd.as_raw_fd(), &mut api) }.context("UFFDIO_API")?;
        let mut reg = UffdioRegister {
            start: addr.as_ptr() as u64,
            len: len as u64,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: reg names exactly our mapping.
        unsafe { uffdio_register(uffd.as_raw_fd(), &mut reg) }.context("UFFDIO_REGISTER")?;
        Ok(Self {
            addr,
            len,
            _uffd: uffd,
        })
    }
}

/// Serves one queue, answering every request with success, until SERVE fails
/// or the device is gone. With a faulting buffer it gets stuck inside SERVE.
fn serve_forever(fd: OwnedFd) {
    let mut reqs = vec![usrbd_request::default(); DEPTH as usize];
    let mut answers: Vec<usrbd_completion> = Vec::new();
    loop {
        let mut s = rig::serve_args(&answers, &mut reqs, 1000);
        if rig::ioctl_struct(fd.as_raw_fd(), rig::SERVE, &mut s).is_err()
            || s.events & uapi::USRBD_EV_GONE != 0
        {
            return;
        }
        answers = reqs[..s.nr_requests as usize]
            .iter()
            .map(|r| usrbd_completion {
                tag: r.tag,
                op: r.op,
                result: 0,
                len: r.len,
                cookie: r.cookie,
            })
            .collect();
    }
}

#[derive(Clone, Copy, Debug)]
enum Io {
    Read,
    Write,
}

struct Outcome {
    error: Errno,
    seconds: f64,
    timeouts: u64,
    destroy_seconds: f64,
}

fn stall_one(
    ctl: RawFd,
    io: Io,
    timeout_ms: u32,
    keep: &mut Vec<FaultingMemory>,
) -> Result<Outcome> {
    let spec = DeviceSpec {
        name: match io {
            Io::Read => "usrbd-stall-r",
            Io::Write => "usrbd-stall-w",
        },
        size: 1 << 20,
        queues: 1,
        depth: DEPTH,
        max_io: MAX_IO,
        flags: 0,
    };
    let mut c = rig::create_struct(&spec)?;
    c.timeout_ms = timeout_ms;
    rig::ioctl_struct(ctl, rig::CREATE, &mut c)
        .with_context(|| format!("creating {}", spec.name))?;
    let index = c.index;
    let mem = FaultingMemory::new((DEPTH * MAX_IO) as usize)?;
    let fd = rig::attach(ctl, index, 0, mem.addr.as_ptr() as u64, mem.len as u64)
        .with_context(|| format!("attaching {}", spec.name))?;
    keep.push(mem);
    thread::Builder::new()
        .name(format!("{}-server", spec.name))
        .spawn(move || serve_forever(fd))
        .context("starting the server thread")?;

    let path = std::path::PathBuf::from(format!("/dev/{}", uapi::name_from_c(&c.name)));
    let dev = rig::open_direct(&path)?;
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    thread::Builder::new()
        .name(format!("{}-io", spec.name))
        .spawn(move || {
            let mut buf = AlignedBuf::new(4096);
            let r = match io {
                Io::Read => dev.read_at(buf.bytes_mut(), 0),
                Io::Write => dev.write_at(buf.bytes(), 0),
            };
            let _ = tx.send(r);
        })
        .context("starting the I/O thread")?;
    let limit = Duration::from_millis(u64::from(timeout_ms)) + Duration::from_secs(20);
    let error = match rx.recv_timeout(limit) {
        Ok(Ok(n)) => bail!("{io:?} of 4096 bytes returned {n} although no byte could be copied"),
        Ok(Err(e)) => Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        Err(_) => bail!(
            "{io:?} still blocked {:.1} s after it was issued (request timeout {timeout_ms} ms)",
            started.elapsed().as_secs_f64()
        ),
    };
    let seconds = started.elapsed().as_secs_f64();

    let mut st = usrbd_status {
        index,
        ..Default::default()
    };
    rig::ioctl_struct(ctl, rig::STATUS, &mut st).context("USRBD_IOC_STATUS")?;
    let destroy_started = Instant::now();
    rig::destroy(ctl, index, true).with_context(|| format!("destroying {}", spec.name))?;
    Ok(Outcome {
        error,
        seconds,
        timeouts: st.timeouts,
        destroy_seconds: destroy_started.elapsed().as_secs_f64(),
    })
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    let ctl = rig::open_control()?;
    let mut keep = Vec::new();
    let mut figures = String::new();
    for io in [Io::Read, Io::Write] {
        let o = stall_one(ctl.as_raw_fd(), io, args.timeout_ms, &mut keep)?;
        println!(
            "{io:?}: failed with {} after {:.1} s, {} timeout(s) counted, destroyed in {:.2} s \
             with the server still stuck",
            o.error, o.seconds, o.timeouts, o.destroy_seconds
        );
        if o.timeouts == 0 {
            bail!("{io:?}: the device counted no timeout");
        }
        let name = format!("{io:?}").to_lowercase();
        figures += &format!(
            " {name}_error={:?} {name}_s={:.1} {name}_destroy_s={:.2}",
            o.error, o.seconds, o.destroy_seconds
        );
    }
    println!(
        "FIGURES stalled_server_buffer timeout_ms={}{figures}",
        args.timeout_ms
    );
    // The server threads stay stuck in their faults until the process exits.
    Ok(std::process::ExitCode::SUCCESS)
}
