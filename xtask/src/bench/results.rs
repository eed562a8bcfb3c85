//! What the guest measured (results.tsv, profile.tsv, guest.tsv) and what
//! follows from it: medians per system and job, ratios, the targets.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// The systems, in run and report order. `brd` is the ceiling every ratio is
/// taken against.
pub const SYSTEMS: &[System] = &[
    System {
        name: "brd",
        what: "kernel ramdisk (`brd`): the ceiling, no userspace at all",
    },
    System {
        name: "null_blk",
        what: "`null_blk`: the block layer alone, no data moved",
    },
    System {
        name: "usrbd-ram",
        what: "usrbd, `usrbd serve --backend ram --queues 2 --depth 64`",
    },
    System {
        name: "usrbd-file",
        what: "usrbd, `usrbd serve --backend file` on a tmpfs file, `--queues 2 --depth 64`",
    },
    System {
        name: "ublk-loop",
        what: "ublk, `rublk add loop --buffered-io -q 2 -d 64` on a tmpfs file",
    },
    System {
        name: "nbd",
        what: "nbd, `qemu-nbd -c /dev/nbd0 -k <unix socket>` on a tmpfs file (kernel nbd client)",
    },
];

pub struct System {
    pub name: &'static str,
    pub what: &'static str,
}

/// The fio jobs (tests/bench/jobs/<name>.fio), in run and report order.
pub const JOBS: &[&str] = &[
    "randread-4k-qd1",
    "randread-4k-qd32",
    "randwrite-4k-qd32",
    "seqread-1m-qd8",
    "seqwrite-1m-qd8",
];

/// One fio run of one job on one system.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub system: String,
    pub job: String,
    pub run: u32,
    pub iops: f64,
    pub bw_bytes: f64,
    pub p99_ns: f64,
    /// utime + stime of the serving process over the run (clock ticks).
    pub cpu_ticks: u64,
    /// Bytes read plus written through the device over the run.
    pub dev_bytes: u64,
    pub rss_kb: u64,
}

/// The service's syscalls and context switches over part of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub system: String,
    pub job: String,
    /// Requests the device completed in the profiled window.
    pub requests: u64,
    pub seconds: f64,
    pub syscalls: f64,
    pub ioctls: f64,
    pub uring_enters: f64,
    /// Context switches, voluntary or not (perf's `context-switches`).
    pub switches: f64,
    /// Voluntary context switches: the times the server went to sleep.
    pub sleeps: f64,
}

impl Profile {
    fn per_request(&self, n: f64) -> Option<f64> {
        (self.requests > 0).then(|| n / self.requests as f64)
    }
    pub fn syscalls_per_request(&self) -> Option<f64> {
        self.per_request(self.syscalls)
    }
    pub fn switches_per_request(&self) -> Option<f64> {
        self.per_request(self.switches)
    }
    pub fn sleeps_per_request(&self) -> Option<f64> {
        self.per_request(self.sleeps)
    }
    /// Requests per "serve" syscall: SERVE ioctls for usrbd, io_uring_enter
    /// for ublk; None for a server that uses neither (qemu-nbd's socket I/O).
    pub fn requests_per_call(&self) -> Option<f64> {
        let calls = if self.system.starts_with("usrbd") {
            self.ioctls
        } else if self.system.starts_with("ublk") {
            self.uring_enters
        } else {
            return None;
        };
        (calls > 0.0).then(|| self.requests as f64 / calls)
    }
}

fn field<'a>(fields: &[&'a str], i: usize, line: &str) -> Result<&'a str> {
    fields
        .get(i)
        .copied()
        .with_context(|| format!("field {} missing in `{line}`", i + 1))
}

fn num<T: std::str::FromStr>(fields: &[&str], i: usize, line: &str) -> Result<T> {
    let text = field(fields, i, line)?;
    text.parse()
        .ok()
        .with_context(|| format!("field {} is not a number (`{text}`) in `{line}`", i + 1))
}

/// `run SYSTEM JOB RUN IOPS BW P99 TICKS BYTES RSS` lines (guest.sh).
pub fn parse_samples(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("run\t")) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 10 {
            bail!("want 10 fields, got {}: `{line}`", f.len());
        }
        out.push(Sample {
            system: f[1].to_string(),
            job: f[2].to_string(),
            run: num(&f, 3, line)?,
            iops: num(&f, 4, line)?,
            bw_bytes: num(&f, 5, line)?,
            p99_ns: num(&f, 6, line)?,
            cpu_ticks: num(&f, 7, line)?,
            dev_bytes: num(&f, 8, line)?,
            rss_kb: num(&f, 9, line)?,
        });
    }
    Ok(out)
}

/// `prof SYSTEM JOB REQUESTS SECONDS SYSCALLS IOCTLS URING CSW SLEEPS` lines.
pub fn parse_profiles(text: &str) -> Result<Vec<Profile>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("prof\t")) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 10 {
            bail!("want 10 fields, got {}: `{line}`", f.len());
        }
        out.push(Profile {
            system: f[1].to_string(),
            job: f[2].to_string(),
            requests: num(&f, 3, line)?,
            seconds: num(&f, 4, line)?,
            syscalls: num(&f, 5, line)?,
            ioctls: num(&f, 6, line)?,
            uring_enters: num(&f, 7, line)?,
            switches: num(&f, 8, line)?,
            sleeps: num(&f, 9, line)?,
        });
    }
    Ok(out)
}

/// `KEY<TAB>VALUE` lines.
pub fn parse_pairs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Medians of one job on one system.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub runs: usize,
    pub iops: f64,
    pub bw_bytes: f64,
    pub p99_ns: f64,
    /// Service CPU seconds per GiB moved; None when the kernel serves alone.
    pub cpu_s_per_gib: Option<f64>,
}

/// Medians per (system, job).
pub struct Table {
    cells: BTreeMap<(String, String), Cell>,
    /// Largest VmRSS seen per serving system.
    pub rss_kb: BTreeMap<String, u64>,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

impl Table {
    /// `hz`: clock ticks per second (CLK_TCK in the guest).
    pub fn new(samples: &[Sample], hz: f64) -> Table {
        let mut groups: BTreeMap<(String, String), Vec<&Sample>> = BTreeMap::new();
        let mut rss_kb: BTreeMap<String, u64> = BTreeMap::new();
        for s in samples {
            groups
                .entry((s.system.clone(), s.job.clone()))
                .or_default()
                .push(s);
            if s.rss_kb > 0 {
                let r = rss_kb.entry(s.system.clone()).or_default();
                *r = (*r).max(s.rss_kb);
            }
        }
        let cells = groups
            .into_iter()
            .filter_map(|(key, runs)| {
                let pick =
                    |f: fn(&Sample) -> f64| median(&runs.iter().map(|s| f(s)).collect::<Vec<_>>());
                let serving = runs.iter().any(|s| s.rss_kb > 0);
                let cpu: Vec<f64> = runs
                    .iter()
                    .filter(|s| s.dev_bytes > 0)
                    .map(|s| s.cpu_ticks as f64 / hz / (s.dev_bytes as f64 / GIB))
                    .collect();
                let cell = Cell {
                    runs: runs.len(),
                    iops: pick(|s| s.iops)?,
                    bw_bytes: pick(|s| s.bw_bytes)?,
                    p99_ns: pick(|s| s.p99_ns)?,
                    cpu_s_per_gib: if serving { median(&cpu) } else { None },
                };
                Some((key, cell))
            })
            .collect();
        Table { cells, rss_kb }
    }

    pub fn get(&self, system: &str, job: &str) -> Option<&Cell> {
        self.cells.get(&(system.to_string(), job.to_string()))
    }

    /// `system`'s median IOPS over `base`'s on `job` (the bandwidth ratio
    /// too: block size is fixed per job).
    pub fn ratio(&self, system: &str, base: &str, job: &str) -> Option<f64> {
        let a = self.get(system, job)?;
        let b = self.get(base, job)?;
        (b.iops > 0.0).then(|| a.iops / b.iops)
    }
}

/// A goal from the issue: `system` reaches at least `min` times `base` on `job`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub system: &'static str,
    pub base: &'static str,
    pub job: &'static str,
    pub min: f64,
}

pub fn targets() -> Vec<Target> {
    let mut t = vec![
        Target {
            system: "usrbd-ram",
            base: "brd",
            job: "randread-4k-qd32",
            min: 0.5,
        },
        Target {
            system: "usrbd-ram",
            base: "brd",
            job: "seqread-1m-qd8",
            min: 0.6,
        },
    ];
    // Like for like: both serve a buffered file on the same tmpfs.
    t.extend(JOBS.iter().map(|job| Target {
        system: "usrbd-file",
        base: "ublk-loop",
        job,
        min: 1.0,
    }));
    t.extend(["randread-4k-qd32", "randwrite-4k-qd32"].map(|job| Target {
        system: "usrbd-ram",
        base: "nbd",
        job,
        min: 2.0,
    }));
    t
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Pass(f64),
    Miss(f64),
    /// One of the two systems was not run.
    NotRun,
}

pub fn judge(table: &Table, t: &Target) -> Verdict {
    match table.ratio(t.system, t.base, t.job) {
        Some(r) if r >= t.min => Verdict::Pass(r),
        Some(r) => Verdict::Miss(r),
        None => Verdict::NotRun,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(system: &str, job: &str, run: u32, iops: f64) -> Sample {
        Sample {
            system: system.into(),
            job: job.into(),
            run,
            iops,
            bw_bytes: iops * 4096.0,
            p99_ns: 1000.0 * f64::from(run),
            cpu_ticks: 100,
            dev_bytes: 1 << 30,
            rss_kb: if system == "brd" { 0 } else { 2048 },
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn samples_parse_and_reject_short_lines() {
        let text = "run\tbrd\trandread-4k-qd1\t2\t1234.5\t5056512\t8160\t0\t123\t0\n\
                    bench: noise\n";
        let s = parse_samples(text).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].run, 2);
        assert_eq!(s[0].iops, 1234.5);
        assert_eq!(s[0].dev_bytes, 123);
        assert!(parse_samples("run\tbrd\tx\t1\n").is_err());
        assert!(parse_samples("run\tbrd\tj\tone\t1\t1\t1\t0\t0\t0\n").is_err());
    }

    #[test]
    fn profiles_parse_and_count_per_request() {
        let p = parse_profiles("prof\tusrbd-ram\tj\t1000\t3.0\t2500\t500\t0\t800\t600\n").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].syscalls_per_request(), Some(2.5));
        assert_eq!(p[0].switches_per_request(), Some(0.8));
        assert_eq!(p[0].sleeps_per_request(), Some(0.6));
        assert!(parse_profiles("prof\tusrbd-ram\tj\t1000\t3.0\t2500\t500\t0\t800\n").is_err());
        assert_eq!(p[0].requests_per_call(), Some(2.0));
        let nbd = Profile {
            system: "nbd".into(),
            ..p[0].clone()
        };
        assert_eq!(nbd.requests_per_call(), None);
    }

    #[test]
    fn table_takes_medians_ratios_and_cpu_per_gib() {
        let s = vec![
            sample("brd", "j", 1, 100.0),
            sample("brd", "j", 2, 300.0),
            sample("brd", "j", 3, 200.0),
            sample("usrbd-ram", "j", 1, 50.0),
            sample("usrbd-ram", "j", 2, 10.0),
            sample("usrbd-ram", "j", 3, 90.0),
        ];
        let t = Table::new(&s, 100.0);
        let brd = t.get("brd", "j").unwrap();
        assert_eq!(brd.iops, 200.0);
        assert_eq!(brd.p99_ns, 2000.0);
        assert_eq!(brd.cpu_s_per_gib, None, "nothing serves brd");
        let u = t.get("usrbd-ram", "j").unwrap();
        assert_eq!(u.cpu_s_per_gib, Some(1.0), "100 ticks at 100 Hz over 1 GiB");
        assert_eq!(t.ratio("usrbd-ram", "brd", "j"), Some(0.25));
        assert_eq!(t.ratio("usrbd-ram", "nbd", "j"), None);
        assert_eq!(t.rss_kb.get("usrbd-ram"), Some(&2048));
        assert!(!t.rss_kb.contains_key("brd"));
    }

    #[test]
    fn targets_pass_miss_and_not_run() {
        let s = vec![
            sample("brd", "randread-4k-qd32", 1, 100.0),
            sample("usrbd-ram", "randread-4k-qd32", 1, 49.0),
            sample("brd", "seqread-1m-qd8", 1, 100.0),
            sample("usrbd-ram", "seqread-1m-qd8", 1, 60.0),
        ];
        let t = Table::new(&s, 100.0);
        let all = targets();
        assert_eq!(all.len(), 9);
        assert_eq!(judge(&t, &all[0]), Verdict::Miss(0.49));
        assert_eq!(judge(&t, &all[1]), Verdict::Pass(0.6));
        assert_eq!(judge(&t, &all[2]), Verdict::NotRun);
    }
}
