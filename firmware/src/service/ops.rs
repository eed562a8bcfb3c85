//! The detach steps ([`DetachOps`]) acted out on the real device, mounts,
//! gadget, workers and backend.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use nix::errno::Errno;

use super::state::ServiceState;
use super::{mounts, usb, Service};
use crate::detach::{DetachOps, Phase};
use crate::device::DeviceInfo;
use crate::error::DetachError;
use crate::panel::ApplianceState;

pub(super) struct RealOps<'a> {
    pub svc: &'a mut Service,
    pub dev: DeviceInfo,
    /// When the "detaching" pattern went up, so it stays long enough to see.
    pub detaching_since: Option<Instant>,
    /// Openers of the device other than the USB gadget, seen at the eject.
    pub others_open: u32,
}

/// A detach of an idle device takes a few milliseconds: the user must still
/// see the "syncing" blink before "safe to remove", or the press looks ignored.
const DETACHING_SHOWN_AT_LEAST: Duration = Duration::from_millis(1000);

impl DetachOps for RealOps<'_> {
    fn mounts(&mut self) -> Result<Vec<PathBuf>, DetachError> {
        mounts::of_device(&self.dev)
    }

    fn unmount(&mut self, mountpoint: &Path) -> Result<(), DetachError> {
        mounts::unmount(mountpoint)
    }

    fn eject_exports(&mut self) -> Result<(), DetachError> {
        let Some(g) = self.svc.usb.as_mut() else {
            return Ok(());
        };
        // What is open beside the gadget's LUN now; the release wait waits
        // for the LUN only.
        let open = self
            .svc
            .shared
            .ctrl
            .status(self.dev.index)
            .map_err(DetachError::Status)?
            .openers;
        let lun = u32::from(matches!(g.probe().medium(), Ok(Some(_))));
        self.others_open = open.saturating_sub(lun);
        info!("detach: ejecting the USB medium");
        g.eject().map_err(DetachError::Export)
    }

    fn wait_exports_released(&mut self) -> Result<(), DetachError> {
        if self.svc.usb.is_none() {
            return Ok(());
        }
        usb::wait_gadget_released(&self.svc.shared.ctrl, &self.dev, self.others_open)
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
        match self.svc.shared.ctrl.destroy(self.dev.index, false, 0) {
            Ok(()) => Ok(()),
            // The module wrote back and flushed, then its drain deadline passed:
            // it failed what was still in flight (never acknowledged) and
            // removed the disk. That is a destroy; what was acknowledged still
            // needs the final sync.
            Err(e) if e.errno() == Some(Errno::ETIMEDOUT) => {
                warn!(
                    "detach: {} removed at the drain deadline; the requests still in flight failed",
                    self.dev.name
                );
                Ok(())
            }
            Err(e) if e.errno() == Some(Errno::ENODEV) => {
                warn!("detach: {} was already removed", self.dev.name);
                Ok(())
            }
            Err(e) => Err(DetachError::Destroy(e)),
        }
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
