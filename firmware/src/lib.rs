//! usrbd: the appliance service library.

pub mod panel;
