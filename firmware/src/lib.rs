//! usrbd: the appliance service library.
//!
//! [`uapi`] mirrors the kernel header; [`device`] is the safe control-device API;
//! [`backend`] stores the data; [`server`] runs one worker per hardware queue;
//! [`detach`] is the ordered detach sequence; [`service`] ties them to the panel,
//! the signals and the control socket ([`ipc`]); [`config`] merges the TOML file
//! and the flags; [`export`] offers the device to a USB host as a drive;
//! [`cli`] is the command line.

pub mod backend;
pub mod config;
pub mod detach;
pub mod device;
pub mod error;
pub mod export;
pub mod ipc;
pub mod server;
pub mod service;
pub mod uapi;

pub mod panel;
