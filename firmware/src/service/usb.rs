//! USB export policy: what the status LED shows while a host is (not yet)
//! there, waiting for the gadget to let go of the device after an eject, and
//! giving the medium back when a detach stopped before the destroy.

use std::thread;
use std::time::{Duration, Instant};

use log::{error, info};

use crate::device::{Control, DeviceInfo};
use crate::error::{DetachError, ExportError};
use crate::export::usb_gadget::{HostState, UsbGadget};
use crate::panel::ApplianceState;

/// How long the detach waits for the USB gadget to close the device after the
/// eject; the gadget finishes the command in progress first.
const USB_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The serving pattern: "waiting for host" until a host configured the drive.
/// An unreadable UDC state shows as serving: the device does serve.
pub(super) fn serving_pattern(host: Option<Result<HostState, ExportError>>) -> ApplianceState {
    match host {
        Some(Ok(HostState::Other(_))) => ApplianceState::WaitingForHost,
        None | Some(Ok(HostState::Configured)) | Some(Err(_)) => ApplianceState::Serving,
    }
}

/// Waits, up to `timeout`, until `openers()` (the kernel's open count of
/// `dev`) is down to `others`: what was open beside the gadget when it was
/// ejected. Anyone else (a udev probe, a `dd`) is not waited for: plain
/// openers do not stop a graceful destroy.
pub(super) fn wait_released(
    mut openers: impl FnMut() -> Result<u32, DetachError>,
    others: u32,
    dev: &DeviceInfo,
    timeout: Duration,
) -> Result<(), DetachError> {
    let start = Instant::now();
    loop {
        let open = openers()?;
        if open <= others {
            info!(
                "detach: the USB gadget let go of {} after {} ms",
                dev.name,
                start.elapsed().as_millis()
            );
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(DetachError::StillOpen {
                path: dev.path(),
                openers: open,
                waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_released`] on the real device, with [`USB_RELEASE_TIMEOUT`].
pub(super) fn wait_gadget_released(
    ctrl: &Control,
    dev: &DeviceInfo,
    others: u32,
) -> Result<(), DetachError> {
    let openers = || {
        ctrl.status(dev.index)
            .map(|s| s.openers)
            .map_err(DetachError::Status)
    };
    wait_released(openers, others, dev, USB_RELEASE_TIMEOUT)
}

/// Puts the medium back after a detach that stopped before the destroy, so
/// the host keeps the drive it had, as the local side keeps its device.
pub(super) fn reload_medium(g: &mut UsbGadget, dev: &DeviceInfo) {
    if matches!(g.probe().medium(), Ok(Some(_))) {
        return;
    }
    if let Err(e) = g.load(&dev.path()) {
        error!("usb: loading the medium again after the failed detach: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceInfo {
        DeviceInfo {
            index: 0,
            name: "usrbd0".into(),
            size: 1 << 20,
        }
    }

    #[test]
    fn the_release_wait_ignores_openers_other_than_the_gadget() {
        // A udev probe opened the device too: down to 1 is the gadget gone.
        let mut seen = [3u32, 2, 1, 0].into_iter();
        let calls = std::cell::Cell::new(0);
        let openers = || {
            calls.set(calls.get() + 1);
            Ok(seen.next().unwrap_or(0))
        };
        wait_released(openers, 1, &dev(), Duration::from_secs(5)).unwrap();
        assert_eq!(calls.get(), 3, "waited past the gadget's release");
        // The gadget never lets go: refused, naming the device.
        let e = wait_released(|| Ok(2), 1, &dev(), Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("/dev/usrbd0"), "{e}");
    }

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
        let unreadable = ExportError::NoUdc {
            dir: "/sys/class/udc".into(),
        };
        assert_eq!(
            serving_pattern(Some(Err(unreadable))),
            ApplianceState::Serving
        );
    }
}
