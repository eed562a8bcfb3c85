//! In-memory pins for tests: each clone shares the same level, so a test keeps one
//! clone and hands the other to the panel.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};

use super::PinError;

/// An LED that remembers its level and how many times it was written.
#[derive(Clone, Debug, Default)]
pub struct MockLed {
    level: Arc<AtomicBool>,
    writes: Arc<AtomicU32>,
    /// Set: the LED blinks on its own (as under a kernel trigger), and this
    /// holds the on+off period it was given, 0 while it does not blink.
    blink_period: Option<Arc<AtomicU64>>,
}

impl MockLed {
    pub fn new() -> MockLed {
        MockLed::default()
    }

    /// An LED that can blink on its own.
    pub fn blinking_on_its_own() -> MockLed {
        MockLed {
            blink_period: Some(Arc::default()),
            ..MockLed::default()
        }
    }

    /// The period of the blink it carries on its own, if any.
    pub fn own_blink(&self) -> Option<u64> {
        self.blink_period
            .as_ref()
            .map(|p| p.load(Ordering::SeqCst))
            .filter(|p| *p != 0)
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

impl super::Led for MockLed {
    fn blink(&mut self, on_ms: u64, off_ms: u64) -> Result<bool, PinError> {
        let Some(p) = &self.blink_period else {
            return Ok(false);
        };
        p.store(on_ms + off_ms, Ordering::SeqCst);
        Ok(true)
    }
}

impl MockLed {
    fn stop_blink(&self) {
        if let Some(p) = &self.blink_period {
            p.store(0, Ordering::SeqCst);
        }
    }
}

impl OutputPin for MockLed {
    fn set_low(&mut self) -> Result<(), PinError> {
        self.stop_blink();
        self.level.store(false, Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), PinError> {
        self.stop_blink();
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
