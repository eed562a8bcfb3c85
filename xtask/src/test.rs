//! `cargo xtask test|demo|vm|kmod`: the VM harness.
//!
//! `test` is what CI runs: setup, host checks, module builds and checkpatch,
//! the release build, then every scenario in tests/scenarios/, grouped so the
//! VM boots once per group. It ends with the line `N passed, M failed`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::module;
use crate::scenarios::{self, Outcome, Scenario, GROUPS};
use crate::setup::{self, Env, Paths, Scope};
use crate::vm::Vm;

const TEST_USAGE: &str = "\
usage: cargo xtask test [--vm-only] [--filter NAME]... | --pagesize 16k

  --vm-only      only the x86 VM scenarios (no fmt/clippy/cargo test, 6.1
                 build, checkpatch, arm64 tier or image tier)
  --filter NAME  run only x86 scenarios whose name contains NAME (repeatable;
                 skips the arm64 and image tiers)
  --pagesize 16k only the module and the aarch64 service on an arm64 kernel
                 with 16 KiB pages (built once from linux-source-6.12) in
                 QEMU virt: not part of the default run
";

/// Boot, guest setup and slack per VM on top of the scenarios' own timeouts.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(240);
/// Runner cleanup and dmesg checks per scenario.
const PER_SCENARIO_SLACK_S: u64 = 60;

/// Pass/fail lines as they happen, and the closing count.
pub(crate) struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    pub(crate) fn new() -> Self {
        Report {
            passed: 0,
            failed: 0,
        }
    }

    fn record(&mut self, name: &str, ok: bool, seconds: f64) {
        if ok {
            self.passed += 1;
            println!("PASS {name} ({seconds:.1} s)");
        } else {
            self.failed += 1;
            println!("FAIL {name} ({seconds:.1} s)");
        }
    }

    /// Runs one host step, prints its line; the error text follows a failure.
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Option<T> {
        let start = Instant::now();
        let result = f();
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(v) => {
                self.record(name, true, secs);
                Some(v)
            }
            Err(e) => {
                self.record(name, false, secs);
                println!("{}", indent(&format!("{e:#}")));
                None
            }
        }
    }

    /// Counts from a tier that prints its own PASS/FAIL lines.
    fn tier(&mut self, name: &str, f: impl FnOnce() -> Result<(usize, usize)>) {
        eprintln!("xtask: {name}");
        let start = Instant::now();
        match f() {
            Ok((passed, failed)) => {
                self.passed += passed;
                self.failed += failed;
            }
            Err(e) => {
                self.record(name, false, start.elapsed().as_secs_f64());
                println!("{}", indent(&format!("{e:#}")));
            }
        }
    }

    pub(crate) fn finish(&self) -> ! {
        println!("{} passed, {} failed", self.passed, self.failed);
        std::process::exit(if self.failed == 0 { 0 } else { 1 });
    }
}

pub(crate) fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(Paths::new().repo);
    c
}

pub fn build_release(paths: &Paths) -> Result<(PathBuf, PathBuf)> {
    cmd::run(cargo().args(["build", "--release", "-p", "usrbd", "-p", "vmkit"]))?;
    let dir = paths.target().join("release");
    Ok((dir.join("usrbd"), dir.join("vmkit")))
}

/// The release build the test VM runs. Fat LTO with one codegen unit (the
/// shipped profile, which `build_release` keeps for benchmarks) costs ~8
/// minutes on 2 cores and changes nothing the scenarios can observe.
fn build_for_vm(paths: &Paths) -> Result<(PathBuf, PathBuf)> {
    cmd::run(
        cargo()
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            .args(["build", "--release", "-p", "usrbd", "-p", "vmkit"]),
    )?;
    let dir = paths.target().join("release");
    Ok((dir.join("usrbd"), dir.join("vmkit")))
}

/// What the guest scripts get: the plan file the runner, demo and shell read.
pub(crate) struct Guest {
    pub(crate) usrbd: PathBuf,
    pub(crate) vmkit: PathBuf,
    pub(crate) ko: PathBuf,
    pub(crate) dir: PathBuf,
    /// More shell lines for the plan (the soak sets USRBD_SOAK=1 here).
    pub(crate) extra_env: String,
}

impl Guest {
    /// A shell fragment with the environment every guest script expects.
    fn plan(&self, paths: &Paths, extra: &str) -> String {
        format!(
            "# written by cargo xtask; sourced by the guest scripts\n\
             export USRBD='{}'\n\
             export VMKIT='{}'\n\
             export USRBD_KO='{}'\n\
             export USRBD_TESTS='{}'\n\
             export USRBD_VMDIR='{}'\n\
             export USRBD_RWDIR='{}'\n\
             {}{extra}",
            self.usrbd.display(),
            self.vmkit.display(),
            self.ko.display(),
            paths.repo.join("tests").display(),
            self.dir.display(),
            self.dir.join("data").display(),
            self.extra_env,
        )
    }
}

struct TestOptions {
    vm_only: bool,
    filters: Vec<String>,
    pagesize: Option<String>,
}

fn parse_test_args(args: &[String]) -> Result<TestOptions> {
    let mut opts = TestOptions {
        vm_only: false,
        filters: Vec::new(),
        pagesize: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--vm-only" => opts.vm_only = true,
            "--filter" => opts
                .filters
                .push(it.next().context("--filter needs a NAME")?.clone()),
            "--pagesize" => {
                opts.pagesize = Some(it.next().context("--pagesize needs a SIZE")?.clone())
            }
            "-h" | "--help" => {
                print!("{TEST_USAGE}");
                std::process::exit(0);
            }
            other => match other.strip_prefix("--filter=") {
                Some(f) => opts.filters.push(f.to_string()),
                None => bail!("unknown option `{other}`\n{TEST_USAGE}"),
            },
        }
    }
    Ok(opts)
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_test_args(args)?;
    if let Some(size) = &opts.pagesize {
        if opts.vm_only || !opts.filters.is_empty() {
            bail!("--pagesize runs on its own (no --vm-only or --filter)");
        }
        return crate::pagesize::run(size);
    }
    let paths = Paths::new();
    let all = scenarios::discover(&paths.repo.join("tests/scenarios"))?;
    let chosen = scenarios::select(all, &opts.filters);
    if chosen.is_empty() {
        bail!("no scenario matches {:?}", opts.filters);
    }
    let env = setup::ensure(&paths, if opts.vm_only { Scope::Vm } else { Scope::Full })?;
    let mut report = Report::new();

    if !opts.vm_only {
        report.step("fmt", || {
            cmd::run(cargo().args(["fmt", "--all", "--check"]))
        });
        report.step("clippy", || {
            cmd::run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
        report.step("cargo-test", || {
            cmd::run(cargo().args(["test", "--workspace"]))
        });
    }
    let ko = report.step(&format!("kmod {} W=1", env.kernel), || {
        module::build(&paths, &env.kernel).map(|b| b.ko)
    });
    if !opts.vm_only {
        if let Some(k61) = &env.kernel_61 {
            report.step(&format!("kmod {k61} W=1"), || {
                module::build(&paths, k61).map(|_| ())
            });
        }
        if let Some(script) = &env.checkpatch {
            report.step("checkpatch --strict", || {
                module::checkpatch(&paths, script).map(|_| ())
            });
        }
    }
    if !opts.vm_only {
        report.step("oelint-adv (yocto recipes)", || {
            crate::yocto::lint_recipes(&paths)
        });
        report.step("kas schema (yocto/kas)", || crate::yocto::check_kas(&paths));
        report.step("usrbd-crates.inc = Cargo.lock", || {
            crate::yocto::check_crates(&paths)
        });
        report.step("Cargo.lock readable by scarthgap's cargo", || {
            crate::yocto::check_lock_rust(&paths)
        });
    }
    let bins = report.step("build-release", || build_for_vm(&paths));
    if let Some((usrbd, _)) = bins
        .as_ref()
        .filter(|_| chosen.iter().any(|s| s.name.starts_with("deb_")))
    {
        report.step("deb amd64 (for the deb_* scenarios)", || {
            crate::deb::for_vm(&paths, usrbd)
        });
    }

    match (ko, bins) {
        (Some(ko), Some((usrbd, vmkit))) => {
            let dir = paths.xdir.join("vmtest");
            let _ = fs::remove_dir_all(&dir);
            for sub in ["data", "results", "logs"] {
                fs::create_dir_all(dir.join(sub))?;
            }
            let guest = Guest {
                usrbd,
                vmkit,
                ko,
                dir,
                extra_env: String::new(),
            };
            for group in GROUPS {
                let members: Vec<&Scenario> =
                    chosen.iter().filter(|s| s.group == group.name).collect();
                if !members.is_empty() {
                    run_group(&paths, &env, &guest, group, &members, &mut report)?;
                }
            }
        }
        _ => {
            for s in &chosen {
                report.record(&s.name, false, 0.0);
                println!("    not run: the module or the release build failed (above)");
            }
        }
    }
    // The ARM tiers and cross-rs are whole-system checks, left out of the quick loops.
    if !opts.vm_only && opts.filters.is_empty() {
        report.tier(
            "arm64 tier (cargo xtask cross --vm)",
            crate::cross::arm64_tier,
        );
        report.tier(
            "image tier (cargo xtask image + run-image)",
            crate::image::image_tier,
        );
        report.step(
            "cross-rs (cross build --release, aarch64 + armv7, Podman)",
            || crate::cross_rs::check(&paths),
        );
    }
    report.finish()
}

pub(crate) fn run_group(
    paths: &Paths,
    env: &Env,
    guest: &Guest,
    group: &scenarios::Group,
    members: &[&Scenario],
    report: &mut Report,
) -> Result<()> {
    let results = guest
        .dir
        .join("results")
        .join(format!("{}.tsv", group.name));
    let logs = guest.dir.join("logs");
    let list: Vec<String> = members
        .iter()
        .map(|s| format!("{}:{}", s.timeout_s, s.path.display()))
        .collect();
    let plan_path = guest.dir.join(format!("{}.plan", group.name));
    fs::write(
        &plan_path,
        guest.plan(
            paths,
            &format!(
                "GROUP='{}'\nRESULTS='{}'\nLOGS='{}'\nSCENARIOS='{}'\n",
                group.name,
                results.display(),
                logs.display(),
                list.join("\n")
            ),
        ),
    )?;
    let vm = Vm {
        vng: env.vng.clone(),
        kernel: env.kernel.clone(),
        cpus: group.cpus,
        memory: group.memory.to_string(),
        rwdir: guest.dir.clone(),
        cwd: paths.repo.clone(),
    };
    let budget = BOOT_ALLOWANCE
        + Duration::from_secs(
            members
                .iter()
                .map(|s| u64::from(s.timeout_s) + PER_SCENARIO_SLACK_S)
                .sum(),
        );
    eprintln!(
        "xtask: booting {} ({} vCPUs) for {} scenario(s) of group {}",
        env.kernel,
        group.cpus,
        members.len(),
        group.name
    );
    let console = guest.dir.join(format!("console-{}.log", group.name));
    let mut shown = BTreeSet::new();
    let exec = format!(
        "sh {} {}",
        paths.repo.join("tests/runner.sh").display(),
        plan_path.display()
    );
    let ended = vm.run(&exec, budget, &console, |line| {
        if let Some(o) = scenarios::parse_result(line) {
            if members.iter().any(|s| s.name == o.name) && shown.insert(o.name.clone()) {
                show(report, &o, &logs);
            }
        }
    })?;
    let recorded = scenarios::parse_results(&fs::read_to_string(&results).unwrap_or_default());
    let console_text = fs::read_to_string(&console).unwrap_or_default();
    for s in members {
        if shown.contains(&s.name) {
            continue;
        }
        match recorded.iter().find(|o| o.name == s.name) {
            Some(o) => show(report, o, &logs),
            None => {
                report.record(&s.name, false, 0.0);
                let why = if ended.timed_out {
                    format!("the VM was stopped after {} s", budget.as_secs())
                } else {
                    format!("the VM ended (vng exit {:?}) before it ran", ended.code)
                };
                println!("    no result: {why}; console tail:");
                println!("{}", indent(&cmd::tail(&console_text, 40)));
            }
        }
    }
    Ok(())
}

/// Records a scenario outcome; for a failure, its reason, output and dmesg.
fn show(report: &mut Report, o: &Outcome, logs: &Path) {
    report.record(&o.name, o.passed, o.seconds);
    if o.passed {
        return;
    }
    if !o.reason.is_empty() {
        println!("    reason: {}", o.reason);
    }
    for (what, ext, lines) in [("output", "out", 60), ("dmesg", "dmesg", 40)] {
        let path = logs.join(format!("{}.{ext}", o.name));
        if let Ok(text) = fs::read_to_string(&path) {
            println!("    --- {what} (tail, {}) ---", path.display());
            println!("{}", indent(&cmd::tail(&text, lines)));
        }
    }
}

/// The pieces every VM task needs: module for the test kernel, binaries.
fn prepare_guest(paths: &Paths, env: &Env, dir: &Path) -> Result<Guest> {
    eprintln!("xtask: building usrbd.ko for {}", env.kernel);
    let ko = module::build(paths, &env.kernel)?.ko;
    let (usrbd, vmkit) = build_for_vm(paths)?;
    fs::create_dir_all(dir.join("data"))?;
    Ok(Guest {
        usrbd,
        vmkit,
        ko,
        dir: dir.to_path_buf(),
        extra_env: String::new(),
    })
}

fn vm_for(paths: &Paths, env: &Env, dir: &Path, cpus: u32) -> Vm {
    Vm {
        vng: env.vng.clone(),
        kernel: env.kernel.clone(),
        cpus,
        memory: "2G".to_string(),
        rwdir: dir.to_path_buf(),
        cwd: paths.repo.clone(),
    }
}

pub fn demo(args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("`cargo xtask demo` takes no options (got `{a}`)");
    }
    let paths = Paths::new();
    let env = setup::ensure(&paths, Scope::Vm)?;
    let dir = paths.xdir.join("demo");
    let _ = fs::remove_dir_all(&dir);
    let guest = prepare_guest(&paths, &env, &dir)?;
    let plan = dir.join("demo.plan");
    fs::write(&plan, guest.plan(&paths, ""))?;
    let exec = format!(
        "sh {} {}",
        paths.repo.join("tests/demo.sh").display(),
        plan.display()
    );
    eprintln!("xtask: booting {} (QEMU TCG, ~25 s)", env.kernel);
    let start = Instant::now();
    let mut ok = false;
    let ended = vm_for(&paths, &env, &dir, 2).run(
        &exec,
        Duration::from_secs(600),
        &dir.join("console.log"),
        |line| {
            if line == "demo: OK" {
                ok = true;
            }
            println!("{line}");
        },
    )?;
    if !ok || ended.code != Some(0) {
        bail!(
            "the demo did not finish (vng exit {:?}{}); console log: {}",
            ended.code,
            if ended.timed_out { ", timed out" } else { "" },
            dir.join("console.log").display()
        );
    }
    eprintln!("xtask: demo done in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

pub fn vm(args: &[String]) -> Result<()> {
    let mut cpus = 2;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cpus" => cpus = it.next().context("--cpus needs a number")?.parse()?,
            other => bail!("unknown option `{other}` (usage: cargo xtask vm [--cpus N])"),
        }
    }
    let paths = Paths::new();
    let env = setup::ensure(&paths, Scope::Vm)?;
    let dir = paths.xdir.join("vmshell");
    let guest = prepare_guest(&paths, &env, &dir)?;
    let plan = dir.join("shell.plan");
    fs::write(&plan, guest.plan(&paths, ""))?;
    // vng runs the shell program without arguments: a generated wrapper
    // carries the plan's path.
    let shell = dir.join("shell.sh");
    fs::write(
        &shell,
        format!(
            "#!/bin/sh\nexec sh '{}' '{}'\n",
            paths.repo.join("tests/vm-shell.sh").display(),
            plan.display()
        ),
    )?;
    make_executable(&shell)?;
    vm_for(&paths, &env, &dir, cpus).interactive(&shell)
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Options of `cargo xtask kmod`.
#[derive(Debug, Default, PartialEq)]
struct KmodArgs {
    /// A kernel source tree to build against instead of Debian's headers.
    kdir: Option<PathBuf>,
    /// Its ARCH (arm64 picks the project's cross gcc).
    arch: Option<String>,
    /// Configure and `modules_prepare` the tree with this target first.
    defconfig: Option<String>,
}

fn parse_kmod_args(args: &[String]) -> Result<KmodArgs> {
    let mut o = KmodArgs::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("`{a}` needs a value"))
        };
        match a.as_str() {
            "--kdir" => o.kdir = Some(PathBuf::from(value()?)),
            "--arch" => o.arch = Some(value()?),
            "--defconfig" => o.defconfig = Some(value()?),
            other => bail!(
                "`cargo xtask kmod` takes --kdir TREE [--arch ARCH] [--defconfig NAME] \
                 (got `{other}`)"
            ),
        }
    }
    if o.kdir.is_none() && (o.arch.is_some() || o.defconfig.is_some()) {
        bail!("--arch and --defconfig go with --kdir");
    }
    Ok(o)
}

/// `cargo xtask kmod`: W=1 builds against Debian's 6.12 and 6.1 headers or,
/// with --kdir, against a kernel tree already on disk (nothing is
/// downloaded), optionally configured and prepared first.
pub fn kmod(args: &[String]) -> Result<()> {
    let opts = parse_kmod_args(args)?;
    let paths = Paths::new();
    if let Some(kdir) = &opts.kdir {
        let vars = module::arch_vars(opts.arch.as_deref())?;
        if let Some(defconfig) = &opts.defconfig {
            let took = module::prepare_tree(kdir, &vars, defconfig)?;
            println!(
                "prepared {} ({defconfig}, modules_prepare) in {:.0} s",
                kdir.display(),
                took.as_secs_f64()
            );
        }
        let name = kdir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tree".to_string());
        let label = format!("tree-{name}-{}", opts.arch.as_deref().unwrap_or("host"));
        let start = Instant::now();
        let built = module::build_against(&paths, kdir, &label, &vars)?;
        println!(
            "built {} (W=1, no warnings) in {:.0} s",
            built.ko.display(),
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let env = setup::ensure(&paths, Scope::Kmod)?;
    for release in std::iter::once(&env.kernel).chain(env.kernel_61.iter()) {
        let built = module::build(&paths, release)?;
        println!("built {} (W=1, no warnings)", built.ko.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_args_parse() {
        let a: Vec<String> = ["--vm-only", "--filter", "fuzz", "--filter=crash"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse_test_args(&a).unwrap();
        assert!(o.vm_only);
        assert_eq!(o.filters, ["fuzz", "crash"]);
        assert!(parse_test_args(&["--bogus".to_string()]).is_err());
        assert!(parse_test_args(&["--filter".to_string()]).is_err());
        let p = parse_test_args(&["--pagesize".to_string(), "16k".to_string()]).unwrap();
        assert_eq!(p.pagesize.as_deref(), Some("16k"));
    }

    #[test]
    fn kmod_args_parse() {
        let a: Vec<String> = [
            "--kdir",
            "/k/rpi",
            "--arch",
            "arm64",
            "--defconfig",
            "bcm2712_defconfig",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = parse_kmod_args(&a).unwrap();
        assert_eq!(o.kdir.as_deref(), Some(Path::new("/k/rpi")));
        assert_eq!(o.arch.as_deref(), Some("arm64"));
        assert_eq!(o.defconfig.as_deref(), Some("bcm2712_defconfig"));
        assert_eq!(parse_kmod_args(&[]).unwrap(), KmodArgs::default());
        assert!(parse_kmod_args(&["--arch".to_string(), "arm64".to_string()]).is_err());
        assert!(parse_kmod_args(&["--kdir".to_string()]).is_err());
    }
}
