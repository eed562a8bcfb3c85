//! The button state machine: debounce, then short or long press.
//!
//! Fed `(pressed, now_ms)` samples, pure and allocation-free:
//! - a level counts only once it has been stable for `debounce_ms`, so glitches and
//!   contact bounce shorter than that are ignored;
//! - a press released before `long_press_ms` (measured from the start of the press)
//!   gives [`ButtonEvent::ShortPress`] on release;
//! - a press held for `long_press_ms` gives [`ButtonEvent::LongPress`] as soon as the
//!   threshold passes, and its release gives nothing;
//! - a button already pressed at the first sample is not a press (a stuck or
//!   wrongly-polarised button must not power the appliance off); it has to be released
//!   first.

use super::ButtonEvent;

#[derive(Clone, Debug)]
pub struct ButtonMachine {
    debounce_ms: u64,
    long_press_ms: u64,
    /// Last raw sample and when it last changed; `None` before the first sample.
    raw: Option<bool>,
    raw_since: u64,
    /// Debounced level.
    stable: bool,
    press_start: u64,
    /// The current press needs no more events (long press sent, or pressed at start).
    press_done: bool,
}

impl ButtonMachine {
    pub fn new(debounce_ms: u32, long_press_ms: u32) -> ButtonMachine {
        ButtonMachine {
            debounce_ms: u64::from(debounce_ms),
            long_press_ms: u64::from(long_press_ms),
            raw: None,
            raw_since: 0,
            stable: false,
            press_start: 0,
            press_done: false,
        }
    }

    /// Feeds one sample taken at `now` (ms, non-decreasing).
    pub fn update(&mut self, pressed: bool, now: u64) -> Option<ButtonEvent> {
        let Some(raw) = self.raw else {
            self.raw = Some(pressed);
            self.raw_since = now;
            self.stable = pressed;
            self.press_start = now;
            self.press_done = pressed;
            return None;
        };
        if pressed != raw {
            self.raw = Some(pressed);
            self.raw_since = now;
        }
        if pressed != self.stable && now.saturating_sub(self.raw_since) >= self.debounce_ms {
            self.stable = pressed;
            if pressed {
                self.press_start = self.raw_since;
                self.press_done = false;
            } else {
                let done = self.press_done;
                self.press_done = false;
                if !done {
                    return Some(ButtonEvent::ShortPress);
                }
            }
        }
        if self.stable
            && !self.press_done
            && now.saturating_sub(self.press_start) >= self.long_press_ms
        {
            self.press_done = true;
            return Some(ButtonEvent::LongPress);
        }
        None
    }

    /// Released and settled: nothing can happen until the level changes.
    pub fn at_rest(&self) -> bool {
        !self.stable && self.raw != Some(true)
    }

    /// The debounced level.
    pub fn pressed(&self) -> bool {
        self.stable
    }
}
