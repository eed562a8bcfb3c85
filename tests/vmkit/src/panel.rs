//! `vmkit panel`: a uinput device standing in for the appliance's front
//! panel. Its LED class devices (`/sys/class/leds/inputN::*`) are what the
//! service drives as status/error/activity LEDs; every level the service
//! sets comes back on the uinput fd and is recorded. Its KEY_POWER is the
//! button, pressed on command through a FIFO.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use log::{info, warn};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;

const EV_SYN: u16 = 0x00;
const EV_KEY: u16 = 0x01;
const EV_LED: u16 = 0x11;
const SYN_REPORT: u16 = 0;
const KEY_POWER: u16 = 116;
const LED_NUML: u16 = 0x00;
const LED_CAPSL: u16 = 0x01;
const LED_SCROLLL: u16 = 0x02;

/// The panel's LEDs: the service's role, the input LED code, the LED class suffix.
const LEDS: [(&str, u16, &str); 3] = [
    ("status", LED_NUML, "numlock"),
    ("error", LED_CAPSL, "capslock"),
    ("activity", LED_SCROLLL, "scrolllock"),
];

/// How long to wait for the kernel to register the input and LED devices.
const SYSFS_WAIT: Duration = Duration::from_secs(5);

mod ioctl {
    use nix::{ioctl_none, ioctl_read_buf, ioctl_write_int, ioctl_write_ptr};
    ioctl_none!(ui_dev_create, b'U', 1);
    ioctl_none!(ui_dev_destroy, b'U', 2);
    ioctl_write_ptr!(ui_dev_setup, b'U', 3, libc::uinput_setup);
    ioctl_read_buf!(ui_get_sysname, b'U', 44, u8);
    ioctl_write_int!(ui_set_evbit, b'U', 100);
    ioctl_write_int!(ui_set_keybit, b'U', 101);
    ioctl_write_int!(ui_set_ledbit, b'U', 105);
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input device name (what `input:name=…` button specs match)
    #[arg(long, default_value = "usrbd-test-panel")]
    name: String,
    /// Where LED changes are recorded, `<ms> <status|error|activity> <0|1>` per line
    #[arg(long)]
    events: PathBuf,
    /// FIFO to read commands from (`press <ms>`); created if absent
    #[arg(long)]
    control: PathBuf,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let start = Instant::now();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    // Blocked signals queue on the signalfd, so poll wakes for them and a
    // signal between two polls is not lost.
    mask.thread_block().context("blocking SIGTERM/SIGINT")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("creating signalfd")?;

    let mut events = File::create(&args.events)
        .with_context(|| format!("creating {}", args.events.display()))?;
    let mut control = Control::open(&args.control)?;
    let dev = Uinput::create(&args.name)?;
    let sysname = dev.sysname(&args.name)?;
    let leds = wait_for_leds(&sysname)?;
    if !has_event_node(&sysname) {
        warn!("{sysname} has no /dev/input/event node: the button is invisible until `modprobe evdev`");
    }
    let mut stdout = io::stdout();
    writeln!(
        stdout,
        "leds status={} error={} activity={}",
        leds[0].display(),
        leds[1].display(),
        leds[2].display()
    )
    .and_then(|()| stdout.flush())
    .context("writing to stdout")?;
    info!("panel {} is {sysname}", args.name);

    let mut presses: VecDeque<u64> = VecDeque::new();
    let mut release_at: Option<Instant> = None;
    loop {
        let timeout = match release_at {
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(dev.fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(control.fd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready = |fd: &PollFd| {
            fd.revents()
                .is_some_and(|r| !(r & !PollFlags::POLLNVAL).is_empty())
        };
        let (sig_ready, dev_ready, ctl_ready) = (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]));

        if dev_ready {
            record_leds(&dev, &mut events, start)?;
        }
        if ctl_ready {
            for cmd in control.read_commands()? {
                match parse_command(&cmd) {
                    Some(ms) => presses.push_back(ms),
                    None => warn!("unknown panel command {cmd:?} (expected `press <ms>`)"),
                }
            }
        }
        if release_at.is_some_and(|at| Instant::now() >= at) {
            dev.key(0)?;
            info!("button released");
            release_at = None;
        }
        if release_at.is_none() {
            if let Some(ms) = presses.pop_front() {
                dev.key(1)?;
                info!("button pressed for {ms} ms");
                release_at = Some(Instant::now() + Duration::from_millis(ms));
            }
        }
        if sig_ready {
            if let Ok(Some(info)) = signals.read_signal() {
                info!("signal {}: removing the panel", info.ssi_signo);
            }
            if release_at.is_some() {
                dev.key(0)?;
            }
            // Catch the levels set while the signal was being delivered.
            record_leds(&dev, &mut events, start)?;
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Parses `press <ms>`.
fn parse_command(line: &str) -> Option<u64> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["press", ms] => ms.parse().ok(),
        _ => None,
    }
}

/// The uinput device; removed from the system when dropped.
struct Uinput {
    fd: OwnedFd,
}

impl Uinput {
    fn create(name: &str) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/uinput")
            .context("opening /dev/uinput (is the uinput module loaded?)")?;
        let fd = OwnedFd::from(file);
        let raw = fd.as_raw_fd();
        let mut setup: libc::uinput_setup = unsafe { std::mem::zeroed() };
        if name.is_empty() || name.len() >= setup.name.len() {
            bail!(
                "--name must be 1..{} bytes, got {:?}",
                setup.name.len() - 1,
                name
            );
        }
        for (dst, src) in setup.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        setup.id.bustype = 0x06; // BUS_VIRTUAL
        setup.id.vendor = 0x1d6b;
        setup.id.product = 0x0bd0;
        // SAFETY: valid fd and a fully initialised setup struct; the
        // ioctls only read their arguments.
        unsafe {
            ioctl::ui_set_evbit(raw, EV_KEY.into()).context("UI_SET_EVBIT EV_KEY")?;
            ioctl::ui_set_evbit(raw, EV_LED.into()).context("UI_SET_EVBIT EV_LED")?;
            ioctl::ui_set_keybit(raw, KEY_POWER.into()).context("UI_SET_KEYBIT KEY_POWER")?;
            for (_, code, _) in LEDS {
                ioctl::ui_set_ledbit(raw, code.into()).context("UI_SET_LEDBIT")?;
            }
            ioctl::ui_dev_setup(raw, &setup).context("UI_DEV_SETUP")?;
            ioctl::ui_dev_create(raw).context("UI_DEV_CREATE")?;
        }
        Ok(Self { fd })
    }

    /// The input device's sysfs name (`inputN`).
    fn sysname(&self, name: &str) -> Result<String> {
        let mut buf = [0u8; 64];
        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        if unsafe { ioctl::ui_get_sysname(self.fd.as_raw_fd(), &mut buf) }.is_ok() {
            let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return Ok(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        // Kernels before 3.15: find our device by name.
        let deadline = Instant::now() + SYSFS_WAIT;
        loop {
            let found = std::fs::read_dir("/sys/class/input")
                .context("listing /sys/class/input")?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("input"))
                .find(|n| {
                    std::fs::read_to_string(format!("/sys/class/input/{n}/name"))
                        .is_ok_and(|s| s.trim_end() == name)
                });
            match found {
                Some(n) => return Ok(n),
                None if Instant::now() > deadline => {
                    bail!("no /sys/class/input/input*/name is {name:?}")
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn emit(&self, kind: u16, code: u16, value: i32) -> Result<()> {
        // SAFETY: input_event is plain data; all-zero is a valid value.
        let mut ev: libc::input_event = unsafe { std::mem::zeroed() };
        ev.type_ = kind;
        ev.code = code;
        ev.value = value;
        // SAFETY: reading the bytes of a plain-data struct.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const libc::input_event).cast::<u8>(),
                std::mem::size_of::<libc::input_event>(),
            )
        };
        let n = nix::unistd::write(&self.fd, bytes).context("writing to uinput")?;
        if n != bytes.len() {
            bail!("short write to uinput: {n} of {} bytes", bytes.len());
        }
        Ok(())
    }

    fn key(&self, value: i32) -> Result<()> {
        self.emit(EV_KEY, KEY_POWER, value)?;
        self.emit(EV_SYN, SYN_REPORT, 0)
    }
}

impl Drop for Uinput {
    fn drop(&mut self) {
        // SAFETY: valid fd; the ioctl takes no argument.
        if let Err(e) = unsafe { ioctl::ui_dev_destroy(self.fd.as_raw_fd()) } {
            warn!("UI_DEV_DESTROY: {e}");
        }
    }
}

/// Drains the uinput fd and appends the LED changes to the event log.
fn record_leds(dev: &Uinput, out: &mut File, start: Instant) -> Result<()> {
    let size = std::mem::size_of::<libc::input_event>();
    let mut buf = vec![0u8; size * 64];
    loop {
        let n = match nix::unistd::read(dev.fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("reading uinput"),
        };
        if n == 0 {
            return Ok(());
        }
        // The read time, not the event's own stamp: both are close, and the
        // kernel's stamp clock differs between kernel versions.
        let ms = start.elapsed().as_millis();
        for chunk in buf[..n].chunks_exact(size) {
            // SAFETY: the kernel wrote whole input_events; any bit pattern
            // is a valid input_event and read_unaligned copes with alignment.
            let ev: libc::input_event = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
            if ev.type_ != EV_LED {
                continue;
            }
            let Some((role, _, _)) = LEDS.iter().find(|(_, code, _)| *code == ev.code) else {
                continue;
            };
            writeln!(out, "{ms} {role} {}", u8::from(ev.value != 0))
                .and_then(|()| out.flush())
                .context("writing the event log")?;
        }
    }
}

/// Waits for the LED class devices of input device `sysname`.
fn wait_for_leds(sysname: &str) -> Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = LEDS
        .iter()
        .map(|(_, _, suffix)| PathBuf::from(format!("/sys/class/leds/{sysname}::{suffix}")))
        .collect();
    let deadline = Instant::now() + SYSFS_WAIT;
    while !paths.iter().all(|p| p.exists()) {
        if Instant::now() > deadline {
            bail!(
                "LED class devices {} did not appear (kernel without CONFIG_INPUT_LEDS?)",
                paths[0].display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(paths)
}

fn has_event_node(sysname: &str) -> bool {
    std::fs::read_dir(format!("/sys/class/input/{sysname}")).is_ok_and(|dir| {
        dir.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("event"))
    })
}

/// The command FIFO, reopened whenever its last writer goes away.
struct Control {
    path: PathBuf,
    fd: OwnedFd,
    pending: Vec<u8>,
}

impl Control {
    fn open(path: &Path) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_fifo() => {}
            Ok(_) => bail!("{} exists and is not a FIFO", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600))
                    .with_context(|| format!("mkfifo {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        }
        Ok(Self {
            path: path.to_owned(),
            fd: Self::open_fd(path)?,
            pending: Vec::new(),
        })
    }

    fn open_fd(path: &Path) -> Result<OwnedFd> {
        // Non-blocking so the open does not wait for a writer.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(OwnedFd::from(file))
    }

    /// Reads what is available and returns the complete lines.
    fn read_commands(&mut self) -> Result<Vec<String>> {
        let mut buf = [0u8; 512];
        loop {
            match nix::unistd::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    // Every writer closed: a fresh open waits for the next one
                    // instead of reporting hang-up forever.
                    self.fd = Self::open_fd(&self.path)?;
                    break;
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", self.path.display()))
                }
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line).trim().to_owned();
            if !text.is_empty() {
                lines.push(text);
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse_command("press 200"), Some(200));
        assert_eq!(parse_command("  press   4000 "), Some(4000));
        assert_eq!(parse_command("press"), None);
        assert_eq!(parse_command("press -1"), None);
        assert_eq!(parse_command("hold 5"), None);
    }

    #[test]
    fn fifo_lines_survive_writer_churn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let mut ctl = Control::open(&path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().file_type().is_fifo());
        assert!(ctl.read_commands().unwrap().is_empty());
        for round in 0..2 {
            let mut w = OpenOptions::new().write(true).open(&path).unwrap();
            w.write_all(b"press 10\npress 2").unwrap();
            drop(w);
            let mut w = OpenOptions::new().write(true).open(&path).unwrap();
            w.write_all(b"0\n").unwrap();
            drop(w);
            let mut got = Vec::new();
            for _ in 0..3 {
                got.extend(ctl.read_commands().unwrap());
            }
            assert_eq!(got, vec!["press 10", "press 20"], "round {round}");
        }
    }
}
