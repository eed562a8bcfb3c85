//! What every thread of the service may read: the reported state, the device,
//! the last error, and the status report built from them.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

use super::usb;
use crate::backend::Backend;
use crate::device::{state_name, Control, DeviceInfo};
use crate::export::usb_gadget::UsbProbe;
use crate::panel::{ApplianceState, PanelHandle};
use crate::server::Stats;
use crate::uapi::*;

/// What `usrbd status` reports as `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    Starting,
    Serving,
    Detaching,
    Safe,
    Error,
    /// Handing the device to a new binary (`usrbd upgrade`).
    Upgrading,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Serving => "serving",
            ServiceState::Detaching => "detaching",
            ServiceState::Safe => "safe",
            ServiceState::Error => "error",
            ServiceState::Upgrading => "upgrading",
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Snapshot {
    pub state: ServiceState,
    /// The device exists in the kernel and is served.
    pub device: Option<DeviceInfo>,
    /// The last error, while in state error.
    pub error: Option<String>,
}

pub(super) struct Shared {
    pub state: Mutex<Snapshot>,
    pub stats: Arc<Stats>,
    pub backend: Arc<dyn Backend>,
    pub panel: Option<PanelHandle>,
    pub ctrl: Arc<Control>,
    pub name: String,
    /// The USB gadget, as the status report and the LEDs look at it.
    pub usb: Option<UsbProbe>,
    /// Tells this process image from the next one of the same pid after an
    /// upgrade's exec.
    pub instance: u64,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A poisoned lock only means a thread panicked mid-update of plain data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> ServiceState {
        self.lock().state
    }

    /// Sets the reported state and what the LEDs show. `panel` differs from
    /// `state` when a detach failed while the device still serves: the state is
    /// error, the status LED keeps its serving pattern, the error LED lights.
    pub fn show(&self, state: ServiceState, panel: ApplianceState, error: Option<String>) {
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
            "instance": self.instance,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
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
    pub fn serving_pattern(&self) -> ApplianceState {
        usb::serving_pattern(self.usb.as_ref().map(UsbProbe::host_state))
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
