//! `vmkit ackcheck`: every acknowledged write is on the medium.
//!
//! For each offset in the log, the image must hold the last logged write,
//! or a newer valid block for that offset: the writer may have been killed
//! after the device acknowledged a write but before it was logged.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use log::warn;

use crate::block::{self, Invalid};

/// How many missing blocks are described one by one.
const SHOW_MISSING: usize = 20;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image to check: the backing file, a saved RAM image or a block device
    #[arg(long)]
    image: PathBuf,
    /// Log written by `vmkit ackwrite`
    #[arg(long)]
    log: PathBuf,
    /// Bytes per block, as given to ackwrite
    #[arg(long, default_value_t = 4096)]
    block: u32,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    if args.block < block::MIN_BLOCK || args.block % 512 != 0 {
        bail!("--block {} must be a multiple of 512", args.block);
    }
    let text = std::fs::read_to_string(&args.log)
        .with_context(|| format!("reading log {}", args.log.display()))?;
    let expected = parse_log(&text);
    if expected.skipped > 0 {
        warn!(
            "{}: skipped {} malformed line(s) (a writer killed mid-append leaves one)",
            args.log.display(),
            expected.skipped
        );
    }
    let image = File::open(&args.image)
        .with_context(|| format!("opening image {}", args.image.display()))?;
    let report = check(&image, &expected.last, args.block)
        .with_context(|| format!("reading image {}", args.image.display()))?;
    for m in report.missing.iter().take(SHOW_MISSING) {
        eprintln!(
            "missing: offset {} seq {}: {}",
            m.offset, m.expected_seq, m.found
        );
    }
    if report.missing.len() > SHOW_MISSING {
        eprintln!("... and {} more", report.missing.len() - SHOW_MISSING);
    }
    println!(
        "checked {} blocks, {} missing",
        report.checked,
        report.missing.len()
    );
    Ok(if report.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The last acknowledged write of each offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub seq: u64,
    pub crc: u32,
}

pub struct ParsedLog {
    pub last: BTreeMap<u64, Acked>,
    pub skipped: usize,
}

/// Reads `seq offset crc` lines, keeping the highest seq per offset. Only
/// newline-terminated lines count: a line without one was being appended
/// when the writer died.
pub fn parse_log(text: &str) -> ParsedLog {
    let mut last: BTreeMap<u64, Acked> = BTreeMap::new();
    let mut skipped = 0;
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [seq, offset, crc] => seq
                .parse::<u64>()
                .ok()
                .zip(offset.parse::<u64>().ok())
                .zip(crc.parse::<u32>().ok()),
            _ => None,
        };
        let Some(((seq, offset), crc)) = parsed else {
            skipped += 1;
            continue;
        };
        let entry = last.entry(offset).or_insert(Acked { seq, crc });
        if seq >= entry.seq {
            *entry = Acked { seq, crc };
        }
    }
    if !text.is_empty() && !text.ends_with('\n') {
        skipped += 1;
    }
    ParsedLog { last, skipped }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Invalid(Invalid),
    /// A valid block of an older write: the acknowledged one was lost.
    Older(u64),
    /// The logged seq with another CRC: the log and the medium disagree.
    OtherCrc(u32),
    /// The image ends before the block.
    Short,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Invalid(i) => write!(f, "{i}"),
            Found::Older(s) => write!(f, "holds older seq {s}"),
            Found::OtherCrc(c) => write!(f, "holds crc {c}, log says otherwise"),
            Found::Short => write!(f, "image ends before this block"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub offset: u64,
    pub expected_seq: u64,
    pub found: Found,
}

pub struct Report {
    pub checked: usize,
    pub missing: Vec<Missing>,
}

pub fn check(image: &File, expected: &BTreeMap<u64, Acked>, block_size: u32) -> Result<Report> {
    let mut buf = vec![0u8; block_size as usize];
    let mut missing = Vec::new();
    for (&offset, acked) in expected {
        let found = match image.read_exact_at(&mut buf, offset) {
            Ok(()) => match block::decode(&buf, offset) {
                Ok(d) if d.seq == acked.seq && d.crc == acked.crc => None,
                Ok(d) if d.seq == acked.seq => Some(Found::OtherCrc(d.crc)),
                // Written after the last logged write of this offset and
                // possibly acknowledged: as good as the logged one.
                Ok(d) if d.seq > acked.seq => None,
                Ok(d) => Some(Found::Older(d.seq)),
                Err(i) => Some(Found::Invalid(i)),
            },
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Found::Short),
            Err(e) => return Err(e).with_context(|| format!("reading offset {offset}")),
        };
        if let Some(found) = found {
            missing.push(Missing {
                offset,
                expected_seq: acked.seq,
                found,
            });
        }
    }
    Ok(Report {
        checked: expected.len(),
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const BS: u32 = 512;

    fn image_with(blocks: &[(u64, u64)], len: u64) -> (tempfile::NamedTempFile, String) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let mut log = String::new();
        let mut buf = vec![0u8; BS as usize];
        for &(seq, offset) in blocks {
            let crc = block::fill(&mut buf, seq, offset);
            f.as_file().write_all_at(&buf, offset).unwrap();
            log.push_str(&format!("{seq} {offset} {crc}\n"));
        }
        f.flush().unwrap();
        (f, log)
    }

    #[test]
    fn all_present() {
        let (img, log) = image_with(&[(1, 0), (2, 1024), (3, 0)], 4096);
        let parsed = parse_log(&log);
        assert_eq!(parsed.last.len(), 2);
        assert_eq!(parsed.last[&0].seq, 3);
        let r = check(img.as_file(), &parsed.last, BS).unwrap();
        assert_eq!(r.checked, 2);
        assert!(r.missing.is_empty(), "{:?}", r.missing);
    }

    #[test]
    fn lost_write_is_missing() {
        let (img, mut log) = image_with(&[(1, 512), (2, 512)], 4096);
        // Seq 3 was acknowledged but the medium still holds seq 2.
        let mut buf = vec![0u8; BS as usize];
        let crc = block::fill(&mut buf, 3, 512);
        log.push_str(&format!("3 512 {crc}\n"));
        // And seq 4 was acknowledged at 2048 but never landed at all.
        let crc = block::fill(&mut buf, 4, 2048);
        log.push_str(&format!("4 2048 {crc}\n"));
        let parsed = parse_log(&log);
        let r = check(img.as_file(), &parsed.last, BS).unwrap();
        assert_eq!(r.checked, 2);
        assert_eq!(
            r.missing,
            vec![
                Missing {
                    offset: 512,
                    expected_seq: 3,
                    found: Found::Older(2)
                },
                Missing {
                    offset: 2048,
                    expected_seq: 4,
                    found: Found::Invalid(Invalid::NoMagic)
                },
            ]
        );
    }

    #[test]
    fn newer_unlogged_write_is_accepted() {
        let (img, _) = image_with(&[(1, 0), (5, 0)], 1024);
        // The log stops at seq 1: seq 5 was acknowledged but not logged.
        let mut buf = vec![0u8; BS as usize];
        let crc = block::fill(&mut buf, 1, 0);
        let parsed = parse_log(&format!("1 0 {crc}\n"));
        let r = check(img.as_file(), &parsed.last, BS).unwrap();
        assert!(r.missing.is_empty());
    }

    #[test]
    fn torn_block_and_short_image() {
        let (img, log) = image_with(&[(1, 0), (2, 512)], 1024);
        img.as_file().write_all_at(&[0xff; 16], 100).unwrap();
        let mut parsed = parse_log(&log);
        parsed.last.insert(4096, Acked { seq: 3, crc: 0 });
        let r = check(img.as_file(), &parsed.last, BS).unwrap();
        let found: Vec<_> = r.missing.iter().map(|m| m.found.clone()).collect();
        assert_eq!(found, vec![Found::Invalid(Invalid::BadCrc), Found::Short]);
    }

    #[test]
    fn partial_and_malformed_lines_are_skipped() {
        let parsed = parse_log("1 0 5\ngarbage\n2 512 7\n3 10");
        assert_eq!(parsed.skipped, 2);
        assert_eq!(parsed.last.len(), 2);
        assert!(!parsed.last.contains_key(&10));
    }
}
