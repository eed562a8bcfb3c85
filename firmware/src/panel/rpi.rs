//! Raspberry Pi GPIO backend through rppal (cargo feature `rpi`).
//!
//! rppal maps the SoC's GPIO registers through `/dev/gpiomem`, which only the Raspberry
//! Pi kernel provides; on other kernels `Gpio::new()` fails and the spec to use is
//! `gpio:/dev/gpiochip0:<line>` (the GPIO character device), which works everywhere.
//! Pins are BCM numbers; the spec parser limits them to 0..=53.

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use rppal::gpio::Gpio;

use super::{ButtonSpec, LedSpec, PanelError, PinError};

fn pin(spec: &dyn std::fmt::Display, bcm: u8) -> Result<rppal::gpio::Pin, PanelError> {
    let err = |source| PanelError::Rppal {
        spec: spec.to_string(),
        source,
    };
    Gpio::new().map_err(err)?.get(bcm).map_err(err)
}

/// A button on a BCM pin; high means pressed.
#[derive(Debug)]
pub struct RppalButton {
    pin: rppal::gpio::InputPin,
    active_low: bool,
}

impl RppalButton {
    pub fn open(spec: &ButtonSpec, bcm: u8, active_low: bool) -> Result<RppalButton, PanelError> {
        let p = pin(spec, bcm)?;
        // Keep an open button from floating: an active-low button shorts the pin to
        // ground, so pull it up; an active-high one, down.
        let pin = if active_low {
            p.into_input_pullup()
        } else {
            p.into_input_pulldown()
        };
        Ok(RppalButton { pin, active_low })
    }
}

impl ErrorType for RppalButton {
    type Error = PinError;
}

impl InputPin for RppalButton {
    fn is_high(&mut self) -> Result<bool, PinError> {
        Ok(self.pin.is_high() != self.active_low)
    }

    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|p| !p)
    }
}

/// An LED on a BCM pin.
#[derive(Debug)]
pub struct RppalLed {
    pin: rppal::gpio::OutputPin,
    active_low: bool,
}

impl RppalLed {
    pub fn open(spec: &LedSpec, bcm: u8, active_low: bool) -> Result<RppalLed, PanelError> {
        let p = pin(spec, bcm)?;
        let mut pin = if active_low {
            p.into_output_high()
        } else {
            p.into_output_low()
        };
        // rppal would restore the pin's old mode on drop; the LED must keep the level
        // the panel leaves it at (safe to remove → off).
        pin.set_reset_on_drop(false);
        Ok(RppalLed { pin, active_low })
    }

    fn set(&mut self, lit: bool) {
        if lit != self.active_low {
            self.pin.set_high();
        } else {
            self.pin.set_low();
        }
    }
}

impl ErrorType for RppalLed {
    type Error = PinError;
}

impl super::Led for RppalLed {}

impl OutputPin for RppalLed {
    fn set_low(&mut self) -> Result<(), PinError> {
        self.set(false);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), PinError> {
        self.set(true);
        Ok(())
    }
}
