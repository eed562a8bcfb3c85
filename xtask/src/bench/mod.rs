//! `cargo xtask bench`: fio side by side on usrbd (ram and file backends),
//! brd, null_blk, ublk (rublk) and nbd (qemu-nbd), all in one VM boot; writes
//! docs/benchmarks.md and the plot docs/benchmarks.svg from the medians.

mod report;
mod results;
mod svg;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::module;
use crate::setup::{self, apt, Paths, Scope};
use crate::test::build_release;
use crate::vm::Vm;
use results::{Table, JOBS, SYSTEMS};

const USAGE: &str = "\
usage: cargo xtask bench [--runs N] [--runtime S] [--size MIB]
                         [--systems a,b,..] [--jobs a,b,..] [--no-profile] [--no-docs]

  --runs N        runs of every job on every system; medians are reported (default 3)
  --runtime S     seconds per fio run (default 5)
  --size MIB      size of every device (default 128)
  --systems LIST  subset of: brd,null_blk,usrbd-ram,usrbd-file,ublk-loop,nbd
  --jobs LIST     subset of: randread-4k-qd1,randread-4k-qd32,randwrite-4k-qd32,
                  seqread-1m-qd8,seqwrite-1m-qd8
  --no-profile    skip the perf-counted runs (syscalls, switches per request)
  --no-docs       print the report, leave docs/benchmarks.{md,svg} alone
";

/// crates.io version of rublk the ublk baseline is built from.
const RUBLK_VERSION: &str = "0.2.15";
const VCPUS: u32 = 2;
const MEMORY: &str = "3G";
/// Boot, guest setup, device fills and teardown.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(300);
/// Starting fio under TCG (it links many libraries), once per system and run.
const PER_FIO_START_S: u64 = 30;
/// The accounting hooks and result parsing of one job.
const PER_JOB_SLACK_S: u64 = 10;
/// Starting fio and perf for one profiled run.
const PER_PROFILE_SLACK_S: u64 = 60;
/// Jobs profiled per serving system (tests/bench/guest.sh), plus the two
/// runs of usrbd-ram with the module's busy-poll on.
const PROFILED_JOBS: usize = 3;
const POLLED_RUNS: u64 = 2;
/// poll_spin_us for those two runs: a few request round trips under TCG.
const POLL_US: u32 = 50;

#[derive(Debug, PartialEq)]
struct Options {
    runs: u32,
    runtime_s: u32,
    size_mib: u32,
    systems: Vec<&'static str>,
    jobs: Vec<&'static str>,
    profile: bool,
    docs: bool,
}

/// `a,b` → the known names among `known`, in `known`'s order.
fn subset(list: &str, known: &[&'static str], what: &str) -> Result<Vec<&'static str>> {
    let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(bad) = wanted.iter().find(|w| !known.contains(w)) {
        bail!("unknown {what} `{bad}` (known: {})", known.join(", "));
    }
    Ok(known
        .iter()
        .copied()
        .filter(|k| wanted.contains(k))
        .collect())
}

fn parse_args(args: &[String]) -> Result<Options> {
    let systems: Vec<&'static str> = SYSTEMS.iter().map(|s| s.name).collect();
    let mut o = Options {
        runs: 3,
        runtime_s: 5,
        size_mib: 128,
        systems: systems.clone(),
        jobs: JOBS.to_vec(),
        profile: true,
        docs: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        let number = |v: String, name: &str| -> Result<u32> {
            match v.parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => bail!("{name} wants a positive number, got `{v}`"),
            }
        };
        match a.as_str() {
            "--runs" => o.runs = number(value("--runs")?, "--runs")?,
            "--runtime" => o.runtime_s = number(value("--runtime")?, "--runtime")?,
            "--size" => o.size_mib = number(value("--size")?, "--size")?,
            "--systems" => o.systems = subset(&value("--systems")?, &systems, "system")?,
            "--jobs" => o.jobs = subset(&value("--jobs")?, JOBS, "job")?,
            "--no-profile" => o.profile = false,
            "--no-docs" => o.docs = false,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    if o.runtime_s < 3 && o.profile {
        bail!("--runtime below 3 s leaves nothing to profile; add --no-profile");
    }
    Ok(o)
}

/// rublk from crates.io, built once into target/bench-tools (never committed).
fn ensure_rublk(paths: &Paths) -> Result<PathBuf> {
    let root = paths.target().join("bench-tools");
    let bin = root.join("bin/rublk");
    if bin.exists() {
        return Ok(bin);
    }
    // bindgen (a build dependency of rublk) loads libclang.
    apt::install_missing(&["libclang-dev"]).context("installing libclang-dev for rublk")?;
    eprintln!("xtask: building rublk {RUBLK_VERSION} from crates.io (once, ~4 min on 2 cores)");
    cmd::run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "--locked", "--version", RUBLK_VERSION, "--root"])
            .arg(&root)
            .arg("rublk"),
    )?;
    Ok(bin)
}

/// Host programs the guest runs (virtme-ng shares the host's root).
fn check_host_tools() -> Result<()> {
    let needed = [
        ("fio", "fio"),
        ("jq", "jq"),
        ("perf", "linux-perf"),
        ("qemu-nbd", "qemu-utils"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(prog, _)| {
            !cmd::succeeds(Command::new("sh").args(["-c", &format!("command -v {prog}")]))
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing host packages: apt-get install {}",
            missing.join(" ")
        );
    }
    Ok(())
}

fn first_line(mut c: Command) -> String {
    cmd::stdout(&mut c)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn load_1min() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn host_cpu() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "?".to_string())
}

fn host_facts(repo: &Path) -> BTreeMap<String, String> {
    let mut h = BTreeMap::new();
    let mut date = Command::new("date");
    date.args(["-u", "+%Y-%m-%d %H:%M UTC"]);
    h.insert("date".into(), first_line(date));
    let mut git = Command::new("git");
    git.args(["rev-parse", "--short", "HEAD"]).current_dir(repo);
    h.insert("commit".into(), first_line(git));
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.arg("--version");
    h.insert("qemu".into(), first_line(qemu));
    h.insert(
        "host_cpu".into(),
        format!("{} ({} online)", host_cpu(), num_cpus()),
    );
    h
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let started = Instant::now();
    let paths = Paths::new();
    let env = setup::ensure(&paths, Scope::Vm)?;
    check_host_tools()?;
    let rublk = ensure_rublk(&paths)?;
    eprintln!("xtask: building usrbd.ko for {}", env.kernel);
    let ko = module::build(&paths, &env.kernel)?.ko;
    let (usrbd, _) = build_release(&paths)?;

    let dir = paths.xdir.join("bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let jobs_dir = paths.repo.join("tests/bench/jobs");
    let plan = dir.join("bench.plan");
    fs::write(
        &plan,
        format!(
            "# written by cargo xtask bench; sourced by tests/bench/guest.sh\n\
             USRBD='{}'\nUSRBD_KO='{}'\nRUBLK='{}'\nJOBS_DIR='{}'\nOUT='{}'\n\
             JOBS='{}'\nSYSTEMS='{}'\nRUNS={}\nRUNTIME={}\nSIZE_MB={}\nPROFILE={}\nPOLL_US={POLL_US}\n",
            usrbd.display(),
            ko.display(),
            rublk.display(),
            jobs_dir.display(),
            dir.display(),
            opts.jobs.join(" "),
            opts.systems.join(" "),
            opts.runs,
            opts.runtime_s,
            opts.size_mib,
            u8::from(opts.profile)
        ),
    )?;

    let mut host = host_facts(&paths.repo);
    host.insert("load_before".into(), load_1min());
    let blocks = u64::from(opts.runs) * opts.systems.len() as u64;
    let per_block =
        opts.jobs.len() as u64 * (u64::from(opts.runtime_s) + PER_JOB_SLACK_S) + PER_FIO_START_S;
    let profiled = if opts.profile {
        PROFILED_JOBS as u64 * opts.systems.len() as u64 + POLLED_RUNS
    } else {
        0
    };
    let budget = BOOT_ALLOWANCE
        + Duration::from_secs(
            blocks * per_block + profiled * (u64::from(opts.runtime_s) + PER_PROFILE_SLACK_S),
        );
    let vm = Vm {
        vng: env.vng.clone(),
        kernel: env.kernel.clone(),
        cpus: VCPUS,
        memory: MEMORY.to_string(),
        rwdir: dir.clone(),
        cwd: paths.repo.clone(),
    };
    eprintln!(
        "xtask: booting {} ({VCPUS} vCPUs, {MEMORY}) for {blocks} fio blocks, at most {} s",
        env.kernel,
        budget.as_secs()
    );
    let exec = format!(
        "sh {} {}",
        paths.repo.join("tests/bench/guest.sh").display(),
        plan.display()
    );
    let console = dir.join("console.log");
    let mut outcome: Option<String> = None;
    let ended = vm.run(&exec, budget, &console, |line| {
        if let Some(msg) = line.strip_prefix("bench: ") {
            eprintln!("  {msg}");
            // After the "[uptime] " stamp.
            let text = msg.split_once("] ").map_or(msg, |(_, t)| t);
            if text == "done" || text.starts_with("FAILED") {
                outcome = Some(text.to_string());
            }
        }
    })?;
    host.insert("load_after".into(), load_1min());
    if outcome.as_deref() != Some("done") {
        bail!(
            "the benchmark did not finish ({}{}); console: {}\n{}",
            outcome.unwrap_or_else(|| format!("vng exit {:?}", ended.code)),
            if ended.timed_out { ", timed out" } else { "" },
            console.display(),
            cmd::tail(&fs::read_to_string(&console).unwrap_or_default(), 30)
        );
    }

    let read = |name: &str| {
        let p = dir.join(name);
        fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let samples = results::parse_samples(&read("results.tsv")?)?;
    let profiles = results::parse_profiles(&read("profile.tsv")?)?;
    let guest = results::parse_pairs(&read("guest.tsv")?);
    let hz: f64 = guest
        .get("hz")
        .and_then(|h| h.parse().ok())
        .unwrap_or(100.0);
    let table = Table::new(&samples, hz);

    let job_files = opts
        .jobs
        .iter()
        .map(|j| {
            let p = jobs_dir.join(format!("{j}.fio"));
            fs::read_to_string(&p)
                .map(|t| (j.to_string(), t))
                .with_context(|| format!("reading {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let plotted: Vec<&str> = opts
        .systems
        .iter()
        .copied()
        .filter(|s| *s != "brd")
        .collect();
    let groups: Vec<svg::Group> = opts
        .jobs
        .iter()
        .map(|job| svg::Group {
            label: job.to_string(),
            values: plotted.iter().map(|s| table.ratio(s, "brd", job)).collect(),
        })
        .collect();
    let plot = svg::chart(
        &format!(
            "IOPS relative to brd (median of {} runs, QEMU TCG, 2 vCPUs)",
            opts.runs
        ),
        &plotted,
        &groups,
    );
    let md = report::markdown(&report::Run {
        table: &table,
        profiles: &profiles,
        guest: &guest,
        host: &host,
        systems: &opts.systems,
        jobs: &opts.jobs,
        runs: opts.runs,
        runtime_s: opts.runtime_s,
        size_mib: opts.size_mib,
        job_files: &job_files,
        plot: "benchmarks.svg",
    });
    fs::write(dir.join("benchmarks.md"), &md)?;
    fs::write(dir.join("benchmarks.svg"), &plot)?;
    if opts.docs {
        let docs = paths.repo.join("docs");
        fs::create_dir_all(&docs)?;
        fs::write(docs.join("benchmarks.md"), &md)?;
        fs::write(docs.join("benchmarks.svg"), &plot)?;
        eprintln!("xtask: wrote docs/benchmarks.md and docs/benchmarks.svg");
    } else {
        println!("{md}");
    }
    eprintln!(
        "xtask: bench done in {:.0} s (results in {})",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_cover_everything() {
        let o = parse_args(&[]).unwrap();
        assert_eq!(o.runs, 3);
        assert_eq!(o.runtime_s, 5);
        assert_eq!(o.systems.len(), SYSTEMS.len());
        assert_eq!(o.jobs, JOBS);
        assert!(o.profile && o.docs);
    }

    #[test]
    fn subsets_keep_the_canonical_order_and_reject_unknown_names() {
        let o = parse_args(&args(&[
            "--systems",
            "nbd,brd",
            "--jobs",
            "seqread-1m-qd8",
            "--runs",
            "1",
            "--no-docs",
        ]))
        .unwrap();
        assert_eq!(o.systems, ["brd", "nbd"]);
        assert_eq!(o.jobs, ["seqread-1m-qd8"]);
        assert_eq!(o.runs, 1);
        assert!(!o.docs);
        assert!(parse_args(&args(&["--systems", "loop"])).is_err());
        assert!(parse_args(&args(&["--runs", "0"])).is_err());
        assert!(parse_args(&args(&["--runs"])).is_err());
        assert!(parse_args(&args(&["--runtime", "2"])).is_err());
        assert!(parse_args(&args(&["--runtime", "2", "--no-profile"])).is_ok());
    }
}
