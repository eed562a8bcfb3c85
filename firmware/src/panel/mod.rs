//! Status LEDs and the detach button.
//!
//! [`Panel::start`] opens the pins named by a [`PanelConfig`] and runs a thread named
//! `panel` that samples the button, debounces it into [`ButtonEvent`]s sent on a
//! channel, and drives the LEDs from the [`ApplianceState`] set through a
//! [`PanelHandle`]. The panel does not decide what a press means; the service does.
//!
//! Pins sit behind the embedded-hal 1.0 `OutputPin` / `InputPin` traits, one backend
//! per file: `sysfs_led` (LED class), `input_event` (evdev key), `gpio_cdev` (GPIO
//! character device), `rpi` (rppal, feature `rpi`) and [`mock`] (in-memory, tests).
//! [`Panel::start_with_pins`] takes any such pins.
//!
//! The LED table is in [`pattern`]; the button rules are in [`button`].

pub mod button;
mod gpio_cdev;
mod input_event;
pub mod mock;
pub mod pattern;
#[cfg(feature = "rpi")]
mod rpi;
mod spec;
mod sysfs_led;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use embedded_hal::digital::{ErrorKind, InputPin, OutputPin};
use log::{debug, info, warn};

use button::ButtonMachine;
use pattern::{Activity, Levels};
pub use spec::{ButtonSpec, GpioLine, InputDevice, LedSpec};

/// What the appliance is doing; selects the LED pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplianceState {
    Starting,
    Serving,
    Detaching,
    Safe,
    Error,
    /// Serving, exported over USB, but no host has configured the drive yet.
    WaitingForHost,
}

impl ApplianceState {
    const ALL: [ApplianceState; 6] = [
        ApplianceState::Starting,
        ApplianceState::Serving,
        ApplianceState::Detaching,
        ApplianceState::Safe,
        ApplianceState::Error,
        ApplianceState::WaitingForHost,
    ];

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> ApplianceState {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(ApplianceState::Error)
    }
}

/// A debounced button gesture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ButtonEvent {
    /// Pressed and released before `long_press_ms`; sent on release.
    ShortPress,
    /// Held for `long_press_ms`; sent as soon as the threshold passes, while held.
    LongPress,
}

/// Panel settings: timing and where each pin lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanelConfig {
    pub debounce_ms: u32,
    pub long_press_ms: u32,
    pub button: ButtonSpec,
    pub led_status: LedSpec,
    pub led_activity: LedSpec,
    pub led_error: LedSpec,
}

impl Default for PanelConfig {
    fn default() -> Self {
        PanelConfig {
            debounce_ms: 50,
            long_press_ms: 3000,
            button: ButtonSpec::None,
            led_status: LedSpec::None,
            led_activity: LedSpec::None,
            led_error: LedSpec::None,
        }
    }
}

/// Why the panel could not start. Each variant names the spec or path that failed.
#[derive(Debug, thiserror::Error)]
pub enum PanelError {
    #[error("bad panel spec `{spec}`: {reason}")]
    Spec { spec: String, reason: String },
    #[error("panel timing: long_press_ms ({long_press_ms}) must be greater than debounce_ms ({debounce_ms})")]
    Timing {
        debounce_ms: u32,
        long_press_ms: u32,
    },
    #[error("`{spec}`: {what} {}", path.display())]
    Io {
        spec: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{spec}`: {reason}")]
    Unavailable { spec: String, reason: String },
    #[error("`{spec}`: requesting GPIO line")]
    Gpio {
        spec: String,
        #[source]
        source: gpiocdev::Error,
    },
    #[cfg(feature = "rpi")]
    #[error("`{spec}`: rppal GPIO (needs the Raspberry Pi kernel's /dev/gpiomem; use gpio:/dev/gpiochipN:<line> elsewhere)")]
    Rppal {
        spec: String,
        #[source]
        source: rppal::gpio::Error,
    },
    #[error("starting the panel thread")]
    Thread(#[source] io::Error),
}

/// The error every panel pin reports (embedded-hal `Error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PinError(#[from] io::Error);

impl embedded_hal::digital::Error for PinError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// An LED of any backend: an embedded-hal output, and a blink the kernel can
/// carry where the backend has one (the LED class `timer` trigger), so a blink
/// goes on if this process dies: an LED frozen dark would read as "safe".
pub trait Led: OutputPin<Error = PinError> + Send {
    /// Blinks `on_ms`/`off_ms` without this process until the next write;
    /// `Ok(false)` when the backend cannot (the panel then blinks it).
    fn blink(&mut self, _on_ms: u64, _off_ms: u64) -> Result<bool, PinError> {
        Ok(false)
    }
}

/// An LED pin of any backend.
pub type LedPin = Box<dyn Led>;
/// A button pin of any backend; high means pressed (backends apply active-low).
pub type ButtonPin = Box<dyn InputPin<Error = PinError> + Send>;

/// The opened pins; `None` where the spec is `none`.
#[derive(Default)]
pub struct PanelPins {
    pub button: Option<ButtonPin>,
    pub status: Option<LedPin>,
    pub activity: Option<LedPin>,
    pub error: Option<LedPin>,
}

impl PanelPins {
    /// Opens every pin the config names.
    pub fn open(cfg: &PanelConfig) -> Result<PanelPins, PanelError> {
        Ok(PanelPins {
            button: open_button(&cfg.button)?,
            status: open_led(&cfg.led_status)?,
            activity: open_led(&cfg.led_activity)?,
            error: open_led(&cfg.led_error)?,
        })
    }
}

fn open_button(spec: &ButtonSpec) -> Result<Option<ButtonPin>, PanelError> {
    let pin: ButtonPin = match spec {
        ButtonSpec::None => return Ok(None),
        ButtonSpec::Input { device, key } => {
            Box::new(input_event::InputButton::open(spec, device, *key)?)
        }
        ButtonSpec::Gpio(line) => Box::new(gpio_cdev::GpioButton::open(spec, line)?),
        #[cfg(feature = "rpi")]
        ButtonSpec::Rppal { pin, active_low } => {
            Box::new(rpi::RppalButton::open(spec, *pin, *active_low)?)
        }
        #[cfg(not(feature = "rpi"))]
        ButtonSpec::Rppal { .. } => return Err(no_rppal(spec)),
    };
    info!("panel: button {spec}");
    Ok(Some(pin))
}

fn open_led(spec: &LedSpec) -> Result<Option<LedPin>, PanelError> {
    let pin: LedPin = match spec {
        LedSpec::None => return Ok(None),
        LedSpec::Sysfs(dir) => Box::new(sysfs_led::SysfsLed::open(spec, dir)?),
        LedSpec::SysfsName(suffix) => Box::new(sysfs_led::SysfsLed::open_by_suffix(
            spec,
            std::path::Path::new(sysfs_led::LEDS_DIR),
            suffix,
        )?),
        LedSpec::Gpio(line) => Box::new(gpio_cdev::GpioLed::open(spec, line)?),
        #[cfg(feature = "rpi")]
        LedSpec::Rppal { pin, active_low } => {
            Box::new(rpi::RppalLed::open(spec, *pin, *active_low)?)
        }
        #[cfg(not(feature = "rpi"))]
        LedSpec::Rppal { .. } => return Err(no_rppal(spec)),
    };
    info!("panel: LED {spec}");
    Ok(Some(pin))
}

#[cfg(not(feature = "rpi"))]
fn no_rppal(spec: &impl std::fmt::Display) -> PanelError {
    PanelError::Unavailable {
        spec: spec.to_string(),
        reason: "this build has no rppal support (cargo feature `rpi`); \
                 use gpio:/dev/gpiochip0:<line> instead"
            .into(),
    }
}

/// State shared between the handles and the panel thread.
struct Shared {
    state: AtomicU8,
    error: AtomicBool,
    activity: AtomicU32,
    stop: AtomicBool,
}

/// The running panel. Dropping it stops the thread and leaves the LEDs at the
/// steady levels of the last state ([`pattern::steady`]: safe → all off).
pub struct Panel {
    handle: PanelHandle,
    thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable way to tell the panel what to show.
#[derive(Clone)]
pub struct PanelHandle {
    shared: Arc<Shared>,
    thread: Thread,
}

impl Panel {
    /// Opens the pins and starts the panel thread (named "panel").
    pub fn start(cfg: &PanelConfig, events: Sender<ButtonEvent>) -> Result<Panel, PanelError> {
        check_timing(cfg)?;
        let pins = PanelPins::open(cfg)?;
        Panel::start_with_pins(cfg, pins, events)
    }

    /// Starts the panel thread on pins opened elsewhere (mocks, custom boards);
    /// the pin specs in `cfg` are ignored, its timing is used.
    pub fn start_with_pins(
        cfg: &PanelConfig,
        pins: PanelPins,
        events: Sender<ButtonEvent>,
    ) -> Result<Panel, PanelError> {
        check_timing(cfg)?;
        let shared = Arc::new(Shared {
            state: AtomicU8::new(ApplianceState::Starting.to_u8()),
            error: AtomicBool::new(false),
            activity: AtomicU32::new(0),
            stop: AtomicBool::new(false),
        });
        let worker = Worker::new(Arc::clone(&shared), pins, cfg, events);
        let join = thread::Builder::new()
            .name("panel".into())
            .spawn(move || worker.run())
            .map_err(PanelError::Thread)?;
        Ok(Panel {
            handle: PanelHandle {
                shared,
                thread: join.thread().clone(),
            },
            thread: Some(join),
        })
    }

    pub fn handle(&self) -> PanelHandle {
        self.handle.clone()
    }
}

fn check_timing(cfg: &PanelConfig) -> Result<(), PanelError> {
    if cfg.long_press_ms <= cfg.debounce_ms {
        return Err(PanelError::Timing {
            debounce_ms: cfg.debounce_ms,
            long_press_ms: cfg.long_press_ms,
        });
    }
    Ok(())
}

impl Drop for Panel {
    fn drop(&mut self) {
        self.handle.shared.stop.store(true, Ordering::Release);
        self.handle.thread.unpark();
        if let Some(join) = self.thread.take() {
            if join.join().is_err() {
                warn!("panel: thread panicked");
            }
        }
    }
}

impl PanelHandle {
    pub fn set_state(&self, s: ApplianceState) {
        self.shared.state.store(s.to_u8(), Ordering::Release);
        self.thread.unpark();
    }

    /// Lights (or clears) the error LED, whatever the state.
    pub fn set_error(&self, on: bool) {
        self.shared.error.store(on, Ordering::Release);
        self.thread.unpark();
    }

    /// Records that I/O was served; cheap enough for every worker batch.
    pub fn activity(&self) {
        self.shared.activity.fetch_add(1, Ordering::Relaxed);
    }
}

/// Tick while something moves (a blink, recent I/O, a button not at rest): 5 ms keeps
/// blinks even and measures presses to a few ms.
const FAST_TICK: Duration = Duration::from_millis(5);
/// Tick at rest: still samples a 100 ms pulse several times before the debounce
/// decides, because the first pressed sample switches to the fast tick.
const IDLE_TICK: Duration = Duration::from_millis(20);

/// One LED output and the level last written to it, so a level is written only when it
/// changes and a failing LED is reported once rather than every tick.
struct LedOut {
    name: &'static str,
    pin: Option<LedPin>,
    last: Option<bool>,
    failing: bool,
    /// The period the pin blinks on its own, if it does.
    blinking: Option<u64>,
    /// The pin cannot blink on its own; not asked again.
    no_blink: bool,
}

impl LedOut {
    fn new(name: &'static str, pin: Option<LedPin>) -> LedOut {
        LedOut {
            name,
            pin,
            last: None,
            failing: false,
            blinking: None,
            no_blink: false,
        }
    }

    /// Hands a blink of `period_ms` to the pin; false if it cannot take it.
    fn blink(&mut self, period_ms: u64) -> bool {
        if self.blinking == Some(period_ms) {
            return true;
        }
        let Some(pin) = self.pin.as_mut() else {
            return false;
        };
        if self.no_blink {
            return false;
        }
        let half = period_ms / 2;
        match pin.blink(half, period_ms - half) {
            Ok(true) => {
                self.blinking = Some(period_ms);
                self.last = None;
                true
            }
            Ok(false) => {
                self.no_blink = true;
                false
            }
            Err(e) => {
                self.no_blink = true;
                info!(
                    "panel: {} LED cannot blink on its own ({e}); the panel blinks it",
                    self.name
                );
                false
            }
        }
    }

    fn write(&mut self, level: bool) {
        let Some(pin) = self.pin.as_mut() else {
            return;
        };
        // A level ends a blink the pin carried (the write stops it).
        if self.last == Some(level) && self.blinking.is_none() {
            return;
        }
        self.blinking = None;
        self.last = Some(level);
        match pin.set_state(level.into()) {
            Ok(()) if self.failing => {
                self.failing = false;
                info!("panel: {} LED writable again", self.name);
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                warn!("panel: {} LED: {e}", self.name);
            }
            Err(_) => {}
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    button_pin: Option<ButtonPin>,
    button_failing: bool,
    status: LedOut,
    activity: LedOut,
    error: LedOut,
    button: ButtonMachine,
    events: Sender<ButtonEvent>,
    receiver_gone: bool,
}

impl Worker {
    fn new(
        shared: Arc<Shared>,
        pins: PanelPins,
        cfg: &PanelConfig,
        events: Sender<ButtonEvent>,
    ) -> Worker {
        Worker {
            shared,
            button_pin: pins.button,
            button_failing: false,
            status: LedOut::new("status", pins.status),
            activity: LedOut::new("activity", pins.activity),
            error: LedOut::new("error", pins.error),
            button: ButtonMachine::new(cfg.debounce_ms, cfg.long_press_ms),
            events,
            receiver_gone: false,
        }
    }

    fn run(mut self) {
        let t0 = Instant::now();
        let mut activity = Activity::default();
        let mut seen_io = self.shared.activity.load(Ordering::Relaxed);
        let mut state = self.state();
        let mut state_since = 0u64;
        let has_activity_led = self.activity.pin.is_some();
        debug!("panel: thread started");
        loop {
            let now = elapsed_ms(t0);
            let stop = self.shared.stop.load(Ordering::Acquire);

            let new_state = self.state();
            if new_state != state {
                debug!("panel: {state:?} -> {new_state:?}");
                state = new_state;
                state_since = now;
            }
            let io = self.shared.activity.load(Ordering::Relaxed);
            if io != seen_io {
                seen_io = io;
                activity.observe(now);
            }
            let error_flag = self.shared.error.load(Ordering::Acquire);

            let levels = if stop {
                pattern::steady(state, error_flag)
            } else {
                pattern::levels(
                    state,
                    now.saturating_sub(state_since),
                    now,
                    &activity,
                    error_flag,
                    has_activity_led,
                )
            };
            let status_blink = if stop {
                None
            } else {
                pattern::status_blink_period(state)
            };
            self.write_leds(levels, status_blink);
            if stop {
                break;
            }
            self.sample_button(now);

            let busy = !self.button.at_rest() || pattern::animated(state, now, &activity);
            thread::park_timeout(if busy { FAST_TICK } else { IDLE_TICK });
        }
        debug!("panel: thread stopped");
    }

    fn state(&self) -> ApplianceState {
        ApplianceState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    fn write_leds(&mut self, levels: Levels, status_blink: Option<u64>) {
        if !status_blink.is_some_and(|p| self.status.blink(p)) {
            self.status.write(levels.status);
        }
        self.activity.write(levels.activity);
        self.error.write(levels.error);
    }

    fn sample_button(&mut self, now: u64) {
        let Some(pin) = self.button_pin.as_mut() else {
            return;
        };
        let pressed = match pin.is_high() {
            Ok(p) => {
                if self.button_failing {
                    self.button_failing = false;
                    info!("panel: button readable again");
                }
                p
            }
            Err(e) => {
                if !self.button_failing {
                    self.button_failing = true;
                    warn!("panel: reading button: {e}");
                }
                false
            }
        };
        if let Some(ev) = self.button.update(pressed, now) {
            info!("panel: button {ev:?}");
            if self.events.send(ev).is_err() && !self.receiver_gone {
                self.receiver_gone = true;
                warn!("panel: nobody listens for button events");
            }
        }
    }
}

fn elapsed_ms(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
