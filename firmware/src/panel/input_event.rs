//! Input-event backend (`/dev/input/eventN`): a button that the kernel already turns
//! into a key, such as a `gpio-key` / `gpio-shutdown` overlay or a uinput device.
//!
//! The key's level is read with `EVIOCGKEY` (the kernel's current key bitmap), so no
//! event stream has to be parsed and no state is lost if events are dropped.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use embedded_hal::digital::{ErrorType, InputPin};

use super::{ButtonSpec, InputDevice, PanelError, PinError};

/// Where the kernel lists input devices.
const INPUT_CLASS: &str = "/sys/class/input";
/// Bytes in a key bitmap: `KEY_MAX` (0x2ff) + 1 bits.
const KEY_BYTES: usize = 0x300 / 8;
const EV_KEY: u8 = 0x01;

// EVIOCGKEY(len) and EVIOCGBIT(EV_KEY, len) from linux/input.h.
nix::ioctl_read_buf!(eviocgkey, b'E', 0x18, u8);
nix::ioctl_read_buf!(eviocgbit_key, b'E', 0x20 + EV_KEY, u8);

fn bit(map: &[u8; KEY_BYTES], code: u16) -> bool {
    let i = usize::from(code);
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// A key on an input-event device. High means the key is down.
#[derive(Debug)]
pub struct InputButton {
    dev: File,
    key: u16,
}

impl InputButton {
    pub fn open(
        spec: &ButtonSpec,
        device: &InputDevice,
        key: u16,
    ) -> Result<InputButton, PanelError> {
        match device {
            InputDevice::Path(path) => Self::open_path(spec, path, key),
            InputDevice::Name(name) => {
                let candidates = devices_named(Path::new(INPUT_CLASS), name).map_err(|source| {
                    PanelError::Io {
                        spec: spec.to_string(),
                        what: "listing",
                        path: PathBuf::from(INPUT_CLASS),
                        source,
                    }
                })?;
                let mut last_err = None;
                // Several devices may share a name; take the first that has the key.
                for path in candidates {
                    match Self::open_path(spec, &path, key) {
                        Ok(b) => return Ok(b),
                        Err(e) => last_err = Some(e),
                    }
                }
                Err(last_err.unwrap_or_else(|| PanelError::Unavailable {
                    spec: spec.to_string(),
                    reason: format!("no input device named `{name}` in {INPUT_CLASS}"),
                }))
            }
        }
    }

    fn open_path(spec: &ButtonSpec, path: &Path, key: u16) -> Result<InputButton, PanelError> {
        let dev = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| PanelError::Io {
                spec: spec.to_string(),
                what: "opening",
                path: path.to_path_buf(),
                source,
            })?;
        let mut caps = [0u8; KEY_BYTES];
        // SAFETY: the buffer is KEY_BYTES long and the ioctl writes at most that many.
        unsafe { eviocgbit_key(dev.as_raw_fd(), &mut caps) }.map_err(|e| PanelError::Io {
            spec: spec.to_string(),
            what: "querying keys (EVIOCGBIT) of",
            path: path.to_path_buf(),
            source: io::Error::from(e),
        })?;
        if !bit(&caps, key) {
            return Err(PanelError::Unavailable {
                spec: spec.to_string(),
                reason: format!("{} does not report key code {key}", path.display()),
            });
        }
        Ok(InputButton { dev, key })
    }
}

/// Event device nodes whose input device has this name, in eventN order.
fn devices_named(class_dir: &Path, name: &str) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for entry in fs::read_dir(class_dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(n) = file_name
            .to_str()
            .and_then(|s| s.strip_prefix("event"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dev_name = match fs::read_to_string(entry.path().join("device/name")) {
            Ok(s) => s,
            Err(_) => continue,
        };
        if dev_name.trim_end_matches('\n') == name {
            found.push((n, PathBuf::from(format!("/dev/input/event{n}"))));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

impl ErrorType for InputButton {
    type Error = PinError;
}

impl InputPin for InputButton {
    fn is_high(&mut self) -> Result<bool, PinError> {
        let mut state = [0u8; KEY_BYTES];
        // SAFETY: the buffer is KEY_BYTES long and the ioctl writes at most that many.
        unsafe { eviocgkey(self.dev.as_raw_fd(), &mut state) }.map_err(io::Error::from)?;
        Ok(bit(&state, self.key))
    }

    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|p| !p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_event_devices_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (ev, name) in [
            ("event3", "gpio_keys\n"),
            ("event1", "other\n"),
            ("event10", "gpio_keys\n"),
        ] {
            fs::create_dir_all(dir.path().join(ev).join("device")).unwrap();
            fs::write(dir.path().join(ev).join("device/name"), name).unwrap();
        }
        fs::create_dir_all(dir.path().join("input5")).unwrap();
        let found = devices_named(dir.path(), "gpio_keys").unwrap();
        assert_eq!(
            found,
            vec![
                PathBuf::from("/dev/input/event3"),
                PathBuf::from("/dev/input/event10")
            ]
        );
        assert!(devices_named(dir.path(), "nope").unwrap().is_empty());
    }

    #[test]
    fn key_bitmap_bits() {
        let mut map = [0u8; KEY_BYTES];
        map[116 / 8] = 1 << (116 % 8);
        assert!(bit(&map, 116));
        assert!(!bit(&map, 115));
        assert!(!bit(&map, 0x2ff));
    }
}
