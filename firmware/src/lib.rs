//! usrbd: the appliance service library.
