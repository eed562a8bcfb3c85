//! In-memory pins for tests: each clone shares the same level, so a test keeps one
//! clone and hands the other to the panel.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// A button a test presses with [`MockButton::set_pressed`]; it records what
/// the panel thread sampled, so a test can wait for that thread instead of
/// guessing how long a loaded machine keeps it off the CPU.
#[derive(Clone, Debug, Default)]
pub struct MockButton {
    pressed: Arc<AtomicBool>,
    samples: Arc<AtomicU32>,
    /// When the first sample of the current press saw it, and for how long
    /// the samples since have seen it held.
    press_seen: Arc<Mutex<Option<Instant>>>,
    held_seen_ms: Arc<AtomicU64>,
}

impl MockButton {
    pub fn new() -> MockButton {
        MockButton::default()
    }

    pub fn set_pressed(&self, pressed: bool) {
        self.pressed.store(pressed, Ordering::SeqCst);
    }

    /// Samples taken so far.
    pub fn samples(&self) -> u32 {
        self.samples.load(Ordering::SeqCst)
    }

    /// How long the samples of the current press have seen it held (from
    /// the first pressed sample to the latest), 0 once released.
    pub fn held_seen_ms(&self) -> u64 {
        self.held_seen_ms.load(Ordering::SeqCst)
    }
}

impl ErrorType for MockButton {
    type Error = PinError;
}

impl InputPin for MockButton {
    fn is_high(&mut self) -> Result<bool, PinError> {
        let pressed = self.pressed.load(Ordering::SeqCst);
        let mut since = self
            .press_seen
            .lock()
            .map_err(|_| PinError::from(std::io::Error::other("mock button lock poisoned")))?;
        let held = match (pressed, *since) {
            (false, _) => {
                *since = None;
                0
            }
            (true, None) => {
                *since = Some(Instant::now());
                0
            }
            (true, Some(first)) => first.elapsed().as_millis() as u64,
        };
        self.held_seen_ms.store(held, Ordering::SeqCst);
        self.samples.fetch_add(1, Ordering::SeqCst);
        Ok(pressed)
    }

    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|p| !p)
    }
}
