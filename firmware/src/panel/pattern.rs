//! LED patterns: the levels of the status, activity and error LEDs as a pure function
//! of the appliance state, the time and the recent I/O.
//!
//! | state | status LED | activity LED | error LED |
//! |---|---|---|---|
//! | starting | blinks 2 Hz | I/O in the last ~50 ms | off |
//! | serving | on; without an activity LED, off for ~30 ms per I/O burst (at most 5 Hz) | I/O in the last ~50 ms | off |
//! | waiting for host (USB export, no host configured it) | blinks 0.5 Hz | I/O in the last ~50 ms | off |
//! | detaching (syncing) | blinks 8 Hz | I/O in the last ~50 ms | off |
//! | safe to remove | off | off | off |
//! | error | blinks 1 Hz | I/O in the last ~50 ms | on |
//!
//! `PanelHandle::set_error(true)` lights the error LED in every state, safe included
//! (the service clears it when a retried detach succeeds). Blinks start with the LED
//! on at the moment the state is entered. When the panel stops, the LEDs are left at
//! [`steady`] levels: status on only while serving, activity off, error as above.

use super::ApplianceState;

/// How long the activity LED stays lit after I/O was seen.
pub const ACTIVITY_HOLD_MS: u64 = 50;
/// How long the status LED goes dark per I/O burst when there is no activity LED.
pub const FLICKER_OFF_MS: u64 = 30;
/// At most one status flicker per this period (5 Hz).
pub const FLICKER_PERIOD_MS: u64 = 200;

/// Blink periods (full on+off cycle).
pub const STARTING_PERIOD_MS: u64 = 500;
pub const DETACHING_PERIOD_MS: u64 = 125;
pub const ERROR_PERIOD_MS: u64 = 1000;
pub const WAITING_PERIOD_MS: u64 = 2000;

/// Levels of the three LEDs; `true` is lit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Levels {
    pub status: bool,
    pub activity: bool,
    pub error: bool,
}

/// What the pattern needs to know about recent I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    last_io: Option<u64>,
    flicker_start: Option<u64>,
}

impl Activity {
    /// Records that I/O was served at `now` (ms). A status flicker starts if the last
    /// one began at least [`FLICKER_PERIOD_MS`] ago.
    pub fn observe(&mut self, now: u64) {
        self.last_io = Some(now);
        let due = self
            .flicker_start
            .map_or(true, |s| now.saturating_sub(s) >= FLICKER_PERIOD_MS);
        if due {
            self.flicker_start = Some(now);
        }
    }

    fn within(at: Option<u64>, now: u64, window: u64) -> bool {
        at.is_some_and(|t| now.saturating_sub(t) < window)
    }

    fn lit(&self, now: u64) -> bool {
        Self::within(self.last_io, now, ACTIVITY_HOLD_MS)
    }

    fn flickering(&self, now: u64) -> bool {
        Self::within(self.flicker_start, now, FLICKER_OFF_MS)
    }
}

fn blink(in_state_ms: u64, period_ms: u64) -> bool {
    in_state_ms % period_ms < period_ms / 2
}

/// The LED levels at `now` (ms), `in_state_ms` after entering `state`.
pub fn levels(
    state: ApplianceState,
    in_state_ms: u64,
    now: u64,
    activity: &Activity,
    error_flag: bool,
    has_activity_led: bool,
) -> Levels {
    let io = activity.lit(now);
    match state {
        ApplianceState::Starting => Levels {
            status: blink(in_state_ms, STARTING_PERIOD_MS),
            activity: io,
            error: error_flag,
        },
        ApplianceState::Serving => Levels {
            status: has_activity_led || !activity.flickering(now),
            activity: io,
            error: error_flag,
        },
        ApplianceState::Detaching => Levels {
            status: blink(in_state_ms, DETACHING_PERIOD_MS),
            activity: io,
            error: error_flag,
        },
        ApplianceState::Safe => Levels {
            status: false,
            activity: false,
            error: error_flag,
        },
        ApplianceState::Error => Levels {
            status: blink(in_state_ms, ERROR_PERIOD_MS),
            activity: io,
            error: true,
        },
        ApplianceState::WaitingForHost => Levels {
            status: blink(in_state_ms, WAITING_PERIOD_MS),
            activity: io,
            error: error_flag,
        },
    }
}

/// The status LED's blink period in `state`, if it blinks: a pin that can
/// blink on its own is handed this (see [`super::Led::blink`]).
pub fn status_blink_period(state: ApplianceState) -> Option<u64> {
    match state {
        ApplianceState::Starting => Some(STARTING_PERIOD_MS),
        ApplianceState::Detaching => Some(DETACHING_PERIOD_MS),
        ApplianceState::Error => Some(ERROR_PERIOD_MS),
        ApplianceState::WaitingForHost => Some(WAITING_PERIOD_MS),
        ApplianceState::Serving | ApplianceState::Safe => None,
    }
}

/// The levels left on the LEDs when the panel stops: no blinking, no activity.
pub fn steady(state: ApplianceState, error_flag: bool) -> Levels {
    Levels {
        status: matches!(
            state,
            ApplianceState::Serving | ApplianceState::WaitingForHost
        ),
        activity: false,
        error: error_flag || state == ApplianceState::Error,
    }
}

/// Whether the levels may change within the next idle tick (so the panel ticks fast).
pub fn animated(state: ApplianceState, now: u64, activity: &Activity) -> bool {
    match state {
        ApplianceState::Starting
        | ApplianceState::Detaching
        | ApplianceState::Error
        | ApplianceState::WaitingForHost => true,
        ApplianceState::Serving => Activity::within(
            activity.last_io,
            now,
            ACTIVITY_HOLD_MS.max(FLICKER_PERIOD_MS),
        ),
        ApplianceState::Safe => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApplianceState::*;

    fn at(state: ApplianceState, t: u64) -> Levels {
        levels(state, t, 10_000 + t, &Activity::default(), false, true)
    }

    /// Status levels over one second sampled every ms, and how many times they change.
    fn toggles(state: ApplianceState) -> usize {
        let mut n = 0;
        let mut prev = at(state, 0).status;
        for t in 1..1000 {
            let s = at(state, t).status;
            if s != prev {
                n += 1;
                prev = s;
            }
        }
        n
    }

    #[test]
    fn blink_rates() {
        // Changes per second = 2 × frequency (first cycle starts lit).
        assert_eq!(toggles(Starting), 3); // 2 Hz: on/off/on/off over 1 s
        assert_eq!(toggles(Detaching), 15); // 8 Hz
        assert_eq!(toggles(Error), 1); // 1 Hz
        assert_eq!(toggles(WaitingForHost), 0); // 0.5 Hz: lit the whole first second
        assert_eq!(toggles(Serving), 0);
        assert_eq!(toggles(Safe), 0);
        for s in [Starting, Detaching, Error, WaitingForHost] {
            assert!(at(s, 0).status, "{s:?} blinks start lit");
        }
        assert!(!at(Starting, 250).status);
        assert!(at(Starting, 500).status);
        assert!(!at(Detaching, 63).status);
        assert!(!at(Error, 500).status);
        assert!(at(WaitingForHost, 999).status);
        assert!(!at(WaitingForHost, 1000).status);
        assert!(!at(WaitingForHost, 1999).status);
        assert!(at(WaitingForHost, 2000).status);
    }

    #[test]
    fn steady_states() {
        for t in [0, 7, 333, 999_999] {
            assert_eq!(
                at(Serving, t),
                Levels {
                    status: true,
                    activity: false,
                    error: false
                }
            );
            assert_eq!(at(Safe, t), Levels::default());
            assert!(at(Error, t).error);
            assert!(!at(Starting, t).error && !at(Detaching, t).error);
        }
    }

    #[test]
    fn error_flag_lights_error_led_in_every_state() {
        for s in ApplianceState::ALL {
            let l = levels(s, 0, 0, &Activity::default(), true, true);
            assert!(l.error, "{s:?}");
        }
    }

    #[test]
    fn activity_led_follows_recent_io() {
        let mut a = Activity::default();
        a.observe(1000);
        let l = |now| levels(Serving, now, now, &a, false, true);
        assert!(l(1000).activity && l(1000).status);
        assert!(l(1049).activity);
        assert!(!l(1050).activity);
        assert!(l(1049).status, "with an activity LED the status stays on");
        let safe = levels(Safe, 0, 1010, &a, false, true);
        assert!(!safe.activity, "safe shows nothing");
    }

    #[test]
    fn status_flickers_without_activity_led() {
        let mut a = Activity::default();
        let status = |a: &Activity, now| levels(Serving, now, now, a, false, false).status;
        a.observe(1000);
        assert!(!status(&a, 1000));
        assert!(!status(&a, 1029));
        assert!(status(&a, 1030));
        // Continuous I/O: at most one flicker per 200 ms (5 Hz).
        let mut dark_starts = Vec::new();
        let mut prev = true;
        for now in 1000..2000 {
            a.observe(now);
            let s = status(&a, now);
            if prev && !s {
                dark_starts.push(now);
            }
            prev = s;
        }
        assert_eq!(dark_starts, vec![1000, 1200, 1400, 1600, 1800]);
        assert!(animated(Serving, 2100, &a));
        assert!(!animated(Serving, 2300, &a));
    }

    #[test]
    fn waiting_for_host_shows_transfers_and_errors() {
        let mut a = Activity::default();
        a.observe(5000);
        let l = levels(WaitingForHost, 0, 5010, &a, false, true);
        assert!(l.activity && !l.error);
        assert!(levels(WaitingForHost, 0, 5010, &a, true, true).error);
        assert!(animated(WaitingForHost, 99_999, &Activity::default()));
    }

    #[test]
    fn steady_levels_when_stopping() {
        assert_eq!(steady(Safe, false), Levels::default());
        assert!(steady(Serving, false).status);
        assert!(steady(WaitingForHost, false).status);
        assert!(!steady(Detaching, false).status);
        assert!(steady(Error, false).error);
        assert!(steady(Safe, true).error);
    }
}
