//! The whole panel thread, on mock pins and on a fake LED class directory.

use std::fs;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::mock::{MockButton, MockLed};
use super::sysfs_led::SysfsLed;
use super::*;

struct Rig {
    panel: Panel,
    events: Receiver<ButtonEvent>,
    button: MockButton,
    status: MockLed,
    activity: MockLed,
    error: MockLed,
}

fn rig(long_press_ms: u32, with_activity_led: bool) -> Rig {
    let (tx, rx) = mpsc::channel();
    let button = MockButton::new();
    let status = MockLed::new();
    let activity = MockLed::new();
    let error = MockLed::new();
    let pins = PanelPins {
        button: Some(Box::new(button.clone())),
        status: Some(Box::new(status.clone())),
        activity: with_activity_led.then(|| Box::new(activity.clone()) as LedPin),
        error: Some(Box::new(error.clone())),
    };
    let cfg = PanelConfig {
        long_press_ms,
        ..PanelConfig::default()
    };
    let panel = Panel::start_with_pins(&cfg, pins, tx).unwrap();
    // A button already down at the first sample is ignored: wait for it.
    wait_until("the panel's first button sample", || button.samples() > 0);
    Rig {
        panel,
        events: rx,
        button,
        status,
        activity,
        error,
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    // Generous: only a hang should hit it, not a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(2));
    }
}

/// Status LED level changes seen by polling for `ms`.
fn status_changes(led: &MockLed, ms: u64) -> u32 {
    let before = led.writes();
    sleep(Duration::from_millis(ms));
    led.writes() - before
}

/// A press the panel sees held for at least `ms`, however long the thread
/// is kept off the CPU.
fn press(b: &MockButton, ms: u64) {
    b.set_pressed(true);
    sleep(Duration::from_millis(ms));
    wait_until("the panel to see the press held", || b.held_seen_ms() >= ms);
    b.set_pressed(false);
}

/// A level change shorter than the debounce, as the wire shows it.
fn glitch(b: &MockButton, ms: u64) {
    b.set_pressed(true);
    sleep(Duration::from_millis(ms));
    b.set_pressed(false);
}

#[test]
fn leds_follow_the_state() {
    let r = rig(3000, true);
    let h = r.panel.handle();
    // Starting: 2 Hz, so about 4 changes in a second.
    let n = status_changes(&r.status, 1000);
    assert!((2..=5).contains(&n), "starting: {n} changes in 1 s");

    h.set_state(ApplianceState::Serving);
    wait_until("status on", || r.status.is_lit());
    assert_eq!(status_changes(&r.status, 300), 0, "serving is steady");
    assert!(!r.error.is_lit() && !r.activity.is_lit());

    h.activity();
    wait_until("activity LED on", || r.activity.is_lit());
    wait_until("activity LED off again", || !r.activity.is_lit());
    assert!(r.status.is_lit());

    h.set_state(ApplianceState::Detaching);
    let n = status_changes(&r.status, 500);
    assert!((5..=10).contains(&n), "detaching: {n} changes in 500 ms");

    h.set_state(ApplianceState::Safe);
    wait_until("all off", || {
        !r.status.is_lit() && !r.activity.is_lit() && !r.error.is_lit()
    });
    assert_eq!(status_changes(&r.status, 200), 0, "safe is steady");

    h.set_error(true);
    wait_until("error LED on", || r.error.is_lit());
    h.set_error(false);
    wait_until("error LED off", || !r.error.is_lit());

    h.set_state(ApplianceState::Error);
    wait_until("error LED on in error state", || r.error.is_lit());
}

#[test]
fn status_flickers_for_io_without_activity_led() {
    let r = rig(3000, false);
    let h = r.panel.handle();
    h.set_state(ApplianceState::Serving);
    wait_until("status on", || r.status.is_lit());
    let before = r.status.writes();
    h.activity();
    // One burst: one dark blink (off, then on again).
    wait_until("flicker done", || r.status.writes() >= before + 2);
    assert!(r.status.is_lit());
    sleep(Duration::from_millis(100));
    assert_eq!(r.status.writes(), before + 2);
}

#[test]
fn drop_leaves_steady_levels() {
    let r = rig(3000, true);
    let h = r.panel.handle();
    h.set_state(ApplianceState::Serving);
    wait_until("status on", || r.status.is_lit());
    h.set_state(ApplianceState::Safe);
    drop(r.panel);
    assert!(!r.status.is_lit() && !r.activity.is_lit() && !r.error.is_lit());
    let writes = r.status.writes();
    // The thread is gone: handles still work but nothing changes.
    h.set_state(ApplianceState::Serving);
    sleep(Duration::from_millis(50));
    assert_eq!(r.status.writes(), writes);

    let r = rig(3000, true);
    r.panel.handle().set_state(ApplianceState::Detaching);
    sleep(Duration::from_millis(30));
    drop(r.panel);
    assert!(!r.status.is_lit(), "detaching stops dark");
}

#[test]
fn short_and_long_press_events() {
    let r = rig(400, true);
    // Well above the debounce: the thread may be descheduled on a loaded
    // machine. The 100 ms QEMU pulse is proven on the pure state machine.
    press(&r.button, 250);
    assert_eq!(
        r.events.recv_timeout(Duration::from_secs(5)),
        Ok(ButtonEvent::ShortPress)
    );
    // A glitch is nothing.
    glitch(&r.button, 20);
    assert_eq!(
        r.events.recv_timeout(Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    );
    // Long press: reported while still held, nothing on release.
    r.button.set_pressed(true);
    let t = Instant::now();
    assert_eq!(
        r.events.recv_timeout(Duration::from_secs(20)),
        Ok(ButtonEvent::LongPress)
    );
    let held = t.elapsed();
    assert!(
        held >= Duration::from_millis(390),
        "long press after {held:?}"
    );
    r.button.set_pressed(false);
    assert_eq!(
        r.events.recv_timeout(Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    );
}

#[test]
fn presses_work_in_every_state() {
    let r = rig(3000, true);
    let h = r.panel.handle();
    for s in ApplianceState::ALL {
        h.set_state(s);
        sleep(Duration::from_millis(30));
        press(&r.button, 250);
        assert_eq!(
            r.events.recv_timeout(Duration::from_secs(5)),
            Ok(ButtonEvent::ShortPress),
            "in {s:?}"
        );
    }
}

#[test]
fn handle_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<PanelHandle>();
}

fn fake_led(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("max_brightness"), "255\n").unwrap();
    fs::write(dir.join("trigger"), "[mmc0] none timer heartbeat").unwrap();
    fs::write(dir.join("brightness"), "0\n").unwrap();
}

#[test]
fn start_drives_sysfs_leds() {
    let tmp = tempfile::tempdir().unwrap();
    let status = tmp.path().join("ACT");
    let error = tmp.path().join("input3::capslock");
    fake_led(&status);
    fake_led(&error);
    let cfg = PanelConfig {
        led_status: LedSpec::Sysfs(status.clone()),
        led_error: LedSpec::Sysfs(error.clone()),
        ..PanelConfig::default()
    };
    let read = |p: &Path| fs::read_to_string(p).unwrap();
    let (tx, _rx) = mpsc::channel();
    let panel = Panel::start(&cfg, tx).unwrap();
    // A regular file, unlike sysfs, is empty between the truncate and the
    // write of each value: wait for the write to land. Starting blinks, and
    // the kernel's timer trigger carries that blink; the error LED is taken
    // over (trigger none) and stays dark.
    wait_until("status trigger timer", || {
        read(&status.join("trigger")) == "timer"
    });
    let half = (pattern::STARTING_PERIOD_MS / 2).to_string();
    wait_until("status delay_off", || {
        read(&status.join("delay_off")) == half
    });
    wait_until("error trigger none", || {
        read(&error.join("trigger")) == "none"
    });
    let h = panel.handle();
    h.set_state(ApplianceState::Serving);
    // A level ends the kernel's blink first.
    wait_until("status trigger none", || {
        read(&status.join("trigger")) == "none"
    });
    wait_until("brightness max", || {
        read(&status.join("brightness")) == "255"
    });
    h.set_error(true);
    wait_until("error LED max", || read(&error.join("brightness")) == "255");
    h.set_error(false);
    h.set_state(ApplianceState::Safe);
    drop(panel);
    // Each write lands at offset 0 without truncating: sysfs parses every write on its
    // own, a regular file keeps the tail of the longer "255" after a "0".
    assert_eq!(read(&status.join("brightness")), "055");
    assert_eq!(read(&error.join("brightness")), "055");
}

#[test]
fn sysfs_name_picks_first_suffix_match() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["input7::capslock", "input3::capslock", "input3::numlock"] {
        fake_led(&tmp.path().join(name));
    }
    let spec = LedSpec::SysfsName("::capslock".into());
    let mut led = SysfsLed::open_by_suffix(&spec, tmp.path(), "::capslock").unwrap();
    led.set_high().unwrap();
    let read = |n: &str| fs::read_to_string(tmp.path().join(n).join("brightness")).unwrap();
    assert_eq!(read("input3::capslock"), "255");
    assert_eq!(read("input7::capslock"), "0\n");
    assert_eq!(read("input3::numlock"), "0\n");
    let err = SysfsLed::open_by_suffix(&spec, tmp.path(), "::scrolllock")
        .unwrap_err()
        .to_string();
    assert!(err.contains("::scrolllock"), "{err}");
}

#[test]
fn sysfs_led_rejects_zero_max_brightness() {
    let tmp = tempfile::tempdir().unwrap();
    fake_led(tmp.path());
    fs::write(tmp.path().join("max_brightness"), "0\n").unwrap();
    let spec = LedSpec::Sysfs(tmp.path().to_path_buf());
    let err = SysfsLed::open(&spec, tmp.path()).unwrap_err().to_string();
    assert!(err.contains("max_brightness"), "{err}");
}

#[test]
fn start_errors_name_what_failed() {
    let (tx, _rx) = mpsc::channel();
    let cfg = PanelConfig {
        led_status: LedSpec::Sysfs("/nonexistent/leds/ACT".into()),
        ..PanelConfig::default()
    };
    let msg = Panel::start(&cfg, tx.clone()).err().unwrap().to_string();
    assert!(
        msg.contains("sysfs:/nonexistent/leds/ACT")
            && msg.contains("/nonexistent/leds/ACT/max_brightness"),
        "{msg}"
    );

    let cfg = PanelConfig {
        button: "input:/nonexistent/event9:KEY_POWER".parse().unwrap(),
        ..PanelConfig::default()
    };
    let msg = Panel::start(&cfg, tx.clone()).err().unwrap().to_string();
    assert!(msg.contains("opening /nonexistent/event9"), "{msg}");

    let cfg = PanelConfig {
        button: "gpio:/nonexistent/gpiochip7:3".parse().unwrap(),
        ..PanelConfig::default()
    };
    let msg = Panel::start(&cfg, tx.clone()).err().unwrap().to_string();
    assert!(msg.contains("gpio:/nonexistent/gpiochip7:3"), "{msg}");

    let cfg = PanelConfig {
        debounce_ms: 100,
        long_press_ms: 100,
        ..PanelConfig::default()
    };
    assert!(matches!(
        Panel::start(&cfg, tx.clone()),
        Err(PanelError::Timing { .. })
    ));

    #[cfg(not(feature = "rpi"))]
    {
        let cfg = PanelConfig {
            led_error: "rppal:27".parse().unwrap(),
            ..PanelConfig::default()
        };
        let msg = Panel::start(&cfg, tx).err().unwrap().to_string();
        assert!(
            msg.contains("rppal:27") && msg.contains("feature `rpi`"),
            "{msg}"
        );
    }
}

#[test]
fn an_led_that_blinks_on_its_own_carries_every_blink_and_stops_on_a_level() {
    let (tx, _rx) = mpsc::channel();
    let status = MockLed::blinking_on_its_own();
    let pins = PanelPins {
        status: Some(Box::new(status.clone())),
        ..PanelPins::default()
    };
    let panel = Panel::start_with_pins(&PanelConfig::default(), pins, tx).unwrap();
    let h = panel.handle();
    wait_until("the starting blink handed over", || {
        status.own_blink() == Some(pattern::STARTING_PERIOD_MS)
    });
    h.set_state(ApplianceState::Detaching);
    wait_until("the detaching blink handed over", || {
        status.own_blink() == Some(pattern::DETACHING_PERIOD_MS)
    });
    let writes = status.writes();
    sleep(Duration::from_millis(200));
    assert_eq!(status.writes(), writes, "the panel blinked it as well");
    h.set_state(ApplianceState::Serving);
    wait_until("steady on, blink stopped", || {
        status.own_blink().is_none() && status.is_lit()
    });
    h.set_state(ApplianceState::Error);
    wait_until("the error blink handed over", || {
        status.own_blink() == Some(pattern::ERROR_PERIOD_MS)
    });
    drop(panel);
    assert_eq!(
        status.own_blink(),
        None,
        "a stopped panel leaves steady levels"
    );
}
