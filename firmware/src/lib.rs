//! usrbd: the appliance service library.

pub mod uapi;

pub mod panel;
