//! `usrbd serve`: one device, its workers, the panel, the signals, the control
//! socket and, with `export = "usb"`, the USB gadget, driven by one command loop.
//!
//! Detach and attach run on the main thread, one at a time, so they never race;
//! status requests are answered from [`Shared`] by the socket threads directly, so
//! they still answer while a detach is syncing. Button presses that arrive while a
//! detach runs are dropped (and logged) before they reach the queue.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{SigSet, Signal};
use serde_json::{json, Value};

use crate::backend::{file::FileBackend, ram::RamBackend, Backend};
use crate::config::{BackendConfig, ServiceConfig};
use crate::detach::{self, DetachOps, Phase, Progress};
use crate::device::{state_name, Control, CreateParams, DeviceInfo};
use crate::error::{DetachError, ServiceError};
use crate::export::usb_gadget::{self, HostState, Roots, UsbGadget, UsbProbe};
use crate::ipc::{self, Request, Response};
use crate::panel::{ApplianceState, ButtonEvent, Panel, PanelHandle};
use crate::server::{self, Stats, Workers};
use crate::uapi::*;

/// What `usrbd status` reports as `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    Starting,
    Serving,
    Detaching,
    Safe,
    Error,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Serving => "serving",
            ServiceState::Detaching => "detaching",
            ServiceState::Safe => "safe",
            ServiceState::Error => "error",
        }
    }
}

/// What every thread may read.
pub struct Shared {
    state: Mutex<Snapshot>,
    stats: Arc<Stats>,
    backend: Arc<dyn Backend>,
    panel: Option<PanelHandle>,
    ctrl: Arc<Control>,
    name: String,
    /// The USB gadget, as the status report and the LEDs look at it.
    usb: Option<UsbProbe>,
}

/// How long the detach waits for the USB gadget to close the device after the
/// eject; the gadget finishes the command in progress first.
const USB_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
struct Snapshot {
    state: ServiceState,
    /// The device exists in the kernel (served or not).
    device: Option<DeviceInfo>,
    /// The last error, while in state error.
    error: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A poisoned lock only means a thread panicked mid-update of plain data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> ServiceState {
        self.lock().state
    }

    /// Sets the reported state and what the LEDs show. `panel` differs from
    /// `state` when a detach failed while the device still serves: the state is
    /// error, the status LED keeps its serving pattern, the error LED lights.
    fn show(&self, state: ServiceState, panel: ApplianceState, error: Option<String>) {
        {
            let mut s = self.lock();
            s.state = state;
            s.error = error.clone();
        }
        if let Some(p) = &self.panel {
            p.set_state(panel);
            p.set_error(error.is_some());
        }
    }

    /// The status object of `usrbd status --json`.
    pub fn status_json(&self) -> Value {
        let snap = self.lock().clone();
        let device = match &snap.device {
            Some(d) => json!({
                "name": d.name, "path": d.path(), "index": d.index, "size": d.size,
            }),
            None => json!({
                "name": self.name, "path": Path::new("/dev").join(&self.name),
                "index": Value::Null, "size": self.backend.size(),
            }),
        };
        let kernel = snap
            .device
            .as_ref()
            .and_then(|d| self.ctrl.status(d.index).ok())
            .map_or(Value::Null, |s| kernel_json(&s));
        let mut v = json!({
            "state": snap.state.as_str(),
            "device": device,
            "backend": self.backend.kind(),
            "served": self.stats.snapshot(),
            "kernel": kernel,
            "memory": {
                "resident_bytes": resident_bytes(),
                "backend_bytes": self.backend.used_bytes(),
            },
        });
        if let Some(e) = snap.error {
            v["error"] = Value::String(e);
        }
        if let Some(u) = &self.usb {
            v["usb"] = json!({
                "udc": u.udc,
                "host": u.host_state().map_or_else(|e| e.to_string(), |h| h.as_str().to_owned()),
                "medium": u.medium().ok().flatten(),
            });
        }
        v
    }

    /// The serving pattern: with a USB export, "waiting for host" until a host
    /// configured the drive.
    fn serving_pattern(&self) -> ApplianceState {
        serving_pattern(self.usb.as_ref().map(UsbProbe::host_state))
    }
}

/// See [`Shared::serving_pattern`]; an unreadable UDC state shows as serving,
/// the device does serve.
fn serving_pattern(host: Option<Result<HostState, crate::error::ExportError>>) -> ApplianceState {
    match host {
        Some(Ok(HostState::Other(_))) => ApplianceState::WaitingForHost,
        None | Some(Ok(HostState::Configured)) | Some(Err(_)) => ApplianceState::Serving,
    }
}

/// The kernel's view of a device (USRBD_IOC_STATUS) as JSON.
pub fn kernel_json(s: &usrbd_status) -> Value {
    let op = |i: usize| {
        let o = &s.ops[i];
        json!({"submitted": o.submitted, "completed": o.completed, "errors": o.errors, "bytes": o.bytes})
    };
    json!({
        "index": s.index,
        "name": name_from_c(&s.name),
        "state": state_name(s.state),
        "size": s.size,
        "logical_block_size": s.logical_block_size,
        "physical_block_size": s.physical_block_size,
        "nr_queues": s.nr_queues,
        "queue_depth": s.queue_depth,
        "max_io_bytes": s.max_io_bytes,
        "timeout_ms": s.timeout_ms,
        "flags": s.flags,
        "openers": s.openers,
        "servers": s.servers,
        "queued": s.queued,
        "inflight": s.inflight,
        "timeouts": s.timeouts,
        "rejected": s.rejected,
        "ops": {
            "read": op(USRBD_OP_READ as usize),
            "write": op(USRBD_OP_WRITE as usize),
            "flush": op(USRBD_OP_FLUSH as usize),
            "discard": op(USRBD_OP_DISCARD as usize),
            "write_zeroes": op(USRBD_OP_WRITE_ZEROES as usize),
        },
    })
}

/// Resident set size of this process, from /proc/self/statm.
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    pages * crate::backend::page_size() as u64
}

enum Command {
    Request(Request, Sender<Response>),
    Button(ButtonEvent),
    Signal(Signal),
}

/// Runs the service until a detach with exit; returns once the device is safe.
pub fn run(cfg: ServiceConfig) -> Result<(), ServiceError> {
    // Before any thread exists, so every thread inherits the mask and only the
    // signal thread sees SIGINT/SIGTERM (workers are never interrupted).
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().map_err(ServiceError::Signals)?;

    server::prepare_process();
    let ctrl = Arc::new(Control::open()?);
    let version = ctrl.check_version()?;
    info!(
        "usrbd.ko ABI {} (features {:#x}, max {} queues, depth {}, {} bytes per request)",
        version.abi_version,
        version.features,
        version.max_queues,
        version.max_queue_depth,
        version.max_io_bytes
    );
    let backend = open_backend(&cfg)?;
    // Before anything serves: without its gadget the appliance is no USB drive.
    let usb = match &cfg.usb {
        Some(u) => {
            let roots = Roots::default();
            usb_gadget::prepare_kernel(&roots)?;
            Some(UsbGadget::setup(usb_gadget::RealFs, &roots, u)?)
        }
        None => None,
    };

    let (btn_tx, btn_rx) = mpsc::channel();
    let panel = match Panel::start(&cfg.panel, btn_tx) {
        Ok(p) => Some(p),
        Err(e) => {
            error!("panel: {e}; serving without LEDs and button");
            None
        }
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(Snapshot {
            state: ServiceState::Starting,
            device: None,
            error: None,
        }),
        stats: Arc::new(Stats::default()),
        backend,
        panel: panel.as_ref().map(Panel::handle),
        ctrl,
        name: cfg.name.clone(),
        usb: usb.as_ref().map(UsbGadget::probe),
    });
    shared.show(ServiceState::Starting, ApplianceState::Starting, None);

    let (tx, rx) = mpsc::channel();
    spawn_signal_thread(sigs, tx.clone(), Arc::clone(&shared))?;
    spawn_button_thread(btn_rx, tx.clone(), Arc::clone(&shared))?;
    let mut svc = Service {
        cfg,
        shared: Arc::clone(&shared),
        workers: None,
        progress: Progress::default(),
        usb,
    };
    let listener = match ipc::bind(&svc.cfg.socket) {
        Ok(l) => l,
        Err(e) => {
            svc.remove_gadget();
            return Err(e.into());
        }
    };
    let socket = svc.cfg.socket.clone();
    let started = svc.attach();
    if let Err(e) = &started {
        shared.show(
            ServiceState::Error,
            ApplianceState::Error,
            Some(e.to_string()),
        );
    }
    let sh = Arc::clone(&shared);
    ipc::spawn_server(listener, Arc::new(move |req| handle_request(&sh, &tx, req))).map_err(
        |source| ServiceError::Thread {
            what: "control socket",
            source,
        },
    )?;
    info!("control socket {}", socket.display());
    let res = match started {
        Ok(()) => {
            svc.main_loop(&rx);
            Ok(())
        }
        Err(e) => Err(e),
    };
    svc.remove_gadget();
    if let Err(e) = std::fs::remove_file(&socket) {
        warn!("removing {}: {e}", socket.display());
    }
    // Dropping the panel leaves the LEDs at the steady levels of the last state.
    drop(panel);
    res
}

fn open_backend(cfg: &ServiceConfig) -> Result<Arc<dyn Backend>, ServiceError> {
    Ok(match &cfg.backend {
        BackendConfig::Ram { image } => Arc::new(RamBackend::open(
            cfg.size,
            image.as_deref(),
            cfg.logical_block_size,
        )?),
        BackendConfig::File { path, direct } => Arc::new(FileBackend::open(
            path,
            cfg.size,
            cfg.logical_block_size,
            *direct,
            cfg.read_only,
        )?),
    })
}

fn handle_request(shared: &Shared, tx: &Sender<Command>, req: Request) -> Response {
    if req == Request::Status {
        return Response {
            ok: true,
            state: shared.state().as_str().into(),
            error: None,
            status: Some(shared.status_json()),
        };
    }
    let (rtx, rrx) = mpsc::channel();
    let failed = |msg: &str| Response {
        ok: false,
        state: shared.state().as_str().into(),
        error: Some(msg.into()),
        status: None,
    };
    if tx.send(Command::Request(req, rtx)).is_err() {
        return failed("the service is shutting down");
    }
    rrx.recv()
        .unwrap_or_else(|_| failed("the service is shutting down"))
}

fn spawn_signal_thread(
    sigs: SigSet,
    tx: Sender<Command>,
    shared: Arc<Shared>,
) -> Result<(), ServiceError> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut interrupts = 0;
            loop {
                let sig = match sigs.wait() {
                    Ok(s) => s,
                    Err(e) => {
                        error!("sigwait: {e}");
                        return;
                    }
                };
                if sig == Signal::SIGINT {
                    interrupts += 1;
                    if interrupts >= 2 {
                        force_exit(&shared);
                    }
                }
                if tx.send(Command::Signal(sig)).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
        .map_err(|source| ServiceError::Thread {
            what: "signal",
            source,
        })
}

/// Second SIGINT: forced destroy (what is in flight fails), sync what was
/// acknowledged, exit.
fn force_exit(shared: &Shared) -> ! {
    warn!("second SIGINT: forced destroy");
    if let Some(d) = shared.lock().device.clone() {
        if let Err(e) = shared.ctrl.destroy(d.index, true, 0) {
            error!("forced destroy of {}: {e}", d.name);
        }
    }
    if let Err(e) = shared.backend.flush() {
        error!("sync of the backend: {e}");
    }
    std::process::exit(1);
}

fn spawn_button_thread(
    rx: Receiver<ButtonEvent>,
    tx: Sender<Command>,
    shared: Arc<Shared>,
) -> Result<(), ServiceError> {
    thread::Builder::new()
        .name("button".into())
        .spawn(move || {
            for ev in rx {
                match shared.state() {
                    s @ (ServiceState::Detaching | ServiceState::Starting) => {
                        info!("button {ev:?} ignored while {}", s.as_str());
                    }
                    _ => {
                        if tx.send(Command::Button(ev)).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|source| ServiceError::Thread {
            what: "button",
            source,
        })
}

struct Service {
    cfg: ServiceConfig,
    shared: Arc<Shared>,
    workers: Option<Workers>,
    progress: Progress,
    usb: Option<UsbGadget>,
}

impl Service {
    /// Unbinds and removes the USB gadget: the host sees the drive unplugged.
    fn remove_gadget(&mut self) {
        if let Some(g) = self.usb.take() {
            if let Err(e) = g.teardown() {
                error!("removing the USB gadget: {e}");
            }
        }
    }

    /// Follows the host (configured or not) on the status LED while serving.
    fn check_host(&self) {
        let (state, error) = {
            let s = self.shared.lock();
            (s.state, s.error.is_some())
        };
        if self.usb.is_none() || state != ServiceState::Serving || error {
            return;
        }
        if let Some(p) = &self.shared.panel {
            p.set_state(self.shared.serving_pattern());
        }
    }

    /// Puts the medium back after a detach that stopped before the destroy, so
    /// the host keeps the drive it had, as the local side keeps its device.
    fn reload_medium(&mut self, dev: &DeviceInfo) {
        let Some(g) = self.usb.as_mut() else { return };
        if matches!(g.probe().medium(), Ok(Some(_))) {
            return;
        }
        if let Err(e) = g.load(&dev.path()) {
            error!("usb: loading the medium again after the failed detach: {e}");
        }
    }

    fn main_loop(&mut self, rx: &Receiver<Command>) {
        loop {
            let cmd = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    self.check_workers();
                    self.check_host();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let exit = match cmd {
                Command::Request(Request::Status, reply) => {
                    let _ = reply.send(self.response(Ok(())));
                    false
                }
                Command::Request(Request::Detach { exit }, reply) => {
                    let r = self.detach();
                    let ok = r.is_ok();
                    let _ = reply.send(self.response(r));
                    ok && exit
                }
                Command::Request(Request::Attach, reply) => {
                    let r = self.attach();
                    let _ = reply.send(self.response(r.map_err(|e| e.to_string())));
                    false
                }
                Command::Signal(sig) => {
                    info!("{sig}: detaching, then exiting (a second SIGINT forces)");
                    self.detach().is_ok()
                }
                Command::Button(ButtonEvent::ShortPress) => {
                    if self.shared.lock().device.is_some() {
                        let _ = self.detach();
                    } else if let Err(e) = self.attach() {
                        error!("re-attach: {e}");
                    }
                    false
                }
                Command::Button(ButtonEvent::LongPress) => {
                    if self.detach().is_ok() {
                        self.power_off();
                    }
                    false
                }
            };
            if exit {
                info!("detached; exiting");
                return;
            }
        }
    }

    fn response(&self, r: Result<(), String>) -> Response {
        Response {
            ok: r.is_ok(),
            state: self.shared.state().as_str().into(),
            error: r.err(),
            status: None,
        }
    }

    fn power_off(&self) {
        info!("long press: running `{}`", self.cfg.poweroff_cmd);
        match std::process::Command::new("sh")
            .arg("-c")
            .arg(&self.cfg.poweroff_cmd)
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => error!("`{}` exited with {s}", self.cfg.poweroff_cmd),
            Err(e) => error!("running `{}`: {e}", self.cfg.poweroff_cmd),
        }
    }

    fn params(&self) -> CreateParams {
        CreateParams {
            name: self.cfg.name.clone(),
            size: self.shared.backend.size(),
            logical_block_size: self.cfg.logical_block_size,
            physical_block_size: self.cfg.physical_block_size,
            queues: self.cfg.queues,
            queue_depth: self.cfg.queue_depth,
            max_io: self.cfg.max_io,
            timeout_ms: self.cfg.timeout_ms,
            flags: self.cfg.flags,
        }
    }

    /// Creates the device (or adopts the one a dead server left waiting) and starts
    /// its workers. Does nothing while a device is served.
    fn attach(&mut self) -> Result<(), ServiceError> {
        if self.shared.lock().device.is_some() && self.workers.is_some() {
            info!("attach: already serving");
            return Ok(());
        }
        let ctrl = &self.shared.ctrl;
        let mut p = self.params();
        let dev = match ctrl.create(&p) {
            Ok(d) => d,
            Err(e) if e.errno() == Some(Errno::EEXIST) => {
                let index = ctrl.find_by_name(&p.name).map_err(|_| e)?;
                let s = ctrl.status(index)?;
                if s.servers != 0 || s.size != p.size {
                    return Err(crate::error::DeviceError::Ioctl {
                        op: format!(
                            "adopting existing device `{}` ({} servers, {} bytes)",
                            p.name, s.servers, s.size
                        ),
                        errno: Errno::EEXIST,
                    }
                    .into());
                }
                info!("re-attaching to existing device {} (index {index})", p.name);
                p.queues = s.nr_queues;
                p.queue_depth = s.queue_depth;
                p.max_io = s.max_io_bytes;
                DeviceInfo {
                    index,
                    name: p.name.clone(),
                    size: s.size,
                }
            }
            Err(e) => return Err(e.into()),
        };
        let activity: server::ActivityHook = match self.shared.panel.clone() {
            Some(h) => Arc::new(move || h.activity()),
            None => Arc::new(|| {}),
        };
        let workers = Workers::start(
            ctrl,
            &dev,
            &server::Geometry {
                queues: p.queues,
                depth: p.queue_depth,
                max_io: p.max_io,
            },
            Arc::clone(&self.shared.backend),
            Arc::clone(&self.shared.stats),
            activity,
        );
        let workers = match workers {
            Ok(w) => w,
            Err(e) => {
                if let Err(d) = ctrl.destroy(dev.index, true, 0) {
                    error!("cleaning up {} after a failed attach: {d}", dev.name);
                }
                return Err(e.into());
            }
        };
        if let Some(g) = self.usb.as_mut() {
            if let Err(e) = g.load(&dev.path()) {
                // Nobody has used the new device yet: taking it down loses nothing.
                if let Err(d) = ctrl.destroy(dev.index, true, 0) {
                    error!("cleaning up {} after a failed attach: {d}", dev.name);
                }
                workers.stop();
                if let Err(j) = workers.join() {
                    error!("workers of {} after a failed attach: {j}", dev.name);
                }
                return Err(e.into());
            }
        }
        self.workers = Some(workers);
        self.progress = Progress::default();
        self.shared.lock().device = Some(dev.clone());
        self.shared
            .show(ServiceState::Serving, self.shared.serving_pattern(), None);
        info!("usrbd: serving {}", dev.path().display());
        Ok(())
    }

    fn detach(&mut self) -> Result<(), String> {
        let Some(dev) = self.shared.lock().device.clone() else {
            info!("detach: nothing attached");
            return if self.shared.state() == ServiceState::Error {
                Err(self.shared.lock().error.clone().unwrap_or_default())
            } else {
                Ok(())
            };
        };
        let mut progress = self.progress;
        let r = detach::detach(
            &mut RealOps {
                svc: self,
                dev: dev.clone(),
                detaching_since: None,
            },
            &mut progress,
        );
        self.progress = progress;
        if r.is_err() && !progress.destroyed {
            self.reload_medium(&dev);
        }
        let mut snap = self.shared.lock();
        if progress.destroyed {
            snap.device = None;
        }
        r.map(|_| ()).map_err(|e| {
            let msg = e.to_string();
            snap.error = Some(msg.clone());
            msg
        })
    }

    /// Notices workers that stopped on their own: the device was destroyed from
    /// outside (`usrbd destroy`) or serving failed.
    fn check_workers(&mut self) {
        if !self.workers.as_ref().is_some_and(Workers::finished) {
            return;
        }
        let Some(w) = self.workers.take() else { return };
        let why = match w.join() {
            Ok(()) => "the device was destroyed outside the service".to_owned(),
            Err(e) => e,
        };
        error!("workers stopped: {why}");
        if let Some(g) = self.usb.as_mut() {
            // The gadget would hold the dead device open for ever.
            if let Err(e) = g.eject() {
                error!("{e}");
            }
        }
        self.shared.lock().device = None;
        if let Err(e) = self.shared.backend.finish() {
            error!("final sync: {e}");
        }
        self.shared
            .show(ServiceState::Error, ApplianceState::Error, Some(why));
    }
}

struct RealOps<'a> {
    svc: &'a mut Service,
    dev: DeviceInfo,
    /// When the "detaching" pattern went up, so it stays long enough to see.
    detaching_since: Option<Instant>,
}

/// A detach of an idle device takes a few milliseconds: the user must still
/// see the "syncing" blink before "safe to remove", or the press looks ignored.
const DETACHING_SHOWN_AT_LEAST: Duration = Duration::from_millis(1000);

impl RealOps<'_> {
    /// The device's major:minor, and its partitions' by the sysfs name.
    fn is_ours(&self, rdev: (u64, u64), maj_min: &str) -> bool {
        if maj_min == format!("{}:{}", rdev.0, rdev.1) {
            return true;
        }
        let part = Path::new("/sys/dev/block").join(maj_min);
        part.join("partition").exists()
            && std::fs::canonicalize(&part)
                .ok()
                .and_then(|p| {
                    p.parent()
                        .and_then(|d| d.file_name().map(|n| n == self.dev.name.as_str()))
                })
                .unwrap_or(false)
    }
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Mount points whose source device satisfies `ours`, most recent first, so
/// stacked mounts come off top-down.
pub fn mounts_in(mountinfo: &str, ours: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let maj_min = f.nth(2)?;
            let mp = f.nth(1)?;
            ours(maj_min).then(|| unescape_mount_path(mp))
        })
        .collect();
    v.reverse();
    v
}

impl DetachOps for RealOps<'_> {
    fn mounts(&mut self) -> Result<Vec<PathBuf>, DetachError> {
        let path = self.dev.path();
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_block_device() => m,
            Ok(_) | Err(_) => {
                warn!(
                    "{} is not a block device node here; no mounts to check",
                    path.display()
                );
                return Ok(Vec::new());
            }
        };
        let rdev = (
            u64::from(libc::major(meta.rdev())),
            u64::from(libc::minor(meta.rdev())),
        );
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(DetachError::MountTable)?;
        Ok(mounts_in(&info, |mm| self.is_ours(rdev, mm)))
    }

    fn unmount(&mut self, mountpoint: &Path) -> Result<(), DetachError> {
        match umount2(mountpoint, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::EBUSY) => Err(DetachError::Busy {
                mountpoint: mountpoint.to_owned(),
            }),
            Err(errno) => Err(DetachError::Unmount {
                mountpoint: mountpoint.to_owned(),
                errno,
            }),
        }
    }

    fn eject_exports(&mut self) -> Result<(), DetachError> {
        match self.svc.usb.as_mut() {
            Some(g) => {
                info!("detach: ejecting the USB medium");
                g.eject().map_err(DetachError::Export)
            }
            None => Ok(()),
        }
    }

    fn wait_exports_released(&mut self) -> Result<(), DetachError> {
        if self.svc.usb.is_none() {
            return Ok(());
        }
        let start = Instant::now();
        loop {
            let openers = self
                .svc
                .shared
                .ctrl
                .status(self.dev.index)
                .map_err(DetachError::Status)?
                .openers;
            if openers == 0 {
                info!(
                    "detach: the USB gadget let go of {} after {} ms",
                    self.dev.name,
                    start.elapsed().as_millis()
                );
                return Ok(());
            }
            if start.elapsed() >= USB_RELEASE_TIMEOUT {
                return Err(DetachError::StillOpen {
                    path: self.dev.path(),
                    openers,
                    waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn flush_device(&mut self) -> Result<(), DetachError> {
        let path = self.dev.path();
        let err = |source| DetachError::Flush {
            path: path.clone(),
            source,
        };
        match File::open(&path) {
            Ok(f) => f.sync_all().map_err(err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(
                    "{} does not exist; nothing to flush through it",
                    path.display()
                );
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    fn destroy(&mut self) -> Result<(), DetachError> {
        self.svc
            .shared
            .ctrl
            .destroy(self.dev.index, false, 0)
            .map_err(DetachError::Destroy)
    }

    fn join_workers(&mut self) -> Result<(), DetachError> {
        let Some(w) = self.svc.workers.take() else {
            return Ok(());
        };
        // The device is gone: nothing new can arrive, so idle workers may return.
        w.stop();
        w.join().map_err(DetachError::Worker)
    }

    fn finish_backend(&mut self) -> Result<(), DetachError> {
        self.svc
            .shared
            .backend
            .finish()
            .map_err(DetachError::Finish)
    }

    fn report(&mut self, phase: Phase) {
        let shared = &self.svc.shared;
        let err = || shared.lock().error.clone();
        match phase {
            Phase::Detaching => {
                self.detaching_since = Some(Instant::now());
                shared.show(ServiceState::Detaching, ApplianceState::Detaching, None)
            }
            Phase::Safe => {
                if let Some(since) = self.detaching_since {
                    thread::sleep(DETACHING_SHOWN_AT_LEAST.saturating_sub(since.elapsed()));
                }
                shared.show(ServiceState::Safe, ApplianceState::Safe, None)
            }
            Phase::FailedServing => shared.show(
                ServiceState::Error,
                shared.serving_pattern(),
                Some(err().unwrap_or_else(|| "detach failed; still serving".into())),
            ),
            Phase::FailedDown => shared.show(
                ServiceState::Error,
                ApplianceState::Error,
                Some(err().unwrap_or_else(|| "detach failed after the destroy".into())),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_led_waits_for_the_usb_host() {
        assert_eq!(serving_pattern(None), ApplianceState::Serving);
        assert_eq!(
            serving_pattern(Some(Ok(HostState::Configured))),
            ApplianceState::Serving
        );
        for s in [
            "not attached",
            "powered",
            "default",
            "addressed",
            "suspended",
        ] {
            assert_eq!(
                serving_pattern(Some(Ok(HostState::parse(s)))),
                ApplianceState::WaitingForHost,
                "{s}"
            );
        }
        let unreadable = crate::error::ExportError::NoUdc {
            dir: "/sys/class/udc".into(),
        };
        assert_eq!(
            serving_pattern(Some(Err(unreadable))),
            ApplianceState::Serving
        );
    }

    #[test]
    fn mountinfo_lines_select_our_device_newest_first() {
        let info = "\
22 1 259:2 / / rw - ext4 /dev/root rw
40 22 254:0 / /mnt/a rw - ext4 /dev/usrbd0 rw
41 22 8:1 / /boot rw - vfat /dev/sda1 rw
42 40 254:0 / /mnt/with\\040space rw - ext4 /dev/usrbd0 rw
";
        let m = mounts_in(info, |mm| mm == "254:0");
        assert_eq!(
            m,
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/mnt/a")]
        );
        assert!(mounts_in(info, |mm| mm == "1:1").is_empty());
    }
}
