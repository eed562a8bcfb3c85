//! The button state machine: debounce, then short or long press.
//!
//! Fed `(pressed, now_ms)` samples, pure and allocation-free:
//! - a level counts only once it has been stable for `debounce_ms`, so glitches and
//!   contact bounce shorter than that are ignored;
//! - a press released before `long_press_ms` (measured from the first sample of the
//!   press to the first sample of the release) gives [`ButtonEvent::ShortPress`] once
//!   the release is debounced;
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
        // The raw level must still be down: a press released just before the threshold
        // is short even though its release is still being debounced.
        if self.stable
            && pressed
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEBOUNCE: u32 = 50;
    const LONG: u32 = 3000;
    const STEP: u64 = 5;

    /// Feeds `level` every STEP ms over [from, to) and collects the events with times.
    fn hold(
        m: &mut ButtonMachine,
        level: bool,
        from: u64,
        to: u64,
        out: &mut Vec<(u64, ButtonEvent)>,
    ) {
        let mut t = from;
        while t < to {
            if let Some(ev) = m.update(level, t) {
                out.push((t, ev));
            }
            t += STEP;
        }
    }

    /// Runs (level, duration) segments back to back, starting released at t=0.
    fn run(segments: &[(bool, u64)]) -> Vec<(u64, ButtonEvent)> {
        let mut m = ButtonMachine::new(DEBOUNCE, LONG);
        let mut out = Vec::new();
        let mut t = 0;
        hold(&mut m, false, t, t + 100, &mut out);
        t += 100;
        for &(level, d) in segments {
            hold(&mut m, level, t, t + d, &mut out);
            t += d;
        }
        out
    }

    #[test]
    fn glitch_shorter_than_debounce_is_ignored() {
        assert!(run(&[(true, 45), (false, 500)]).is_empty());
        assert!(run(&[(true, 20), (false, 10), (true, 30), (false, 500)]).is_empty());
    }

    #[test]
    fn short_press_emitted_on_release() {
        let ev = run(&[(true, 100), (false, 200)]);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].1, ButtonEvent::ShortPress);
        // Release at 200 ms, confirmed after the debounce time.
        assert_eq!(ev[0].0, 200 + u64::from(DEBOUNCE));
    }

    #[test]
    fn qemu_100ms_pulse_caught_with_idle_sampling() {
        // Sampled every 20 ms until the press is seen, as the panel does at rest.
        let mut m = ButtonMachine::new(DEBOUNCE, LONG);
        let level = |t: u64| (1013..1113).contains(&t);
        let mut events = Vec::new();
        let mut t = 0;
        while t < 2000 {
            if let Some(ev) = m.update(level(t), t) {
                events.push(ev);
            }
            t += if m.at_rest() { 20 } else { 5 };
        }
        assert_eq!(events, vec![ButtonEvent::ShortPress]);
    }

    #[test]
    fn bounce_during_press_is_one_press() {
        let ev = run(&[
            (true, 10),
            (false, 5),
            (true, 10),
            (false, 5),
            (true, 400),
            (false, 10),
            (true, 20),
            (false, 5),
            (true, 300),
            (false, 300),
        ]);
        assert_eq!(
            ev.iter().map(|e| e.1).collect::<Vec<_>>(),
            vec![ButtonEvent::ShortPress]
        );
    }

    #[test]
    fn long_press_emitted_at_threshold_while_held() {
        let mut m = ButtonMachine::new(DEBOUNCE, LONG);
        let mut out = Vec::new();
        hold(&mut m, false, 0, 100, &mut out);
        hold(&mut m, true, 100, 100 + 2995, &mut out);
        assert!(out.is_empty(), "nothing before the threshold: {out:?}");
        hold(&mut m, true, 3095, 6000, &mut out);
        assert_eq!(out, vec![(3100, ButtonEvent::LongPress)]);
        assert!(m.pressed());
        hold(&mut m, false, 6000, 7000, &mut out);
        assert_eq!(
            out.len(),
            1,
            "release after a long press is silent: {out:?}"
        );
    }

    #[test]
    fn press_just_under_long_is_short() {
        let ev = run(&[(true, u64::from(LONG) - 10), (false, 200)]);
        assert_eq!(
            ev.iter().map(|e| e.1).collect::<Vec<_>>(),
            vec![ButtonEvent::ShortPress]
        );
    }

    #[test]
    fn presses_keep_working_after_each_other() {
        let ev = run(&[
            (true, 100),
            (false, 200),
            (true, 3500),
            (false, 200),
            (true, 80),
            (false, 200),
        ]);
        assert_eq!(
            ev.iter().map(|e| e.1).collect::<Vec<_>>(),
            vec![
                ButtonEvent::ShortPress,
                ButtonEvent::LongPress,
                ButtonEvent::ShortPress
            ]
        );
    }

    #[test]
    fn pressed_at_start_is_not_a_press() {
        let mut m = ButtonMachine::new(DEBOUNCE, LONG);
        let mut out = Vec::new();
        hold(&mut m, true, 0, 5000, &mut out);
        hold(&mut m, false, 5000, 5200, &mut out);
        assert!(out.is_empty(), "{out:?}");
        hold(&mut m, true, 5200, 5300, &mut out);
        hold(&mut m, false, 5300, 5500, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, ButtonEvent::ShortPress);
    }

    #[test]
    fn at_rest_only_when_released_and_settled() {
        let mut m = ButtonMachine::new(DEBOUNCE, LONG);
        m.update(false, 0);
        assert!(m.at_rest());
        m.update(true, 5);
        assert!(!m.at_rest(), "a raw press must switch to fast sampling");
        m.update(false, 10);
        assert!(m.at_rest());
    }

    proptest! {
        /// Any sequence of pulses each shorter than the debounce time, sampled at any
        /// rate, yields no event. Each gap holds at least one sample: pulses with no
        /// released sample between them are one longer pulse to any sampler.
        #[test]
        fn pulses_shorter_than_debounce_yield_nothing(
            debounce in 1u32..200,
            segments in proptest::collection::vec((0u64..1000, 0.0f64..1.0), 0..40),
            step in 1u64..20,
        ) {
            let mut m = ButtonMachine::new(debounce, debounce + 1000);
            let mut t = 0u64;
            for (gap, frac) in segments {
                let gap_end = t + step + gap;
                while t < gap_end {
                    prop_assert_eq!(m.update(false, t), None);
                    t += step;
                }
                // Strictly shorter than the debounce time.
                let len = ((f64::from(debounce) - 1.0) * frac) as u64;
                let pulse_end = t + len;
                while t < pulse_end {
                    prop_assert_eq!(m.update(true, t), None);
                    t += step;
                }
            }
            for _ in 0..100 {
                prop_assert_eq!(m.update(false, t), None);
                t += step;
            }
        }
    }
}
