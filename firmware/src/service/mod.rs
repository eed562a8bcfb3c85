//! `usrbd serve`: one device, its workers, the panel, the signals, the control
//! socket and, with `export = "usb"`, the USB gadget, driven by one command loop.
//!
//! Detach and attach run on the main thread, one at a time, so they never race;
//! status requests are answered from [`state`] by the socket threads directly, so
//! they still answer while a detach is syncing. Button presses that arrive while a
//! detach runs are dropped (and logged) before they reach the queue.
//!
//! The state machine lives here; [`mounts`] finds and unmounts local mounts,
//! [`usb`] holds the USB export policy, [`ops`] acts out the detach steps.

mod lock;
mod mounts;
mod ops;
mod state;
mod upgrade;
mod usb;

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};

use crate::backend::{file::FileBackend, ram::RamBackend, Backend};
use crate::config::{BackendConfig, ServiceConfig, SOCKET_DIR};
use crate::detach::{self, Progress};
use crate::device::{Control, CreateParams, DeviceInfo};
use crate::error::ServiceError;
use crate::export::usb_gadget::{self, Roots, UsbGadget};
use crate::ipc::{self, Reply, Request, Response};
use crate::panel::{ApplianceState, ButtonEvent, Panel, PanelHandle};
use crate::server::{self, Stats, Workers};

pub use state::{kernel_json, ServiceState};
use state::{Shared, Snapshot};

/// How often a detach that an exit (SIGTERM, SIGINT) asked for is tried again
/// after it failed (a busy mount whose holder is being killed, a full disk
/// being cleaned), and for how long: less than the 5 minutes the packaging
/// gives a stop before SIGKILL.
const EXIT_RETRY_EVERY: Duration = Duration::from_secs(1);
const EXIT_RETRY_FOR: Duration = Duration::from_secs(240);

enum Command {
    Request(Request, Sender<Reply>),
    Button(ButtonEvent),
    Signal(Signal),
}

/// Runs the service until a detach with exit; returns once the device is safe.
/// An upgrade does not return: the process becomes the new binary.
pub fn run(cfg: ServiceConfig) -> Result<(), ServiceError> {
    // Before anything can replace the file: the path an upgrade execs.
    let origin = upgrade::Origin::current();
    // First of all: a second instance must not load an image, rebuild the USB
    // gadget or drive the LEDs of the one already serving.
    let _lock = lock::take(Path::new(SOCKET_DIR), &cfg.name)?;
    // Before any thread exists, so every thread inherits the mask and only the
    // signal thread sees SIGINT/SIGTERM (workers are never interrupted).
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    // `usrbd serve &` must outlive the login shell that started it.
    sigs.add(Signal::SIGHUP);
    sigs.thread_block().map_err(ServiceError::Signals)?;

    // The panel next, so an error at any later step shows on the LEDs.
    let (btn_tx, btn_rx) = mpsc::channel();
    let panel = match Panel::start(&cfg.panel, btn_tx) {
        Ok(p) => Some(p),
        Err(e) => {
            error!("panel: {e}; serving without LEDs and button");
            None
        }
    };
    let handle = panel.as_ref().map(Panel::handle);
    if let Some(h) = &handle {
        h.set_state(ApplianceState::Starting);
    }
    let res = start_and_serve(cfg, origin, sigs, handle.clone(), btn_rx);
    if let (Err(_), Some(h)) = (&res, &handle) {
        h.set_state(ApplianceState::Error);
        h.set_error(true);
    }
    // Dropping the panel leaves the LEDs at the steady levels of the last state.
    drop(panel);
    res
}

fn start_and_serve(
    cfg: ServiceConfig,
    origin: upgrade::Origin,
    sigs: SigSet,
    panel: Option<PanelHandle>,
    btn_rx: Receiver<ButtonEvent>,
) -> Result<(), ServiceError> {
    server::prepare_process();
    protect_from_oom();
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
    cfg.check_memory(backend.size(), mem_total()?)?;
    // Before anything serves: without its gadget the appliance is no USB drive.
    let usb = match &cfg.usb {
        Some(u) => {
            let roots = Roots::default();
            usb_gadget::prepare_kernel(&roots)?;
            Some(UsbGadget::setup(usb_gadget::RealFs, &roots, u)?)
        }
        None => None,
    };

    let shared = Arc::new(Shared {
        state: Mutex::new(Snapshot {
            state: ServiceState::Starting,
            device: None,
            error: None,
        }),
        stats: Arc::new(Stats::default()),
        backend,
        panel,
        ctrl,
        name: cfg.name.clone(),
        usb: usb.as_ref().map(UsbGadget::probe),
        instance: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    });

    let (tx, rx) = mpsc::channel();
    spawn_signal_thread(sigs, tx.clone(), Arc::clone(&shared))?;
    spawn_button_thread(btn_rx, tx.clone(), Arc::clone(&shared))?;
    let mut svc = Service {
        cfg,
        shared: Arc::clone(&shared),
        workers: None,
        progress: Progress::default(),
        pending: None,
        usb,
        exit: Exit::default(),
        origin,
    };
    let listener = match ipc::bind(&svc.cfg.socket) {
        Ok(l) => l,
        Err(e) => {
            svc.remove_gadget();
            return Err(e.into());
        }
    };
    let socket = svc.cfg.socket.clone();
    let started = match svc.attach() {
        // Nothing of the dead server's device is left to lose: stay up in
        // error, so the LEDs and `usrbd status` say what happened.
        Err(e @ ServiceError::Orphan { .. }) => {
            error!("{e}");
            shared.show(
                ServiceState::Error,
                ApplianceState::Error,
                Some(e.to_string()),
            );
            Ok(())
        }
        r => r,
    };
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
    res
}

/// What `usrbd.service` sets (`OOMScoreAdjust`), for every init: under memory
/// pressure the OOM killer must take anything but the process holding the
/// device's data. A lower value set by the caller is kept.
const OOM_SCORE_ADJ: i32 = -900;

fn protect_from_oom() {
    let path = "/proc/self/oom_score_adj";
    let now = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if now.is_some_and(|v| v <= OOM_SCORE_ADJ) {
        return;
    }
    match std::fs::write(path, OOM_SCORE_ADJ.to_string()) {
        Ok(()) => info!("oom_score_adj {OOM_SCORE_ADJ}"),
        Err(e) => {
            warn!("setting oom_score_adj {OOM_SCORE_ADJ}: {e}; the OOM killer may pick this server")
        }
    }
}

/// MemTotal of /proc/meminfo, in bytes.
fn mem_total() -> Result<u64, ServiceError> {
    let path = Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(path).map_err(|source| ServiceError::Proc {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| ServiceError::Proc {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no MemTotal line"),
        })
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

fn handle_request(shared: &Shared, tx: &Sender<Command>, req: Request) -> Reply {
    if req == Request::Status {
        return Response {
            ok: true,
            state: shared.state().as_str().into(),
            error: None,
            status: Some(shared.status_json()),
        }
        .into();
    }
    let (rtx, rrx) = mpsc::channel();
    let failed = |msg: &str| -> Reply {
        Response {
            ok: false,
            state: shared.state().as_str().into(),
            error: Some(msg.into()),
            status: None,
        }
        .into()
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
                if sig == Signal::SIGHUP {
                    info!("SIGHUP ignored (SIGTERM detaches and exits)");
                    continue;
                }
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
    // The final sync or image save: RAM has no other way to persist.
    if let Err(e) = shared.backend.finish() {
        error!("final sync of the backend: {e}");
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
                    s @ (ServiceState::Detaching
                    | ServiceState::Starting
                    | ServiceState::Upgrading) => {
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

/// An exit asked for (SIGTERM, SIGINT, `detach --exit`) that waits for the
/// data to be safe first.
#[derive(Debug, Default)]
struct Exit {
    requested: bool,
    /// Retry the detach on our own until then (signals only: a person at the
    /// command line sees the error and retries).
    retry_until: Option<Instant>,
}

struct Service {
    cfg: ServiceConfig,
    shared: Arc<Shared>,
    workers: Option<Workers>,
    progress: Progress,
    /// A device whose detach got past the destroy but not past the final sync
    /// (a RAM image save that ran out of space): the data is only in this
    /// process, and the next detach resumes at the sync.
    pending: Option<DeviceInfo>,
    usb: Option<UsbGadget>,
    exit: Exit,
    origin: upgrade::Origin,
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

    /// Whether data would be lost if the process ended now.
    fn at_risk(&self) -> bool {
        self.pending.is_some() || self.shared.lock().device.is_some()
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

    /// The LUN lost its medium while we serve it: only a host's eject (START
    /// STOP UNIT) does that; our own ejects happen inside a detach.
    fn host_ejected(&self) -> bool {
        let Some(g) = &self.usb else { return false };
        self.workers.is_some()
            && self.shared.lock().device.is_some()
            && matches!(g.probe().medium(), Ok(None))
    }

    fn main_loop(&mut self, rx: &Receiver<Command>) {
        loop {
            let cmd = match rx.recv_timeout(EXIT_RETRY_EVERY) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    self.check_workers();
                    self.check_host();
                    if self.host_ejected() {
                        // A host that ejected will not write again; it may be
                        // unplugged next, and a RAM device must be saved first.
                        info!("usb: the host ejected the medium; detaching as the button would");
                        let _ = self.detach();
                    }
                    if self.retry_exit() {
                        info!("detached; exiting");
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let detached = match cmd {
                Command::Request(Request::Status, reply) => {
                    let _ = reply.send(self.response(Ok(())).into());
                    false
                }
                Command::Request(Request::Upgrade { binary }, reply) => {
                    match self.upgrade_plan(binary) {
                        Err(e) => {
                            warn!("upgrade refused: {e}");
                            let _ = reply.send(self.response(Err(e)).into());
                        }
                        Ok(binary) => {
                            let (wtx, wrx) = mpsc::channel();
                            let accepted = Reply {
                                response: Response {
                                    ok: true,
                                    state: ServiceState::Upgrading.as_str().into(),
                                    error: None,
                                    status: Some(serde_json::json!({
                                        "instance": self.shared.instance,
                                    })),
                                },
                                written: Some(wtx),
                            };
                            if reply.send(accepted).is_ok() {
                                // Bounded: a client that stopped reading must
                                // not hold the device back.
                                let _ = wrx.recv_timeout(Duration::from_secs(5));
                            }
                            self.upgrade(&binary, rx);
                        }
                    }
                    false
                }
                Command::Request(Request::Detach { exit }, reply) => {
                    self.exit.requested |= exit;
                    let r = self.detach();
                    let ok = r.is_ok();
                    let _ = reply.send(self.response(r).into());
                    ok
                }
                Command::Request(Request::Attach, reply) => {
                    let r = self.attach();
                    let _ = reply.send(self.response(r.map_err(|e| e.to_string())).into());
                    false
                }
                Command::Signal(sig) => {
                    info!("{sig}: detaching, then exiting (a second SIGINT forces)");
                    self.exit.requested = true;
                    if self.exit.retry_until.is_none() {
                        self.exit.retry_until = Some(Instant::now() + EXIT_RETRY_FOR);
                    }
                    self.detach().is_ok()
                }
                Command::Button(ButtonEvent::ShortPress) => {
                    if self.at_risk() {
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
            if self.exit.requested && (detached || !self.at_risk()) {
                info!("detached; exiting");
                return;
            }
        }
    }

    /// Tries again the detach of a pending exit; true once there is nothing
    /// left to lose and the service may exit.
    fn retry_exit(&mut self) -> bool {
        if !self.exit.requested {
            return false;
        }
        if !self.at_risk() {
            return true;
        }
        let Some(until) = self.exit.retry_until else {
            return false;
        };
        if Instant::now() >= until {
            error!(
                "gave up retrying the detach after {} s; the data stays in this process: `usrbd detach` tries again",
                EXIT_RETRY_FOR.as_secs()
            );
            self.exit.retry_until = None;
            return false;
        }
        self.detach().is_ok()
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

    /// Creates the device (or, for a file backend, adopts the one a dead server
    /// left waiting) and starts its workers. Does nothing while a device is
    /// served.
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
                if self.shared.backend.memory().is_some() {
                    // The dead server's RAM held what the device's users wrote;
                    // this process only has the last saved image. Serving that
                    // under their mount would corrupt it, and the next save
                    // would replace the last good image with the mix.
                    error!(
                        "{}: left by a dead RAM server; destroying it by force",
                        p.name
                    );
                    ctrl.destroy(index, true, 0)?;
                    return Err(ServiceError::Orphan { name: p.name });
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
        // The data a failed save kept is served again: the next detach saves it.
        self.pending = None;
        self.shared.lock().device = Some(dev.clone());
        self.shared
            .show(ServiceState::Serving, self.shared.serving_pattern(), None);
        info!("usrbd: serving {}", dev.path().display());
        Ok(())
    }

    /// What `usrbd upgrade` may hand over, checked while the device still
    /// serves: the binary to exec, or why not.
    fn upgrade_plan(
        &self,
        binary: Option<std::path::PathBuf>,
    ) -> Result<std::path::PathBuf, String> {
        let state = self.shared.state();
        if state != ServiceState::Serving
            || self.workers.is_none()
            || self.pending.is_some()
            || self.shared.lock().device.is_none()
        {
            return Err(format!(
                "no device to hand over while {}: restart the service instead",
                state.as_str()
            ));
        }
        if self.shared.backend.memory().is_some() {
            return Err(format!(
                "the {} backend keeps the device's data in this process's memory, which the exec would drop: \
                 `usrbd detach --exit` (saves the image), then start the service with the new binary",
                self.shared.backend.kind()
            ));
        }
        if self.usb.is_some() {
            return Err(
                "with the USB export the new process would rebuild the gadget (the host sees the drive \
                 unplugged): `usrbd detach --exit`, then start the service with the new binary"
                    .into(),
            );
        }
        let binary = binary
            .or_else(|| self.origin.exe.clone())
            .ok_or("this server does not know its own executable; pass --binary")?;
        upgrade::check(&binary, &self.origin.args, &self.cfg.identity())?;
        Ok(binary)
    }

    /// Hands the device to `binary`: the workers answer what they hold and
    /// fetch nothing more (what arrives meanwhile waits in the module's queue),
    /// the backend is flushed, the server fds close with the device left in
    /// place, and the process execs; the new image adopts the device as after
    /// a crash (file backend), within the request timeout. Returns only if
    /// that failed, then serving again itself.
    fn upgrade(&mut self, binary: &Path, rx: &Receiver<Command>) {
        self.shared.lock().state = ServiceState::Upgrading;
        let t0 = Instant::now();
        if let Some(w) = self.workers.take() {
            w.stop();
            // Its queue already had no server: the new one takes it all the same.
            if let Err(e) = w.join() {
                warn!("upgrade: {e}");
            }
        }
        let why = match self.shared.backend.flush() {
            Err(e) => format!("upgrade: flushing the backend: {e}"),
            // The exec would drop it: a stop (systemd's SIGTERM) would be lost.
            Ok(()) if self.signalled_meanwhile(rx) => {
                self.exit.requested = true;
                self.exit.retry_until = Some(Instant::now() + EXIT_RETRY_FOR);
                "upgrade: abandoned for the signal that came meanwhile".to_owned()
            }
            Ok(()) => {
                info!(
                    "upgrade: quiesced and flushed in {} ms; exec {}",
                    t0.elapsed().as_millis(),
                    binary.display()
                );
                let e = upgrade::exec(binary, &self.origin.args);
                format!("upgrade: exec {}: {e}", binary.display())
            }
        };
        error!("{why}; serving on with this binary");
        // The device waits for a server: this one again (attach adopts it).
        self.shared.lock().device = None;
        match self.attach() {
            Ok(()) => self.shared.lock().error = Some(why),
            Err(e) => {
                let msg = format!("{why}; re-attaching: {e}");
                error!("{msg}");
                self.shared
                    .show(ServiceState::Error, ApplianceState::Error, Some(msg));
            }
        }
    }

    /// Empties the command queue before an exec: true if a signal asked this
    /// process to exit; requests are refused (their clients would get no
    /// answer at all), button presses dropped.
    fn signalled_meanwhile(&self, rx: &Receiver<Command>) -> bool {
        let mut signalled = false;
        for cmd in rx.try_iter() {
            match cmd {
                Command::Signal(sig) => {
                    info!("{sig} during the upgrade: detaching and exiting instead");
                    signalled = true;
                }
                Command::Request(_, reply) => {
                    let _ = reply.send(
                        self.response(Err("an upgrade is handing the device over".into()))
                            .into(),
                    );
                }
                Command::Button(ev) => info!("button {ev:?} ignored while upgrading"),
            }
        }
        signalled
    }

    /// Runs or resumes the detach of the served device, or of the one whose
    /// final sync is pending.
    fn detach(&mut self) -> Result<(), String> {
        let served = self.shared.lock().device.clone();
        let Some(dev) = served.or_else(|| self.pending.clone()) else {
            info!("detach: nothing attached");
            let s = self.shared.lock();
            return match (&s.state, &s.error) {
                (ServiceState::Error, Some(e)) => Err(e.clone()),
                _ => Ok(()),
            };
        };
        let mut progress = self.progress;
        let r = detach::detach(
            &mut ops::RealOps {
                svc: self,
                dev: dev.clone(),
                detaching_since: None,
                others_open: 0,
            },
            &mut progress,
        );
        self.progress = progress;
        if r.is_err() && !progress.destroyed {
            if let Some(g) = self.usb.as_mut() {
                usb::reload_medium(g, &dev);
            }
        }
        if progress.destroyed {
            self.shared.lock().device = None;
            self.pending = (!progress.finished).then_some(dev);
        }
        r.map(|_| ()).map_err(|e| {
            let msg = e.to_string();
            self.shared.lock().error = Some(msg.clone());
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
            Err(e) => e.to_string(),
        };
        error!("workers stopped: {why}");
        if let Some(g) = self.usb.as_mut() {
            // The gadget would hold the dead device open for ever.
            if let Err(e) = g.eject() {
                error!("{e}");
            }
        }
        let dev = self.shared.lock().device.take();
        let why = match self.shared.backend.finish() {
            Ok(()) => why,
            Err(e) => {
                error!("final sync: {e}");
                // Kept, like a detach's failed save: the next detach retries.
                self.progress = Progress {
                    destroyed: true,
                    workers_joined: true,
                    finished: false,
                };
                self.pending = dev;
                format!("{why}; final sync: {e}")
            }
        };
        self.shared
            .show(ServiceState::Error, ApplianceState::Error, Some(why));
    }
}
