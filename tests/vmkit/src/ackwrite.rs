//! `vmkit ackwrite`: random block writes, each logged only once durable.
//!
//! Every logged line is a write the device acknowledged as durable
//! (write + fdatasync returned), so after any crash or detach `ackcheck`
//! must find it (or a later write of the same offset) on the medium.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use log::{info, warn};

use crate::{block, stop};

/// O_DIRECT wants buffers aligned to the logical block size; 4096 covers all.
const DIRECT_ALIGN: usize = 4096;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Block device or file to write (opened read-write)
    #[arg(long)]
    dev: PathBuf,
    /// Log of acknowledged writes (`seq offset crc` per line); must not live on --dev
    #[arg(long)]
    log: PathBuf,
    /// Bytes per write, a multiple of 512
    #[arg(long, default_value_t = 4096)]
    block: u32,
    /// Stop after this many seconds (default: run until SIGTERM/SIGINT or an I/O error)
    #[arg(long)]
    seconds: Option<u64>,
    /// Write only within the first BYTES of the device (default: all of it)
    #[arg(long)]
    span: Option<u64>,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    if args.block < block::MIN_BLOCK || args.block % 512 != 0 {
        bail!("--block {} must be a multiple of 512", args.block);
    }
    stop::install()?;
    let (mut dev, direct) = open_dev(&args.dev)?;
    let size = dev
        .seek(SeekFrom::End(0))
        .with_context(|| format!("sizing {}", args.dev.display()))?;
    let span = args.span.map_or(size, |s| s.min(size));
    let blocks = span / u64::from(args.block);
    if blocks == 0 {
        bail!(
            "{}: span of {span} bytes holds no {}-byte block",
            args.dev.display(),
            args.block
        );
    }
    let previous = read_previous_log(&args.log)?;
    let mut seq = previous.last_seq + 1;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("opening log {}", args.log.display()))?;
    if previous.torn_tail {
        // Keep a line cut short by a kill apart from the next one.
        writeln!(log).with_context(|| format!("appending to log {}", args.log.display()))?;
    }
    info!(
        "writing {}-byte blocks to {} ({} blocks, direct={direct}), first seq {seq}",
        args.block,
        args.dev.display(),
        blocks
    );

    let mut storage = vec![0u8; args.block as usize + DIRECT_ALIGN];
    let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &mut storage[start..start + args.block as usize];
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut rng = fastrand::Rng::new();
    let mut acked: u64 = 0;
    let mut failed = false;

    while !stop::requested() && deadline.map_or(true, |d| Instant::now() < d) {
        let offset = rng.u64(0..blocks) * u64::from(args.block);
        let crc = block::fill(buf, seq, offset);
        if let Err(e) = write_durably(&dev, buf, offset) {
            eprintln!("ackwrite: I/O error writing seq {seq} at offset {offset}: {e}");
            // A failure caused by our own shutdown (EINTR surfacing) is not a finding.
            failed = !stop::requested();
            break;
        }
        writeln!(log, "{seq} {offset} {crc}")
            .and_then(|()| log.sync_data())
            .with_context(|| format!("appending to log {}", args.log.display()))?;
        acked += 1;
        seq += 1;
    }
    println!("acknowledged {acked} blocks");
    io::stdout().flush().context("flushing stdout")?;
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_durably(dev: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    dev.write_all_at(buf, offset)?;
    dev.sync_data()
}

/// Opens a block device with O_DIRECT (so each write really reaches the
/// driver) when it allows it; files go through the page cache and rely on
/// fdatasync alone.
fn open_dev(path: &Path) -> Result<(File, bool)> {
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.file_type().is_block_device() {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                warn!("{}: O_DIRECT refused, using buffered I/O", path.display());
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((f, false))
}

struct PreviousLog {
    last_seq: u64,
    torn_tail: bool,
}

/// Continues the numbering of an existing log so one log can span runs.
fn read_previous_log(path: &Path) -> Result<PreviousLog> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading log {}", path.display())),
    };
    let last_seq = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok(PreviousLog {
        last_seq,
        torn_tail: !text.is_empty() && !text.ends_with('\n'),
    })
}
