//! `vmkit stamp`: every 4 KiB block of a device says which block it is, and
//! readers check that each block they read back is the one they asked for.
//! A read that returns another block's bytes is the defect this exists to
//! catch (an answer landing on the wrong request); an I/O error is not.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fuzz::rig::{open_direct, AlignedBuf};

const BLOCK: usize = 4096;
/// Marks stamped bytes, so a block of zeroes never passes as block 0.
const MAGIC: u64 = 0x5354_414d_0000_0000;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Stamp every block of the device (direct I/O, then fsync)
    Write {
        #[arg(long)]
        dev: PathBuf,
    },
    /// Random direct reads for a while; fails if any block is not its own
    Check {
        #[arg(long)]
        dev: PathBuf,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        threads: usize,
        /// Bytes per read, a multiple of 4096
        #[arg(long, default_value_t = 64 << 10)]
        bs: usize,
        /// Read every block once, in order, instead (and fail on any error)
        #[arg(long)]
        all: bool,
    },
}

fn fill(block: u64, out: &mut [u8]) {
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(MAGIC ^ (block << 12) ^ i as u64).to_le_bytes());
    }
}

/// The block these bytes say they are, or None if they are not a stamp.
fn which(data: &[u8]) -> Option<u64> {
    let w0 = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let block = (w0 ^ MAGIC) >> 12;
    let mut want = vec![0u8; BLOCK];
    fill(block, &mut want);
    (data == want.as_slice()).then_some(block)
}

fn device_blocks(dev: &std::fs::File) -> Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer given.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("BLKGETSIZE64");
    }
    Ok(size / BLOCK as u64)
}

/// `_IOR(0x12, 114, size_t)`
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn write(dev: &Path) -> Result<ExitCode> {
    let f = open_direct(dev)?;
    let blocks = device_blocks(&f)?;
    let chunk = 256;
    let mut buf = AlignedBuf::new(chunk * BLOCK);
    let mut b = 0;
    while b < blocks {
        let n = chunk.min((blocks - b) as usize);
        for i in 0..n {
            fill(
                b + i as u64,
                &mut buf.bytes_mut()[i * BLOCK..(i + 1) * BLOCK],
            );
        }
        f.write_all_at(&buf.bytes()[..n * BLOCK], b * BLOCK as u64)
            .with_context(|| format!("writing block {b}"))?;
        b += n as u64;
    }
    f.sync_all().context("fsync")?;
    println!("stamp: {blocks} blocks stamped");
    Ok(ExitCode::SUCCESS)
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    errors: AtomicU64,
    wrong: AtomicU64,
}

/// Checks one read of `data` at `first`; counts and prints what is wrong.
fn verify(first: u64, data: &[u8], c: &Counts) {
    let mut bad = false;
    for (i, blk) in data.chunks_exact(BLOCK).enumerate() {
        let want = first + i as u64;
        match which(blk) {
            Some(got) if got == want => {}
            got => {
                if c.wrong.load(Ordering::Relaxed) < 20 {
                    match got {
                        Some(g) => println!("stamp: block {want} returned block {g}"),
                        None => println!("stamp: block {want} returned unstamped bytes"),
                    }
                }
                bad = true;
            }
        }
    }
    if bad {
        c.wrong.fetch_add(1, Ordering::Relaxed);
    }
}

fn check(dev: &Path, seconds: u64, threads: usize, bs: usize, all: bool) -> Result<ExitCode> {
    let bs = (bs / BLOCK).max(1) * BLOCK;
    let probe = open_direct(dev)?;
    let blocks = device_blocks(&probe)?;
    let per = (bs / BLOCK) as u64;
    let c = Arc::new(Counts::default());
    let started = Instant::now();
    if all {
        let mut buf = AlignedBuf::new(bs);
        let mut b = 0;
        while b + per <= blocks {
            c.reads.fetch_add(1, Ordering::Relaxed);
            match probe.read_exact_at(buf.bytes_mut(), b * BLOCK as u64) {
                Ok(()) => verify(b, buf.bytes(), &c),
                Err(e) => {
                    println!("stamp: read of block {b} failed: {e}");
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            b += per;
        }
    } else {
        let deadline = started + Duration::from_secs(seconds);
        let mut handles = Vec::new();
        for t in 0..threads {
            let f = open_direct(dev)?;
            let c = Arc::clone(&c);
            handles.push(thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
                let mut buf = AlignedBuf::new(bs);
                while Instant::now() < deadline {
                    let b = rng.u64(0..=(blocks - per) / per) * per;
                    c.reads.fetch_add(1, Ordering::Relaxed);
                    match f.read_exact_at(buf.bytes_mut(), b * BLOCK as u64) {
                        Ok(()) => verify(b, buf.bytes(), &c),
                        Err(_) => {
                            c.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for h in handles {
            let _ = h.join();
        }
    }
    let (reads, errors, wrong) = (
        c.reads.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.wrong.load(Ordering::Relaxed),
    );
    let good = reads - errors - wrong;
    println!(
        "stamp: {reads} reads of {bs} bytes in {:.1} s: {good} good, {errors} I/O errors, \
         {wrong} returned another block's bytes",
        started.elapsed().as_secs_f64()
    );
    println!("FIGURES stamp reads={reads} good={good} io_errors={errors} wrong={wrong}");
    let failed = wrong > 0 || good == 0 || (all && errors > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn run(args: &Args) -> Result<ExitCode> {
    match &args.cmd {
        Cmd::Write { dev } => write(dev),
        Cmd::Check {
            dev,
            seconds,
            threads,
            bs,
            all,
        } => check(dev, *seconds, *threads, *bs, *all),
    }
}
