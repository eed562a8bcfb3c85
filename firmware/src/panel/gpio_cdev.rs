//! GPIO character device backend (`/dev/gpiochipN`, uAPI v2 through gpiocdev): works on
//! any kernel and board, e.g. QEMU's PL061 or the Pi's pinctrl-bcm2835.

use std::time::Duration;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use gpiocdev::line::{Bias, EdgeDetection, Value};
use gpiocdev::request::Request;
use log::{debug, info};

use super::{ButtonSpec, GpioLine, LedSpec, PanelError, PinError};

const CONSUMER: &str = "usrbd";

/// Kernel debounce for the button line. It only filters contact bounce; the stable
/// time the press must last is enforced by our own debouncer, so this stays short and
/// cannot swallow a short press.
const KERNEL_DEBOUNCE: Duration = Duration::from_millis(5);

fn pin_err(e: gpiocdev::Error) -> PinError {
    PinError::from(std::io::Error::other(e))
}

/// A button on an input line. High means pressed (active-low is applied by the kernel).
#[derive(Debug)]
pub struct GpioButton {
    req: Request,
    line: u32,
    edges: bool,
}

impl GpioButton {
    /// Requests the line as an input with edge detection and kernel debounce; when the
    /// chip cannot do those (no interrupt on the line), as a plain input.
    pub fn open(spec: &ButtonSpec, g: &GpioLine) -> Result<GpioButton, PanelError> {
        let request = |edges: bool| {
            let mut b = Request::builder();
            b.on_chip(&g.chip)
                .with_consumer(CONSUMER)
                .with_line(g.line)
                .as_input();
            // Keep an open button from floating: an active-low button shorts the line
            // to ground, so pull it up; an active-high one, down. Chips without bias
            // control (QEMU's PL061) ignore this.
            if g.active_low {
                b.as_active_low().with_bias(Bias::PullUp);
            } else {
                b.with_bias(Bias::PullDown);
            }
            if edges {
                b.with_edge_detection(EdgeDetection::BothEdges)
                    .with_debounce_period(KERNEL_DEBOUNCE);
            }
            b.request()
        };
        let (req, edges) = match request(true) {
            Ok(req) => (req, true),
            Err(e) => {
                info!("panel: {spec}: no edge detection/debounce ({e}); polling the level");
                let req = request(false).map_err(|source| PanelError::Gpio {
                    spec: spec.to_string(),
                    source,
                })?;
                (req, false)
            }
        };
        debug!("panel: {spec}: requested, edges={edges}");
        Ok(GpioButton {
            req,
            line: g.line,
            edges,
        })
    }
}

impl ErrorType for GpioButton {
    type Error = PinError;
}

impl InputPin for GpioButton {
    fn is_high(&mut self) -> Result<bool, PinError> {
        // The level is sampled; edge events are only drained so the kernel queue never
        // overflows.
        if self.edges {
            while self.req.has_edge_event().map_err(pin_err)? {
                self.req.read_edge_event().map_err(pin_err)?;
            }
        }
        let v = self.req.value(self.line).map_err(pin_err)?;
        Ok(v == Value::Active)
    }

    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|p| !p)
    }
}

/// An LED on an output line (active-low applied by the kernel).
#[derive(Debug)]
pub struct GpioLed {
    req: Request,
    line: u32,
}

impl GpioLed {
    pub fn open(spec: &LedSpec, g: &GpioLine) -> Result<GpioLed, PanelError> {
        let mut b = Request::builder();
        b.on_chip(&g.chip)
            .with_consumer(CONSUMER)
            .with_line(g.line)
            .as_output(Value::Inactive);
        if g.active_low {
            b.as_active_low();
        }
        let req = b.request().map_err(|source| PanelError::Gpio {
            spec: spec.to_string(),
            source,
        })?;
        Ok(GpioLed { req, line: g.line })
    }

    fn set(&mut self, v: Value) -> Result<(), PinError> {
        self.req.set_value(self.line, v).map_err(pin_err)
    }
}

impl ErrorType for GpioLed {
    type Error = PinError;
}

impl super::Led for GpioLed {}

impl OutputPin for GpioLed {
    fn set_low(&mut self) -> Result<(), PinError> {
        self.set(Value::Inactive)
    }

    fn set_high(&mut self) -> Result<(), PinError> {
        self.set(Value::Active)
    }
}
