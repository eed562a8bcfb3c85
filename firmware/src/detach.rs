//! The detach sequence: stop local users, eject the USB medium, flush, graceful
//! destroy while the workers keep serving, final sync, "safe to remove".
//!
//! The order is the point: nothing is torn down before every acknowledged write
//! can reach the backend. The steps act through [`DetachOps`] so the ordering is
//! tested against a fake device; [`crate::service`] implements it for real.

use std::path::{Path, PathBuf};

use log::{error, info};

use crate::error::DetachError;

/// The real-world actions of a detach.
pub trait DetachOps {
    /// Where the device is mounted on this machine.
    fn mounts(&mut self) -> Result<Vec<PathBuf>, DetachError>;
    /// Unmounts one mount point; never lazily. EBUSY is [`DetachError::Busy`].
    fn unmount(&mut self, mountpoint: &Path) -> Result<(), DetachError>;
    /// Takes the medium away from a USB host (forced eject); nothing without
    /// a USB export. The host sees the medium removed and stops writing.
    fn eject_exports(&mut self) -> Result<(), DetachError>;
    /// Waits, with a deadline, until the exports no longer hold the device
    /// open (the gadget finished its last command and closed it).
    fn wait_exports_released(&mut self) -> Result<(), DetachError>;
    /// Opens the block device and fsyncs it (page cache, then a FLUSH request).
    fn flush_device(&mut self) -> Result<(), DetachError>;
    /// Graceful destroy through the module; returns once in-flight I/O drained.
    fn destroy(&mut self) -> Result<(), DetachError>;
    /// Waits for the workers, which return on the "device gone" event.
    fn join_workers(&mut self) -> Result<(), DetachError>;
    /// Final fdatasync or RAM image save.
    fn finish_backend(&mut self) -> Result<(), DetachError>;
    /// Progress for the LEDs and the status report.
    fn report(&mut self, phase: Phase);
}

/// Where a detach stands, as the service shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The sequence started (LEDs: syncing).
    Detaching,
    /// A step failed before the destroy: the device still serves (error LED).
    FailedServing,
    /// A step failed after the destroy: nothing serves (error state).
    FailedDown,
    /// Everything is on the backend: safe to remove.
    Safe,
}

/// How far a device's detach got; kept across attempts so a retry resumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub destroyed: bool,
    pub workers_joined: bool,
    pub finished: bool,
}

/// What [`detach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Detached,
    AlreadySafe,
}

/// Runs (or resumes) the detach sequence. Idempotent: once it succeeded, later
/// calls do nothing and return [`Outcome::AlreadySafe`].
pub fn detach(ops: &mut dyn DetachOps, progress: &mut Progress) -> Result<Outcome, DetachError> {
    if progress.finished {
        return Ok(Outcome::AlreadySafe);
    }
    ops.report(Phase::Detaching);
    let res = run(ops, progress);
    match &res {
        Ok(_) => ops.report(Phase::Safe),
        Err(e) => {
            error!("detach: {e}");
            ops.report(if progress.destroyed {
                Phase::FailedDown
            } else {
                Phase::FailedServing
            });
        }
    }
    res
}

fn run(ops: &mut dyn DetachOps, progress: &mut Progress) -> Result<Outcome, DetachError> {
    if !progress.destroyed {
        // Local mounts first: a busy one refuses the detach before the USB
        // host loses its medium, so a refused detach changes nothing.
        for m in ops.mounts()? {
            info!("detach: unmounting {}", m.display());
            ops.unmount(&m)?;
        }
        ops.eject_exports()?;
        ops.wait_exports_released()?;
        info!("detach: flushing the block device");
        ops.flush_device()?;
        info!("detach: graceful destroy");
        ops.destroy()?;
        progress.destroyed = true;
    }
    if !progress.workers_joined {
        ops.join_workers()?;
        progress.workers_joined = true;
    }
    info!("detach: final sync of the backend");
    ops.finish_backend()?;
    progress.finished = true;
    info!("detach: safe to remove");
    Ok(Outcome::Detached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use proptest::prelude::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Ev {
        Mounts,
        Unmount(usize),
        Eject,
        Released,
        Flush,
        Destroy,
        Join,
        Finish,
        Report(Phase),
    }

    /// A device whose steps fail as told; `serving` is what the kernel would do.
    #[derive(Debug, Default)]
    struct Fake {
        mounted: Vec<bool>,
        busy: Vec<bool>,
        flush_fails: bool,
        destroy_fails: bool,
        finish_fails: u32,
        serving: bool,
        /// A USB host has the medium; `usb_stuck`: the gadget never closes it.
        usb: bool,
        usb_loaded: bool,
        usb_stuck: bool,
        log: Vec<Ev>,
    }

    impl DetachOps for Fake {
        fn mounts(&mut self) -> Result<Vec<PathBuf>, DetachError> {
            self.log.push(Ev::Mounts);
            Ok(self
                .mounted
                .iter()
                .enumerate()
                .filter(|(_, m)| **m)
                .map(|(i, _)| PathBuf::from(format!("/mnt/{i}")))
                .collect())
        }
        fn unmount(&mut self, mp: &Path) -> Result<(), DetachError> {
            let i: usize = mp.to_string_lossy()[5..].parse().unwrap();
            self.log.push(Ev::Unmount(i));
            if self.busy[i] {
                return Err(DetachError::Busy {
                    mountpoint: mp.to_owned(),
                });
            }
            self.mounted[i] = false;
            Ok(())
        }
        fn eject_exports(&mut self) -> Result<(), DetachError> {
            self.log.push(Ev::Eject);
            self.usb_loaded = false;
            Ok(())
        }
        fn wait_exports_released(&mut self) -> Result<(), DetachError> {
            self.log.push(Ev::Released);
            if self.usb && self.usb_stuck {
                return Err(DetachError::StillOpen {
                    path: "/dev/usrbd0".into(),
                    openers: 1,
                    waited_ms: 10_000,
                });
            }
            Ok(())
        }
        fn flush_device(&mut self) -> Result<(), DetachError> {
            self.log.push(Ev::Flush);
            if self.flush_fails {
                return Err(DetachError::Flush {
                    path: "/dev/usrbd0".into(),
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                });
            }
            Ok(())
        }
        fn destroy(&mut self) -> Result<(), DetachError> {
            self.log.push(Ev::Destroy);
            // The kernel refuses a graceful destroy while the gadget holds the device.
            if self.destroy_fails || self.usb_loaded {
                return Err(DetachError::Destroy(crate::error::DeviceError::Ioctl {
                    op: "USRBD_IOC_DESTROY".into(),
                    errno: Errno::ETIMEDOUT,
                }));
            }
            self.serving = false;
            Ok(())
        }
        fn join_workers(&mut self) -> Result<(), DetachError> {
            self.log.push(Ev::Join);
            Ok(())
        }
        fn finish_backend(&mut self) -> Result<(), DetachError> {
            self.log.push(Ev::Finish);
            if self.finish_fails > 0 {
                self.finish_fails -= 1;
                return Err(DetachError::Finish(crate::error::BackendError::Io {
                    what: "saving",
                    path: "/image".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                }));
            }
            Ok(())
        }
        fn report(&mut self, phase: Phase) {
            self.log.push(Ev::Report(phase));
        }
    }

    fn pos(log: &[Ev], ev: Ev) -> Option<usize> {
        log.iter().position(|e| *e == ev)
    }

    #[test]
    fn clean_detach_runs_every_step_in_order() {
        let mut f = Fake {
            mounted: vec![true],
            busy: vec![false],
            serving: true,
            ..Default::default()
        };
        let mut p = Progress::default();
        assert_eq!(detach(&mut f, &mut p).unwrap(), Outcome::Detached);
        assert_eq!(
            f.log,
            vec![
                Ev::Report(Phase::Detaching),
                Ev::Mounts,
                Ev::Unmount(0),
                Ev::Eject,
                Ev::Released,
                Ev::Flush,
                Ev::Destroy,
                Ev::Join,
                Ev::Finish,
                Ev::Report(Phase::Safe)
            ]
        );
        f.log.clear();
        assert_eq!(detach(&mut f, &mut p).unwrap(), Outcome::AlreadySafe);
        assert!(
            f.log.is_empty(),
            "a second detach must do nothing: {:?}",
            f.log
        );
    }

    #[test]
    fn usb_eject_comes_before_flush_and_destroy() {
        let mut f = Fake {
            serving: true,
            usb: true,
            usb_loaded: true,
            ..Default::default()
        };
        let mut p = Progress::default();
        assert_eq!(detach(&mut f, &mut p).unwrap(), Outcome::Detached);
        assert_eq!(
            f.log,
            vec![
                Ev::Report(Phase::Detaching),
                Ev::Mounts,
                Ev::Eject,
                Ev::Released,
                Ev::Flush,
                Ev::Destroy,
                Ev::Join,
                Ev::Finish,
                Ev::Report(Phase::Safe)
            ]
        );
        assert!(!f.usb_loaded && !f.serving);
    }

    #[test]
    fn a_gadget_that_keeps_the_device_open_stops_the_detach_before_the_flush() {
        let mut f = Fake {
            serving: true,
            usb: true,
            usb_loaded: true,
            usb_stuck: true,
            ..Default::default()
        };
        let mut p = Progress::default();
        let e = detach(&mut f, &mut p).unwrap_err();
        assert!(matches!(e, DetachError::StillOpen { .. }), "{e}");
        assert!(e.to_string().contains("/dev/usrbd0"), "{e}");
        assert!(f.serving);
        assert_eq!(pos(&f.log, Ev::Flush), None);
        assert_eq!(pos(&f.log, Ev::Destroy), None);
        assert_eq!(f.log.last(), Some(&Ev::Report(Phase::FailedServing)));
        f.usb_stuck = false;
        assert_eq!(detach(&mut f, &mut p).unwrap(), Outcome::Detached);
    }

    #[test]
    fn a_busy_local_mount_refuses_before_the_usb_host_loses_its_medium() {
        let mut f = Fake {
            mounted: vec![true],
            busy: vec![true],
            serving: true,
            usb: true,
            usb_loaded: true,
            ..Default::default()
        };
        let mut p = Progress::default();
        assert!(detach(&mut f, &mut p).is_err());
        assert_eq!(pos(&f.log, Ev::Eject), None);
        assert!(f.usb_loaded);
    }

    #[test]
    fn busy_unmount_leaves_the_device_serving() {
        let mut f = Fake {
            mounted: vec![true],
            busy: vec![true],
            serving: true,
            ..Default::default()
        };
        let mut p = Progress::default();
        let e = detach(&mut f, &mut p).unwrap_err();
        assert!(matches!(e, DetachError::Busy { .. }));
        assert!(f.serving);
        assert_eq!(pos(&f.log, Ev::Flush), None);
        assert_eq!(pos(&f.log, Ev::Destroy), None);
        assert_eq!(f.log.last(), Some(&Ev::Report(Phase::FailedServing)));
        // Once the user lets go of the mount, a retry goes through.
        f.busy[0] = false;
        assert_eq!(detach(&mut f, &mut p).unwrap(), Outcome::Detached);
        assert!(!f.serving);
    }

    #[test]
    fn failed_save_is_retried_without_destroying_again() {
        let mut f = Fake {
            serving: true,
            finish_fails: 1,
            ..Default::default()
        };
        let mut p = Progress::default();
        assert!(detach(&mut f, &mut p).is_err());
        assert_eq!(f.log.last(), Some(&Ev::Report(Phase::FailedDown)));
        f.log.clear();
        assert_eq!(detach(&mut f, &mut p).unwrap(), Outcome::Detached);
        assert_eq!(pos(&f.log, Ev::Destroy), None);
        assert_eq!(pos(&f.log, Ev::Join), None);
        assert!(pos(&f.log, Ev::Finish).is_some());
    }

    proptest! {
        #[test]
        fn ordering_holds_whatever_fails(
            mounts in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..4),
            flush_fails in any::<bool>(),
            destroy_fails in any::<bool>(),
            finish_fails in 0u32..3,
            attempts in 1usize..4,
            usb in any::<bool>(),
            usb_stuck in any::<bool>(),
        ) {
            let mut f = Fake {
                mounted: mounts.iter().map(|m| m.0).collect(),
                busy: mounts.iter().map(|m| m.1).collect(),
                flush_fails,
                destroy_fails,
                finish_fails,
                serving: true,
                usb,
                usb_loaded: usb,
                usb_stuck,
                log: Vec::new(),
            };
            let mut p = Progress::default();
            let mut results = Vec::new();
            for _ in 0..attempts {
                results.push(detach(&mut f, &mut p));
            }
            let log = &f.log;
            let busy_mounted = mounts.iter().any(|m| m.0 && m.1);
            // Destroy never before a successful flush, nor with a mount left.
            for (i, e) in log.iter().enumerate() {
                if *e == Ev::Destroy {
                    prop_assert!(log[..i].contains(&Ev::Flush));
                    prop_assert!(!busy_mounted);
                }
                // The save/sync only after a destroy and the workers' exit.
                if *e == Ev::Finish {
                    prop_assert!(log[..i].contains(&Ev::Destroy));
                    prop_assert!(log[..i].contains(&Ev::Join));
                }
                if *e == Ev::Join {
                    prop_assert!(log[..i].contains(&Ev::Destroy));
                }
                // The flush only once the USB host lost the medium and let go.
                if *e == Ev::Flush {
                    prop_assert!(log[..i].contains(&Ev::Eject));
                    prop_assert!(!(usb && usb_stuck));
                }
                // No eject while a busy local mount refuses the detach.
                if *e == Ev::Eject {
                    prop_assert!(!busy_mounted);
                }
            }
            // A busy mount: nothing torn down, still serving, reported so.
            if busy_mounted {
                prop_assert!(f.serving);
                prop_assert!(!log.contains(&Ev::Flush));
                let all_busy = results.iter().all(|r| matches!(r, Err(DetachError::Busy { .. })));
                prop_assert!(all_busy);
            }
            // A destroy that succeeded is never repeated.
            if !destroy_fails {
                prop_assert!(log.iter().filter(|e| **e == Ev::Destroy).count() <= 1);
            }
            // Success exactly when every step could succeed within the attempts.
            let usb_blocks = usb && usb_stuck;
            let can = !(busy_mounted || flush_fails || destroy_fails || usb_blocks)
                && (finish_fails as usize) < attempts;
            prop_assert_eq!(p.finished, can);
            if can {
                prop_assert_eq!(log.iter().rev().find(|e| matches!(e, Ev::Report(_))), Some(&Ev::Report(Phase::Safe)));
            }
        }
    }
}
