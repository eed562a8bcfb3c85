//! LED class backend (`/sys/class/leds/<name>`): the Pi's on-board ACT/PWR LEDs,
//! `gpio-led` overlays, input-device LEDs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use embedded_hal::digital::{ErrorType, OutputPin};
use log::debug;

use super::{LedSpec, PanelError, PinError};

/// Where the kernel lists LED class devices.
pub const LEDS_DIR: &str = "/sys/class/leds";

/// An LED class device driven through its `brightness` file.
#[derive(Debug)]
pub struct SysfsLed {
    dir: PathBuf,
    brightness: File,
    /// `max_brightness` as written to the file, kept so writes do not format.
    on: Vec<u8>,
    /// The `timer` trigger blinks it.
    blinking: bool,
}

fn io_err(spec: &LedSpec, what: &'static str, path: PathBuf, source: io::Error) -> PanelError {
    PanelError::Io {
        spec: spec.to_string(),
        what,
        path,
        source,
    }
}

impl SysfsLed {
    /// Takes the LED over: its trigger is set to `none` first, or the kernel (heartbeat,
    /// mmc0 activity) would keep changing it behind our back.
    pub fn open(spec: &LedSpec, dir: &Path) -> Result<SysfsLed, PanelError> {
        let max_path = dir.join("max_brightness");
        let max = fs::read_to_string(&max_path)
            .map_err(|e| io_err(spec, "reading", max_path.clone(), e))?;
        let max = max.trim();
        if max.parse::<u32>().map_or(true, |m| m == 0) {
            return Err(PanelError::Unavailable {
                spec: spec.to_string(),
                reason: format!(
                    "{} holds `{max}`, not a positive number",
                    max_path.display()
                ),
            });
        }
        let trigger = dir.join("trigger");
        match fs::write(&trigger, b"none") {
            Ok(()) => {}
            // Some LED drivers have no trigger file; nothing then competes for the LED.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!("panel: {} has no trigger", dir.display());
            }
            Err(e) => return Err(io_err(spec, "writing `none` to", trigger, e)),
        }
        let path = dir.join("brightness");
        let brightness = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err(spec, "opening", path, e))?;
        Ok(SysfsLed {
            dir: dir.to_owned(),
            brightness,
            on: max.as_bytes().to_vec(),
            blinking: false,
        })
    }

    /// Opens the first LED (by name order) under `leds_dir` whose name ends with `suffix`.
    pub fn open_by_suffix(
        spec: &LedSpec,
        leds_dir: &Path,
        suffix: &str,
    ) -> Result<SysfsLed, PanelError> {
        let entries = fs::read_dir(leds_dir)
            .map_err(|e| io_err(spec, "listing", leds_dir.to_path_buf(), e))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(suffix))
            .collect();
        names.sort();
        match names.first() {
            Some(name) => SysfsLed::open(spec, &leds_dir.join(name)),
            None => Err(PanelError::Unavailable {
                spec: spec.to_string(),
                reason: format!(
                    "no LED under {} has a name ending with `{suffix}`",
                    leds_dir.display()
                ),
            }),
        }
    }

    /// Under the timer trigger a brightness write would only change how
    /// bright the blink is: the trigger goes first.
    fn stop_blink(&mut self) -> Result<(), PinError> {
        if self.blinking {
            fs::write(self.dir.join("trigger"), b"none")?;
            self.blinking = false;
        }
        Ok(())
    }
}

impl super::Led for SysfsLed {
    /// The kernel's `timer` trigger (ledtrig-timer) blinks the LED, and keeps
    /// blinking if this process dies.
    fn blink(&mut self, on_ms: u64, off_ms: u64) -> Result<bool, PinError> {
        // EINVAL: no such trigger (ledtrig-timer not loaded or not built).
        fs::write(self.dir.join("trigger"), b"timer")?;
        self.blinking = true;
        fs::write(self.dir.join("delay_on"), on_ms.to_string())?;
        fs::write(self.dir.join("delay_off"), off_ms.to_string())?;
        Ok(true)
    }
}

impl ErrorType for SysfsLed {
    type Error = PinError;
}

impl OutputPin for SysfsLed {
    // sysfs attributes are parsed per write from offset 0.
    fn set_low(&mut self) -> Result<(), PinError> {
        self.stop_blink()?;
        self.brightness.write_all_at(b"0", 0)?;
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), PinError> {
        self.stop_blink()?;
        self.brightness.write_all_at(&self.on, 0)?;
        Ok(())
    }
}
