//! `vmkit errno`: a server answers READs with assorted errnos; the reader
//! must see only errors a disk may report. Any errno outside the module's
//! whitelist reaches the reader as EIO: -EAGAIN must not become a NOWAIT
//! retry (EAGAIN) nor -ENOLINK a multipath transport error (ENOLINK).

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use usrbd::uapi::{self, usrbd_completion, usrbd_request, usrbd_serve};

use crate::fuzz::rig::{self, AlignedBuf, DeviceSpec};

#[derive(clap::Args, Debug)]
pub struct Args {}

const BLOCK: usize = 4096;

/// The server's answer and what the reader must see.
const CASES: [(Errno, Errno); 12] = [
    (Errno::EAGAIN, Errno::EIO),
    (Errno::ENOLINK, Errno::EIO),
    (Errno::EREMOTEIO, Errno::EIO),
    (Errno::ENOMEM, Errno::EIO),
    (Errno::EPERM, Errno::EIO),
    (Errno::EIO, Errno::EIO),
    (Errno::ENOSPC, Errno::ENOSPC),
    (Errno::EDQUOT, Errno::ENOSPC),
    (Errno::EOPNOTSUPP, Errno::EOPNOTSUPP),
    (Errno::ETIMEDOUT, Errno::ETIMEDOUT),
    (Errno::ENODATA, Errno::ENODATA),
    (Errno::EBADMSG, Errno::ENODATA),
];

pub fn run(_: &Args) -> Result<ExitCode> {
    let ctl = rig::open_control()?;
    let ctl = ctl.as_raw_fd();
    let spec = DeviceSpec {
        name: "usrbd-errno",
        size: 1 << 20,
        queues: 1,
        depth: 1,
        max_io: BLOCK as u32,
        flags: 0,
    };
    let mut c = rig::create_struct(&spec)?;
    rig::ioctl_struct(ctl, rig::CREATE, &mut c).context("creating usrbd-errno")?;
    let index = c.index;
    let path = std::path::PathBuf::from(format!("/dev/{}", uapi::name_from_c(&c.name)));
    let r = cases(ctl, index, &path);
    rig::destroy(ctl, index, true).context("destroying usrbd-errno")?;
    let bad = r?;
    println!("FIGURES errno cases={} wrong={bad}", CASES.len());
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cases(ctl: i32, index: u32, path: &std::path::Path) -> Result<usize> {
    let buf = vec![0u8; BLOCK].into_boxed_slice();
    let fd =
        rig::attach(ctl, index, 0, buf.as_ptr() as u64, buf.len() as u64).context("attaching")?;
    let mut bad = 0;
    for (answer, want) in CASES {
        let file = rig::open_direct(path)?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut b = AlignedBuf::new(BLOCK);
            let _ = tx.send(file.read_exact_at(b.bytes_mut(), 0));
        });
        let mut req = [usrbd_request::default()];
        let mut s = usrbd_serve {
            requests: req.as_mut_ptr() as u64,
            max_requests: 1,
            wait_ms: 10_000,
            ..Default::default()
        };
        rig::ioctl_struct(fd.as_raw_fd(), rig::SERVE, &mut s).context("fetching")?;
        if s.nr_requests != 1 {
            bail!("no READ fetched in 10 s");
        }
        let c = [usrbd_completion {
            tag: req[0].tag,
            op: req[0].op,
            result: -(answer as i32),
            len: req[0].len,
            cookie: req[0].cookie,
        }];
        let mut s = usrbd_serve {
            completions: c.as_ptr() as u64,
            nr_completions: 1,
            ..Default::default()
        };
        rig::ioctl_struct(fd.as_raw_fd(), rig::SERVE, &mut s).context("answering")?;
        let got = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Errno::from_raw(e.raw_os_error().unwrap_or(0))),
            Err(_) => bail!("the READ answered with -{answer:?} never ended"),
        };
        let ok = got == Some(want);
        println!(
            "errno: server answered -{answer:?}, reader saw {}{}",
            got.map_or("success".into(), |e| format!("{e:?}")),
            if ok { "" } else { " (WRONG)" }
        );
        bad += usize::from(!ok);
    }
    Ok(bad)
}
