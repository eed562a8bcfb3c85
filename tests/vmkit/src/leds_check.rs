//! `vmkit leds-check`: did the LEDs recorded by `vmkit panel` go through
//! the expected phases, in order?
//!
//! Phases, read from the LED levels (status unless noted):
//! - starting: status blinking slowly (2 Hz);
//! - serving: status on for >= 300 ms, or until the next phase begins;
//! - detaching: status toggling fast: 4 changes within 600 ms, none more
//!   than 300 ms after the previous one (the 8 Hz sync pattern changes
//!   every ~62 ms, though under emulation the service's timer slips; the
//!   2 Hz start pattern needs 750 ms for 4 changes, so "4 changes within
//!   1 s" alone would match it too);
//! - safe: status, error and activity all off and nothing changes for 1 s
//!   (or until the recording ends);
//! - error: error LED on.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use log::warn;

/// Steady-on time that makes a status "on" serving rather than a blink.
const SERVING_MIN_MS: u64 = 300;
/// Status changes that make the detaching pattern, their span and largest gap.
const DETACH_CHANGES: usize = 4;
const DETACH_SPAN_MS: u64 = 600;
const DETACH_GAP_MS: u64 = 300;
/// Detaching changes closer than this belong to one detaching phase.
const DETACH_JOIN_MS: u64 = 500;
/// Gaps between status changes that make the 2 Hz start blink (250 ms).
const SLOW_GAP_MS: std::ops::Range<u64> = 170..700;
const SLOW_CHANGES: usize = 3;
/// Quiet time with every LED off that makes "safe to remove".
const SAFE_QUIET_MS: u64 = 1000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Event log written by `vmkit panel --events`
    #[arg(long)]
    events: PathBuf,
    /// Phases that must appear in this order (others may come between)
    #[arg(long, value_delimiter = ',', required = true)]
    expect: Vec<Kind>,
    /// Ignore phases that ended before this time (ms since the panel started)
    #[arg(long, default_value_t = 0)]
    after_ms: u64,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.events)
        .with_context(|| format!("reading {}", args.events.display()))?;
    let (events, skipped) = parse_events(&text);
    if skipped > 0 {
        warn!(
            "{}: skipped {skipped} malformed line(s)",
            args.events.display()
        );
    }
    let seen: Vec<Phase> = phases(&events)
        .into_iter()
        .filter(|p| p.end.map_or(true, |e| e > args.after_ms))
        .collect();
    for p in &seen {
        println!("{p}");
    }
    let names = |kinds: &mut dyn Iterator<Item = Kind>| {
        kinds.map(|k| k.name()).collect::<Vec<_>>().join(",")
    };
    let expected = names(&mut args.expect.iter().copied());
    match verify(&seen, &args.expect) {
        Ok(()) => {
            println!("leds-check: ok: {expected}");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            println!(
                "leds-check: FAILED: expected {expected}, saw {}: {why}",
                names(&mut seen.iter().map(|p| p.kind))
            );
            Ok(ExitCode::from(1))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Led {
    Status,
    Error,
    Activity,
}

impl Led {
    pub fn name(self) -> &'static str {
        match self {
            Led::Status => "status",
            Led::Error => "error",
            Led::Activity => "activity",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Led::Status, Led::Error, Led::Activity]
            .into_iter()
            .find(|l| l.name() == s)
    }

    fn slot(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub ms: u64,
    pub led: Led,
    pub on: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    Starting,
    Serving,
    Detaching,
    Safe,
    Error,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Starting => "starting",
            Kind::Serving => "serving",
            Kind::Detaching => "detaching",
            Kind::Safe => "safe",
            Kind::Error => "error",
        }
    }
}

/// One phase; `end` is None when it lasted until the recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    pub kind: Kind,
    pub start: u64,
    pub end: Option<u64>,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.end {
            Some(end) => write!(
                f,
                "{} from {} ms to {} ms ({} ms)",
                self.kind.name(),
                self.start,
                end,
                end - self.start
            ),
            None => write!(f, "{} from {} ms to the end", self.kind.name(), self.start),
        }
    }
}

/// Parses `<ms> <led> <0|1>` lines; returns the events in time order and
/// how many lines were skipped (a line cut short at the end counts).
pub fn parse_events(text: &str) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let event = match fields.as_slice() {
            [ms, led, level] => match (ms.parse::<u64>(), Led::parse(led), *level) {
                (Ok(ms), Some(led), "0" | "1") => Some(Event {
                    ms,
                    led,
                    on: *level == "1",
                }),
                _ => None,
            },
            _ => None,
        };
        match event {
            Some(e) => events.push(e),
            None => skipped += 1,
        }
    }
    events.sort_by_key(|e| e.ms);
    (events, skipped)
}

/// Reads the phases out of an event stream. Phases may overlap (error with
/// serving); the result is ordered by start, with neighbours of one kind merged.
pub fn phases(events: &[Event]) -> Vec<Phase> {
    // Only changes matter; the LEDs start off.
    let mut levels = [false; 3];
    let changes: Vec<Event> = events
        .iter()
        .filter(|e| {
            let changed = levels[e.led.slot()] != e.on;
            levels[e.led.slot()] = e.on;
            changed
        })
        .copied()
        .collect();
    let status: Vec<&Event> = changes.iter().filter(|e| e.led == Led::Status).collect();

    let detaching = detaching_phases(&status);
    let starting = starting_phases(&status, &detaching);
    let safe = safe_phases(&changes);
    let error = on_intervals(&changes, Led::Error, Kind::Error);
    let serving = serving_phases(&status, &detaching, &starting, &safe);

    let mut all: Vec<Phase> = [detaching, starting, safe, error, serving].concat();
    all.sort_by_key(|p| (p.start, p.kind));
    let mut merged: Vec<Phase> = Vec::new();
    for p in all {
        match merged.last_mut() {
            Some(last) if last.kind == p.kind => {
                last.end = match (last.end, p.end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                }
            }
            _ => merged.push(p),
        }
    }
    merged
}

fn detaching_phases(status: &[&Event]) -> Vec<Phase> {
    let mut fast = vec![false; status.len()];
    for (i, window) in status.windows(DETACH_CHANGES).enumerate() {
        let span = window[DETACH_CHANGES - 1].ms - window[0].ms;
        if span < DETACH_SPAN_MS && window.windows(2).all(|w| w[1].ms - w[0].ms < DETACH_GAP_MS) {
            fast[i..i + DETACH_CHANGES]
                .iter_mut()
                .for_each(|f| *f = true);
        }
    }
    let mut out: Vec<Phase> = Vec::new();
    for (e, _) in status.iter().zip(&fast).filter(|(_, f)| **f) {
        match out.last_mut() {
            Some(p) if p.end.is_some_and(|end| e.ms - end <= DETACH_JOIN_MS) => p.end = Some(e.ms),
            _ => out.push(Phase {
                kind: Kind::Detaching,
                start: e.ms,
                end: Some(e.ms),
            }),
        }
    }
    out
}

fn inside(ms: u64, phases: &[Phase]) -> bool {
    phases
        .iter()
        .any(|p| ms >= p.start && p.end.map_or(true, |end| ms < end))
}

fn starting_phases(status: &[&Event], detaching: &[Phase]) -> Vec<Phase> {
    let mut out = Vec::new();
    let mut run: Vec<u64> = Vec::new();
    let mut flush = |run: &mut Vec<u64>| {
        if run.len() >= SLOW_CHANGES {
            out.push(Phase {
                kind: Kind::Starting,
                start: run[0],
                end: run.last().copied(),
            });
        }
        run.clear();
    };
    for e in status.iter().filter(|e| !inside(e.ms, detaching)) {
        let joins = run
            .last()
            .is_some_and(|&prev| SLOW_GAP_MS.contains(&(e.ms - prev)));
        if !joins {
            flush(&mut run);
        }
        run.push(e.ms);
    }
    flush(&mut run);
    out
}

fn safe_phases(changes: &[Event]) -> Vec<Phase> {
    let mut levels = [false; 3];
    let mut out = Vec::new();
    for (i, e) in changes.iter().enumerate() {
        levels[e.led.slot()] = e.on;
        let next = changes.get(i + 1).map(|n| n.ms);
        if levels.iter().all(|on| !on) && next.map_or(true, |n| n - e.ms >= SAFE_QUIET_MS) {
            out.push(Phase {
                kind: Kind::Safe,
                start: e.ms,
                end: next,
            });
        }
    }
    out
}

fn on_intervals(changes: &[Event], led: Led, kind: Kind) -> Vec<Phase> {
    let mut out: Vec<Phase> = Vec::new();
    for e in changes.iter().filter(|e| e.led == led) {
        if e.on {
            out.push(Phase {
                kind,
                start: e.ms,
                end: None,
            });
        } else if let Some(p) = out.last_mut() {
            p.end = Some(e.ms);
        }
    }
    out
}

fn serving_phases(
    status: &[&Event],
    detaching: &[Phase],
    starting: &[Phase],
    safe: &[Phase],
) -> Vec<Phase> {
    let begins_phase = |ms: u64| detaching.iter().chain(safe).any(|p| p.start == ms);
    on_intervals(
        &status.iter().map(|e| **e).collect::<Vec<_>>(),
        Led::Status,
        Kind::Serving,
    )
    .into_iter()
    .filter(|p| !inside(p.start, detaching))
    .filter(|p| match p.end {
        None => true,
        Some(end) => {
            let within_blink = starting.iter().any(|s| {
                s.end
                    .is_some_and(|s_end| p.start >= s.start && end <= s_end)
            });
            !within_blink && (end - p.start >= SERVING_MIN_MS || begins_phase(end))
        }
    })
    .collect()
}

/// Checks that `expected` occurs in `seen` in order, and that an error
/// phase shows up only when one is expected.
pub fn verify(seen: &[Phase], expected: &[Kind]) -> std::result::Result<(), String> {
    if !expected.contains(&Kind::Error) {
        if let Some(p) = seen.iter().find(|p| p.kind == Kind::Error) {
            return Err(format!("unexpected error phase at {} ms", p.start));
        }
    }
    let mut rest = seen.iter();
    for want in expected {
        if !rest.any(|p| p.kind == *want) {
            return Err(format!("no {} phase in order", want.name()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an event list from (ms, led, level) triples.
    fn ev(list: &[(u64, Led, u8)]) -> Vec<Event> {
        list.iter()
            .map(|&(ms, led, v)| Event {
                ms,
                led,
                on: v == 1,
            })
            .collect()
    }

    /// Status blinking with `half` ms per level from `from` for `changes` changes.
    fn blink(from: u64, half: u64, changes: usize, first_on: bool) -> Vec<Event> {
        (0..changes)
            .map(|i| Event {
                ms: from + i as u64 * half,
                led: Led::Status,
                on: (i % 2 == 0) == first_on,
            })
            .collect()
    }

    fn kinds(p: &[Phase]) -> Vec<Kind> {
        p.iter().map(|p| p.kind).collect()
    }

    use Kind::*;
    use Led::Status as S;

    #[test]
    fn full_lifecycle() {
        // Start blink 2 Hz, serve 3 s, detach at 8 Hz, then safe.
        let mut events = blink(0, 250, 8, true);
        events.extend(ev(&[(2000, S, 1)]));
        events.extend(blink(5000, 62, 11, false));
        let p = phases(&events);
        assert_eq!(kinds(&p), vec![Starting, Serving, Detaching, Safe]);
        assert_eq!(p[1].start, 2000);
        assert_eq!(p[1].end, Some(5000));
        assert_eq!(p[2].start, 5000);
        assert_eq!(p[3].start, 5000 + 10 * 62);
        assert_eq!(p[3].end, None);
        assert!(verify(&p, &[Serving, Detaching, Safe]).is_ok());
        assert!(verify(&p, &[Detaching, Serving]).is_err());
    }

    #[test]
    fn start_blink_is_not_serving_nor_detaching() {
        let p = phases(&blink(0, 250, 20, true));
        assert_eq!(p[0].kind, Starting);
        assert!(!kinds(&p).contains(&Serving));
        assert!(!kinds(&p).contains(&Detaching));
        // Jitter stretching one "on" past 300 ms keeps it a blink. (The
        // last level of a recording is open-ended, so only closed
        // serving phases would be wrong here.)
        let mut events = blink(0, 250, 5, true);
        events.extend(blink(1320, 250, 6, false));
        let p = phases(&events);
        assert_eq!(
            p[0],
            Phase {
                kind: Starting,
                start: 0,
                end: Some(2570)
            }
        );
        assert!(
            !p.iter().any(|p| p.kind == Serving && p.end.is_some()),
            "{p:?}"
        );
    }

    #[test]
    fn detach_without_safe_fails() {
        // Toggles fast, then comes back on: detach failed, device serving.
        let mut events = ev(&[(100, S, 1)]);
        events.extend(blink(3000, 62, 7, false));
        events.extend(ev(&[(3600, S, 1)]));
        let p = phases(&events);
        assert_eq!(kinds(&p), vec![Serving, Detaching, Serving]);
        assert!(verify(&p, &[Serving, Detaching, Safe]).is_err());
    }

    #[test]
    fn short_serving_before_detach_counts() {
        let mut events = ev(&[(100, S, 1)]);
        events.extend(blink(450, 62, 11, false));
        assert_eq!(kinds(&phases(&events)), vec![Serving, Detaching, Safe]);
    }

    #[test]
    fn quick_detach_recorded_under_emulation() {
        // The service detaching an idle device in a TCG VM: its 8 Hz
        // pattern slipped to a handful of changes before "safe".
        let (events, skipped) = parse_events(
            "4351 status 1\n4461 status 0\n4900 status 1\n9720 status 0\n\
             9976 status 1\n9976 status 0\n10006 status 1\n10183 status 0\n",
        );
        assert_eq!(skipped, 0);
        let p = phases(&events);
        assert_eq!(kinds(&p), vec![Serving, Detaching, Safe]);
        assert_eq!((p[1].start, p[1].end), (9720, Some(10183)));
    }

    #[test]
    fn too_few_toggles_is_not_detaching() {
        let events = ev(&[(0, S, 1), (1000, S, 0), (1060, S, 1), (1120, S, 0)]);
        let p = phases(&events);
        assert_eq!(kinds(&p), vec![Serving, Safe]);
    }

    #[test]
    fn error_while_serving() {
        let events = ev(&[(0, S, 1), (2000, Led::Error, 1)]);
        let p = phases(&events);
        assert_eq!(kinds(&p), vec![Serving, Error]);
        assert!(verify(&p, &[Serving, Error]).is_ok());
        assert_eq!(
            verify(&p, &[Serving]),
            Err("unexpected error phase at 2000 ms".into())
        );
    }

    #[test]
    fn safe_needs_all_leds_off_and_quiet() {
        let mut events = ev(&[(0, S, 1), (400, Led::Activity, 1)]);
        events.extend(blink(1000, 62, 7, false));
        // Activity still on: not safe, then it goes off but error blinks on soon.
        events.extend(ev(&[(1500, Led::Activity, 0), (1900, Led::Error, 1)]));
        let p = phases(&events);
        assert!(!kinds(&p).contains(&Safe), "{p:?}");
    }

    #[test]
    fn activity_flicker_does_not_break_serving() {
        let mut events = ev(&[(0, S, 1)]);
        for i in 0..20 {
            events.extend(ev(&[
                (100 + i * 100, Led::Activity, 1),
                (150 + i * 100, Led::Activity, 0),
            ]));
        }
        assert_eq!(kinds(&phases(&events)), vec![Serving]);
    }

    #[test]
    fn after_ms_filters_earlier_phases() {
        let mut events = ev(&[(0, S, 1), (500, Led::Error, 1), (900, Led::Error, 0)]);
        events.extend(blink(4000, 62, 11, false));
        let after: Vec<Phase> = phases(&events)
            .into_iter()
            .filter(|p| p.end.map_or(true, |e| e > 3000))
            .collect();
        assert_eq!(kinds(&after), vec![Serving, Detaching, Safe]);
        assert!(verify(&after, &[Detaching, Safe]).is_ok());
    }

    #[test]
    fn parse_skips_bad_lines_and_sorts() {
        let (events, skipped) =
            parse_events("20 status 1\n10 error 1\nbogus\n30 numlock 1\n40 status");
        assert_eq!(skipped, 3);
        assert_eq!(
            events,
            ev(&[(10, Led::Error, 1), (20, S, 1)]),
            "sorted by time"
        );
    }
}
