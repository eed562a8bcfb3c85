//! The arm64 VM tier: Debian's arm64 kernel on QEMU `virt` (TCG) with a
//! busybox initramfs holding the cross-built module, services and the
//! scenario scripts of `tests/arm64/`.
//!
//! The host drives what the guest cannot do itself: it presses the button
//! (QMP `system_powerdown` pulses PL061 line 3 high for ~100 ms) and watches
//! the LEDs (PL061 output lines 4 = status, 5 = error) through QEMU's
//! `pl061_set_output` trace events. Guest and host talk through console
//! lines starting with `@@USRBD ` (see `tests/arm64/lib.sh`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::image::cpio;

const MARKER: &str = "@@USRBD ";
const STATUS_LINE: u32 = 4;
const ERROR_LINE: u32 = 5;
/// Time the service gets after the last I/O to settle its status LED.
const SETTLE_S: f64 = 0.3;

/// What goes into the VM.
pub struct Inputs {
    pub kernel: PathBuf,
    pub busybox: PathBuf,
    /// `(name in /bin, host path)`: services, vmkit.
    pub binaries: Vec<(String, PathBuf)>,
    pub module: PathBuf,
    /// Holds `init` and `lib.sh`.
    pub tests: PathBuf,
    /// The `NN-name.sh` scenarios to run, in order.
    pub scenarios: PathBuf,
    /// `(path in the initramfs, host path)`: data files (under `data/`).
    pub files: Vec<(String, PathBuf)>,
    /// QEMU's `-cpu` (a 16 KiB-page kernel needs `max`: the Cortex-A72 has
    /// no 16 KiB translation granule).
    pub cpu: &'static str,
    /// Services whose LED sequence the host checks (the guest's `serve` tags).
    pub led_tags: &'static [&'static str],
    /// The whole boot, scenarios included.
    pub timeout: Duration,
    /// Where the console log, the trace and the initramfs are written.
    pub work: PathBuf,
}

/// One scenario's outcome.
struct Outcome {
    name: String,
    passed: bool,
    detail: String,
}

/// Host times (seconds since the epoch) of the guest's marks for one tag.
#[derive(Default, Debug)]
struct Marks {
    serving: Option<f64>,
    /// The guest's I/O is over; only the button press follows.
    idle: Option<f64>,
    press: Option<f64>,
    safe: Option<f64>,
    stop: Option<f64>,
}

/// A PL061 output change seen by QEMU.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Edge {
    time: f64,
    line: u32,
    level: u8,
}

/// Boots the VM, runs every scenario, prints one line per scenario and the
/// totals. Returns (passed, failed).
pub fn run(inputs: &Inputs) -> Result<(usize, usize)> {
    std::fs::create_dir_all(&inputs.work)
        .with_context(|| format!("cannot create {}", inputs.work.display()))?;
    let scenarios = scenario_names(&inputs.scenarios)?;
    let initrd = inputs.work.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs(inputs)?)
        .with_context(|| format!("cannot write {}", initrd.display()))?;

    let trace = inputs.work.join("pl061.trace");
    let console_path = inputs.work.join("console.log");
    let qmp_path = inputs.work.join("qmp.sock");
    for stale in [&trace, &qmp_path] {
        if stale.exists() {
            std::fs::remove_file(stale)
                .with_context(|| format!("cannot remove {}", stale.display()))?;
        }
    }
    let mut console = std::fs::File::create(&console_path)
        .with_context(|| format!("cannot create {}", console_path.display()))?;

    let mut qemu = Command::new("qemu-system-aarch64")
        .args(["-M", "virt", "-cpu", inputs.cpu, "-smp", "2", "-m", "1024"])
        .args(["-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults"])
        .args(["-serial", "stdio", "-msg", "timestamp=on"])
        .arg("-kernel")
        .arg(&inputs.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyAMA0 rdinit=/init panic=-1 quiet"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .args(["-trace", "pl061_set_output", "-D"])
        .arg(&trace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-aarch64")?;
    eprintln!(
        "cross: booting the arm64 VM (console: {})",
        console_path.display()
    );

    let lines = spawn_reader(&mut qemu)?;
    let started = Instant::now();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut marks: BTreeMap<String, Marks> = BTreeMap::new();
    let mut qmp: Option<Qmp> = None;
    let mut finished = false;
    while let Some(left) = inputs.timeout.checked_sub(started.elapsed()) {
        let (when, line) = match lines.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => break,
        };
        writeln!(console, "{line}").context("cannot write the console log")?;
        let Some(pos) = line.find(MARKER) else {
            continue;
        };
        let mut words = line[pos + MARKER.len()..].splitn(3, ' ');
        let verb = words.next().unwrap_or("");
        let arg = words.next().unwrap_or("").to_owned();
        let rest = words.next().unwrap_or("").to_owned();
        match verb {
            "result" => {
                let (state, detail) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
                let outcome = Outcome {
                    name: arg,
                    passed: state == "pass",
                    detail: detail.to_owned(),
                };
                report(&outcome);
                outcomes.push(outcome);
            }
            "press" => {
                marks.entry(arg).or_default().press = Some(when);
                if qmp.is_none() {
                    qmp = Some(Qmp::connect(&qmp_path)?);
                }
                if let Some(q) = qmp.as_mut() {
                    q.execute("system_powerdown")?;
                }
            }
            "serving" => marks.entry(arg).or_default().serving = Some(when),
            "idle" => marks.entry(arg).or_default().idle = Some(when),
            "safe" => marks.entry(arg).or_default().safe = Some(when),
            "stop" => marks.entry(arg).or_default().stop = Some(when),
            "done" => {
                finished = true;
                break;
            }
            _ => {}
        }
    }
    stop(&mut qemu, finished);
    drop(qmp);

    for name in &scenarios {
        if !outcomes.iter().any(|o| &o.name == name) {
            let outcome = Outcome {
                name: name.clone(),
                passed: false,
                detail: format!(
                    "no result: the VM {} (see {})",
                    if finished {
                        "skipped it"
                    } else {
                        "ended or timed out first"
                    },
                    console_path.display()
                ),
            };
            report(&outcome);
            outcomes.push(outcome);
        }
    }
    let edges = parse_trace(&trace)?;
    for &tag in inputs.led_tags {
        let outcome = match marks.get(tag) {
            Some(m) => match check_leds(m, &edges) {
                Ok(detail) => Outcome {
                    name: format!("{tag}-leds"),
                    passed: true,
                    detail,
                },
                Err(detail) => Outcome {
                    name: format!("{tag}-leds"),
                    passed: false,
                    detail,
                },
            },
            None => Outcome {
                name: format!("{tag}-leds"),
                passed: false,
                detail: "the guest never served with this service".into(),
            },
        };
        report(&outcome);
        outcomes.push(outcome);
    }
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    println!("arm64: {passed} passed, {failed} failed");
    Ok((passed, failed))
}

fn report(o: &Outcome) {
    if o.passed {
        if o.detail.is_empty() {
            println!("PASS arm64/{}", o.name);
        } else {
            println!("PASS arm64/{} ({})", o.name, o.detail);
        }
    } else {
        println!("FAIL arm64/{}: {}", o.name, o.detail);
    }
}

/// Scenario names as the guest reports them: `NN-name.sh` → `name`.
fn scenario_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = scenario_files(dir)?
        .iter()
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .map(|stem| match stem.split_once('-') {
            Some((num, rest)) if num.chars().all(|c| c.is_ascii_digit()) => rest.to_owned(),
            _ => stem,
        })
        .collect();
    names.dedup();
    Ok(names)
}

fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    files.sort();
    Ok(files)
}

fn initramfs(inputs: &Inputs) -> Result<Vec<u8>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut archive = cpio::Writer::new(Vec::new());
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "data",
        "tests",
        "tests/scenarios",
    ] {
        archive.dir(dir)?;
    }
    archive.file("bin/busybox", 0o755, &read(&inputs.busybox)?)?;
    for (name, path) in &inputs.binaries {
        archive.file(&format!("bin/{name}"), 0o755, &read(path)?)?;
    }
    archive.file("usrbd.ko", 0o644, &read(&inputs.module)?)?;
    archive.file("init", 0o755, &read(&inputs.tests.join("init"))?)?;
    archive.file("tests/lib.sh", 0o644, &read(&inputs.tests.join("lib.sh"))?)?;
    for (name, path) in &inputs.files {
        archive.file(name, 0o644, &read(path)?)?;
    }
    for script in scenario_files(&inputs.scenarios)? {
        let name = script
            .file_name()
            .and_then(|n| n.to_str())
            .context("scenario file name is not UTF-8")?;
        archive.file(&format!("tests/scenarios/{name}"), 0o644, &read(&script)?)?;
    }
    Ok(archive.finish()?)
}

/// Forwards QEMU's console lines, stamped with the host time they arrived.
fn spawn_reader(qemu: &mut Child) -> Result<mpsc::Receiver<(f64, String)>> {
    let out = qemu.stdout.take().context("qemu has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send((now(), line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(rx)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Lets QEMU exit after `poweroff -f`, or kills it.
fn stop(qemu: &mut Child, finished: bool) {
    let deadline = Instant::now() + Duration::from_secs(if finished { 15 } else { 0 });
    loop {
        if let Ok(Some(_)) = qemu.try_wait() {
            return;
        }
        if Instant::now() >= deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A QMP connection, capabilities negotiated.
struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("cannot connect to QMP at {}", path.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("cannot set a QMP read timeout")?;
        let mut qmp = Qmp {
            writer: stream.try_clone().context("cannot clone the QMP socket")?,
            reader: BufReader::new(stream),
        };
        let mut greeting = String::new();
        qmp.reader
            .read_line(&mut greeting)
            .context("no QMP greeting")?;
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    /// Sends one argument-less command and waits for its answer (events in
    /// between are skipped).
    fn execute(&mut self, command: &str) -> Result<()> {
        writeln!(self.writer, "{{\"execute\": \"{command}\"}}")
            .with_context(|| format!("cannot send QMP {command}"))?;
        loop {
            let mut line = String::new();
            if self
                .reader
                .read_line(&mut line)
                .context("QMP read failed")?
                == 0
            {
                bail!("QMP closed while waiting for {command}");
            }
            if line.contains("\"return\"") {
                return Ok(());
            }
            if line.contains("\"error\"") {
                bail!("QMP {command}: {}", line.trim());
            }
        }
    }
}

/// Reads `PID@SECS.USECS:pl061_set_output PATH setting output N to L` lines.
fn parse_trace(path: &Path) -> Result<Vec<Edge>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(text.lines().filter_map(parse_trace_line).collect())
}

fn parse_trace_line(line: &str) -> Option<Edge> {
    let (stamp, event) = line.split_once(':')?;
    let time: f64 = stamp.split_once('@')?.1.parse().ok()?;
    let rest = event.strip_prefix("pl061_set_output ")?;
    let mut words = rest.split_whitespace().rev();
    let level: u8 = words.next()?.parse().ok()?;
    let _to = words.next()?;
    let line_no: u32 = words.next()?.parse().ok()?;
    Some(Edge {
        time,
        line: line_no,
        level,
    })
}

/// Level of `line` at `t` (0 before any event: QEMU resets outputs low).
fn level_at(edges: &[Edge], line: u32, t: f64) -> u8 {
    edges
        .iter()
        .rev()
        .find(|e| e.line == line && e.time <= t)
        .map(|e| e.level)
        .unwrap_or(0)
}

fn changes(edges: &[Edge], line: u32, from: f64, to: f64) -> Vec<Edge> {
    let mut level = level_at(edges, line, from);
    let mut out = Vec::new();
    for e in edges
        .iter()
        .filter(|e| e.line == line && e.time > from && e.time <= to)
    {
        if e.level != level {
            level = e.level;
            out.push(*e);
        }
    }
    out
}

/// The contract's LED sequence for one service: status briefly off per I/O
/// burst while the guest writes, steady on while serving idle, toggling
/// while detaching, off when safe; error off throughout.
fn check_leds(m: &Marks, edges: &[Edge]) -> std::result::Result<String, String> {
    let (Some(serving), Some(idle), Some(press), Some(safe), Some(stop)) =
        (m.serving, m.idle, m.press, m.safe, m.stop)
    else {
        return Err(format!("the guest did not reach every mark: {m:?}"));
    };
    let activity = changes(edges, STATUS_LINE, serving, idle);
    let blinks = activity.iter().filter(|e| e.level == 0).count();
    if blinks == 0 {
        return Err("status LED never blinked off for I/O while the guest wrote".into());
    }
    let from = idle + SETTLE_S;
    if level_at(edges, STATUS_LINE, from) != 1 {
        return Err(format!("status LED not on {SETTLE_S} s after the last I/O"));
    }
    let while_idle = changes(edges, STATUS_LINE, from, press);
    if !while_idle.is_empty() {
        return Err(format!(
            "status LED changed {} times while serving idle (first at +{:.3} s)",
            while_idle.len(),
            while_idle[0].time - from
        ));
    }
    let detaching = changes(edges, STATUS_LINE, press, safe);
    let last = detaching.last().map(|e| e.level).unwrap_or(1);
    // Toggling means at least off-on-off: one full blink before the final off.
    if detaching.len() < 3 || last != 0 {
        return Err(format!(
            "status LED while detaching: {} changes ending {} (want >= 3 ending off)",
            detaching.len(),
            if last == 0 { "off" } else { "on" }
        ));
    }
    let while_safe = changes(edges, STATUS_LINE, safe, stop);
    if !while_safe.is_empty() || level_at(edges, STATUS_LINE, stop) != 0 {
        return Err("status LED not steadily off while safe".into());
    }
    let errors = changes(edges, ERROR_LINE, serving, stop);
    if level_at(edges, ERROR_LINE, serving) != 0 || !errors.is_empty() {
        return Err("error LED lit during a clean serve and detach".into());
    }
    let first = detaching.first().map(|e| e.time).unwrap_or(press);
    let end = detaching.last().map(|e| e.time).unwrap_or(press);
    Ok(format!(
        "{blinks} activity blinks; steady on {:.1} s idle; {} changes over {:.0} ms detaching; off while safe",
        press - from,
        detaching.len(),
        (end - first) * 1000.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(time: f64, line: u32, level: u8) -> Edge {
        Edge { time, line, level }
    }

    #[test]
    fn parses_qemu_trace_lines() {
        let e = parse_trace_line(
            "15202@1795709781.644863:pl061_set_output /machine/unattached/device[7] setting output 4 to 0",
        );
        assert_eq!(e, Some(edge(1795709781.644863, 4, 0)));
        assert_eq!(
            parse_trace_line("15196@1.5:pl061_input_change x input 3 changed to 1"),
            None
        );
    }

    fn marks() -> Marks {
        Marks {
            serving: Some(10.0),
            idle: Some(15.0),
            press: Some(20.0),
            safe: Some(22.0),
            stop: Some(23.0),
        }
    }

    /// On at serving, one activity blink, idle, 8 Hz while detaching, off.
    fn contract() -> Vec<Edge> {
        vec![
            edge(10.1, 4, 1),
            edge(12.0, 4, 0),
            edge(12.03, 4, 1),
            edge(20.2, 4, 0),
            edge(20.26, 4, 1),
            edge(20.32, 4, 0),
            edge(20.38, 4, 1),
            edge(20.5, 4, 0),
        ]
    }

    #[test]
    fn accepts_the_contract_sequence() {
        assert!(check_leds(&marks(), &contract()).is_ok());
    }

    #[test]
    fn rejects_each_departure_from_the_contract() {
        let mut flicker = contract();
        flicker.extend([edge(17.0, 4, 0), edge(17.05, 4, 1)]);
        flicker.sort_by(|a, b| a.time.total_cmp(&b.time));
        assert!(check_leds(&marks(), &flicker).is_err());

        let no_activity: Vec<Edge> = contract()
            .into_iter()
            .filter(|e| e.time > 13.0 || e.time < 11.0)
            .collect();
        assert!(check_leds(&marks(), &no_activity).is_err());

        let no_blink: Vec<Edge> = contract()
            .into_iter()
            .filter(|e| e.time < 20.0 || e.time > 20.4)
            .collect();
        assert!(check_leds(&marks(), &no_blink).is_err());

        let mut stays_on = contract();
        stays_on.pop();
        assert!(check_leds(&marks(), &stays_on).is_err());

        let mut error = contract();
        error.push(edge(21.0, 5, 1));
        assert!(check_leds(&marks(), &error).is_err());
    }
}
