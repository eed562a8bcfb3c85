//! Status LEDs and the detach button.
