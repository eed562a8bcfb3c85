//! `vmkit fuzz`: malformed ioctls against usrbd.ko while its devices stay
//! healthy.
//!
//! The fuzzer creates two served devices (A with up to two queues, B with
//! one) and an unserved one (C). Background threads serve A and B
//! correctly and keep I/O running through them; the fuzzer sends malformed
//! calls on the control fd and on the server fds, each of which must fail.
//! At the end, data written through A and B must read back and match the
//! servers' stores.

mod cases;
mod exec;
pub(crate) mod rig;

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use log::{info, warn};
use usrbd::uapi;

use crate::stop;
use exec::{Rig, Tally};
use rig::{Device, DeviceSpec, Health};

/// How many violations are printed one by one.
const SHOW: usize = 30;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of cases to run (most are one malformed ioctl each)
    #[arg(long)]
    iterations: usize,
    /// Seed for the case sequence (default: random, printed)
    #[arg(long)]
    seed: Option<u64>,
}

fn spec_a(limits: &uapi::usrbd_version) -> DeviceSpec {
    DeviceSpec {
        name: "usrbd-fuzz-a",
        size: 16 << 20,
        queues: limits.max_queues.clamp(1, 2),
        depth: 8,
        max_io: 64 << 10,
        flags: uapi::USRBD_F_FLUSH
            | uapi::USRBD_F_FUA
            | uapi::USRBD_F_DISCARD
            | uapi::USRBD_F_WRITE_ZEROES,
    }
}

const SPEC_B: DeviceSpec = DeviceSpec {
    name: "usrbd-fuzz-b",
    size: 4 << 20,
    queues: 1,
    depth: 4,
    max_io: 16 << 10,
    flags: uapi::USRBD_F_FLUSH,
};

pub fn run(args: &Args) -> Result<ExitCode> {
    stop::install()?;
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    println!("fuzz: seed {seed}");
    let path = format!("/dev/{}", uapi::USRBD_CONTROL_NAME);
    let ctl: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("opening {path} (is usrbd.ko loaded?)"))?
        .into();
    let mut limits = uapi::usrbd_version::default();
    rig::ioctl_struct(ctl.as_raw_fd(), rig::VERSION, &mut limits).context("USRBD_IOC_VERSION")?;
    remove_leftovers(ctl.as_raw_fd());

    let result = fuzz(ctl, limits, seed, args.iterations);
    if result.is_err() {
        // Whatever the failure, leave no device of ours behind.
        if let Ok(f) = OpenOptions::new().read(true).write(true).open(&path) {
            remove_leftovers(f.as_raw_fd());
        }
    }
    result
}

fn fuzz(
    ctl: OwnedFd,
    limits: uapi::usrbd_version,
    seed: u64,
    iterations: usize,
) -> Result<ExitCode> {
    let raw = ctl.as_raw_fd();
    let a = Arc::new(Device::create(raw, &spec_a(&limits), true)?);
    let b = Arc::new(Device::create(raw, &SPEC_B, true)?);
    info!(
        "serving {} (index {}, {} queues) and {} (index {})",
        a.name,
        a.index,
        a.queues.len(),
        b.name,
        b.index
    );
    let health = Arc::new(Health::default());
    let stop_servers = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for dev in [&a, &b] {
        for q in 0..dev.queues.len() {
            servers.push(dev.spawn_server(q, Arc::clone(&stop_servers), Arc::clone(&health)));
        }
    }
    let stop_io = Arc::new(AtomicBool::new(false));
    let io = [
        rig::spawn_io(&a, seed ^ 0xa, Arc::clone(&stop_io), Arc::clone(&health))?,
        rig::spawn_io(&b, seed ^ 0xb, Arc::clone(&stop_io), Arc::clone(&health))?,
    ];

    let mut rig = Rig::new(
        ctl,
        limits,
        Arc::clone(&a),
        Arc::clone(&b),
        Arc::clone(&health),
    )?;
    let mut tally = Tally::default();
    let mut ran = 0;
    for case in cases::generate(seed, iterations) {
        if stop::requested() {
            warn!("interrupted after {ran} cases");
            break;
        }
        rig.run(&case, &mut tally);
        ran += 1;
    }

    stop_io.store(true, Ordering::Relaxed);
    let extents: Vec<u64> = io.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    let mut data = Vec::new();
    for (dev, s) in [(&a, seed), (&b, !seed)] {
        if let Err(e) = dev.data_check(s) {
            data.push(format!("{e:#}"));
        }
    }

    // Graceful destroys are answered (FLUSH) by the still-running servers,
    // which then see the device gone and stop.
    for dev in [&a, &b] {
        if let Err(e) = rig::destroy(raw, dev.index, false) {
            health.report(format!("graceful destroy of {}: {e}", dev.name));
            let _ = rig::destroy(raw, dev.index, true);
        }
    }
    for dev in [&rig.c, &rig.e] {
        if let Err(e) = rig::destroy(raw, dev.index, true) {
            health.report(format!("destroy of {}: {e}", dev.name));
        }
    }
    stop_servers.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    remove_leftovers(raw);

    report(&tally, ran, &extents, &health.problems(), &data)
}

fn report(
    tally: &Tally,
    ran: usize,
    extents: &[u64],
    problems: &[String],
    data: &[String],
) -> Result<ExitCode> {
    println!("{:<44} {:>7} {:>8}  errnos", "kind", "calls", "rejected");
    for (label, k) in &tally.kinds {
        let errnos: Vec<String> = k.errnos.iter().map(|(e, n)| format!("{e}x{n}")).collect();
        let extra = if k.lenient {
            format!(" (+{} ok with nothing to copy)", k.tolerated)
        } else {
            String::new()
        };
        println!(
            "{label:<44} {:>7} {:>8}  {}{extra}",
            k.calls,
            k.rejected,
            errnos.join(" ")
        );
    }
    let times: Vec<String> = tally
        .time
        .iter()
        .map(|(f, t)| format!("{f} {:.1}s", t.as_secs_f64()))
        .collect();
    info!("time by case family: {}", times.join(", "));
    let (strict, rejected) = tally.strict();
    let (lenient, tolerated) = tally.lenient();
    println!(
        "cases {ran}; valid calls {} ({} failed); bad request pointers {lenient} ({tolerated} harmlessly accepted); I/O extents written and verified: {extents:?}",
        tally.valid_calls,
        tally.valid_failed.len()
    );
    let mut bad = false;
    for (title, list) in [
        ("accepted malformed call", &tally.violations),
        ("valid call failed", &tally.valid_failed),
        ("device health", &problems.to_vec()),
        ("data check", &data.to_vec()),
    ] {
        for line in list.iter().take(SHOW) {
            println!("{title}: {line}");
        }
        if list.len() > SHOW {
            println!("{title}: ... and {} more", list.len() - SHOW);
        }
        bad |= !list.is_empty();
    }
    let verdict = if tally.violations.is_empty() {
        "all rejected".to_owned()
    } else {
        format!("{} accepted or misreported", tally.violations.len())
    };
    let data_verdict = if data.is_empty() { "ok" } else { "FAILED" };
    debug_assert!(rejected <= strict);
    println!("fuzz: {strict} calls, {verdict}; data check {data_verdict}");
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Force-destroys devices a previous run left behind (named usrbd-fuzz-*).
fn remove_leftovers(ctl: RawFd) {
    let mut l = uapi::usrbd_list::default();
    if rig::ioctl_struct(ctl, rig::LIST, &mut l).is_err() {
        return;
    }
    for &index in &l.index[..(l.count as usize).min(uapi::USRBD_MAX_DEVICES)] {
        let mut st = uapi::usrbd_status {
            index,
            ..Default::default()
        };
        if rig::ioctl_struct(ctl, rig::STATUS, &mut st).is_ok()
            && uapi::name_from_c(&st.name).starts_with("usrbd-fuzz")
        {
            warn!("removing leftover {}", uapi::name_from_c(&st.name));
            if let Err(e) = rig::destroy(ctl, index, true) {
                warn!("destroying {}: {e}", uapi::name_from_c(&st.name));
            }
        }
    }
}
