//! In-memory pins for tests: each clone shares the same level, so a test keeps one
//! clone and hands the other to the panel.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

use super::PinError;

/// An LED that remembers its level and how many times it was written.
#[derive(Clone, Debug, Default)]
pub struct MockLed {
    level: Arc<AtomicBool>,
    writes: Arc<AtomicU32>,
}

impl MockLed {
    pub fn new() -> MockLed {
        MockLed::default()
    }

    pub fn is_lit(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }

    /// Number of writes so far (the panel writes only on change).
    pub fn writes(&self) -> u32 {
        self.writes.load(Ordering::SeqCst)
    }
}

impl ErrorType for MockLed {
    type Error = PinError;
}

impl OutputPin for MockLed {
    fn set_low(&mut self) -> Result<(), PinError> {
        self.level.store(false, Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), PinError> {
        self.level.store(true, Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A button a test presses with [`MockButton::set_pressed`].
#[derive(Clone, Debug, Default)]
pub struct MockButton {
    pressed: Arc<AtomicBool>,
}

impl MockButton {
    pub fn new() -> MockButton {
        MockButton::default()
    }

    pub fn set_pressed(&self, pressed: bool) {
        self.pressed.store(pressed, Ordering::SeqCst);
    }
}

impl ErrorType for MockButton {
    type Error = PinError;
}

impl InputPin for MockButton {
    fn is_high(&mut self) -> Result<bool, PinError> {
        Ok(self.pressed.load(Ordering::SeqCst))
    }

    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|p| !p)
    }
}
