//! Exports: ways the served device reaches users other than a local mount.
//!
//! [`usb_gadget`] makes the appliance a USB drive: a configfs mass-storage
//! gadget whose one LUN is the usrbd block device, bound to the board's USB
//! device controller (UDC). The service sets it up once, loads and ejects the
//! medium at every attach and detach, and tears it down on exit.

pub mod usb_gadget;

pub use usb_gadget::{HostState, Roots, Udc, UsbConfig, UsbGadget, UsbProbe};
