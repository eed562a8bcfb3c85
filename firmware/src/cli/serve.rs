//! `usrbd serve`: create the device and serve it in the foreground.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use usrbd::config::{
    BackendKind, Export, FileConfig, Overrides, ServiceConfig, Size, DEFAULT_CONFIG,
};
use usrbd::panel::{ButtonSpec, LedSpec};

/// Create the block device and serve it in the foreground until detached.
///
/// Flags override the config file. Logs go to stderr (RUST_LOG, default info);
/// `usrbd: serving /dev/<name>` is logged once the device serves. SIGTERM or SIGINT
/// detaches (unmount, USB eject, flush, graceful destroy, final sync) and exits 0;
/// with --export usb the USB gadget is removed on exit. A second
/// SIGINT destroys the device by force and exits.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file [default: /etc/usrbd/usrbd.toml if it exists]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Device name, shown as /dev/NAME [default: usrbd0]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Device size: bytes or with a K, M, G, T suffix (powers of 1024), e.g. 64MiB, 1G
    #[arg(long, value_name = "SIZE")]
    size: Option<Size>,
    /// Where the data lives: ram or file [default: ram]
    #[arg(long, value_name = "ram|file")]
    backend: Option<BackendKind>,
    /// File backend: image file (created at --size if missing) or a partition
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// RAM backend: image loaded at start if present, saved atomically at detach
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Hardware queues, one worker thread each [default: 1]
    #[arg(long, value_name = "N")]
    queues: Option<u32>,
    /// Requests in flight per queue [default: 64]
    #[arg(long, value_name = "N")]
    depth: Option<u32>,
    /// Largest request, a multiple of the page size (4096; 16384 on Pi 5
    /// kernels) [default: 256KiB]
    #[arg(long, value_name = "SIZE")]
    max_io: Option<Size>,
    /// Logical block size: 512, 1024, 2048 or 4096 [default: 512]
    #[arg(long, value_name = "N")]
    block_size: Option<u32>,
    /// Per-request timeout in ms; 0 = the module's default [default: 30000]
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u32>,
    /// Expose the device read-only
    #[arg(long)]
    read_only: bool,
    /// File backend: open the file with O_DIRECT (bypass the page cache)
    #[arg(long)]
    direct: bool,
    /// Control socket [default: /run/usrbd/<name>.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Detach button: input:/dev/input/eventN:KEY, input:name=<device>:KEY,
    /// gpio:/dev/gpiochipN:<line>[:active-low], rppal:<pin>, none
    #[arg(long, value_name = "SPEC")]
    button: Option<ButtonSpec>,
    /// Status LED: sysfs:/sys/class/leds/<led>, sysfs-name:<suffix>,
    /// gpio:/dev/gpiochipN:<line>[:active-low], rppal:<pin>, none
    #[arg(long, value_name = "SPEC")]
    led_status: Option<LedSpec>,
    /// Activity LED (same SPEC forms as --led-status)
    #[arg(long, value_name = "SPEC")]
    led_activity: Option<LedSpec>,
    /// Error LED (same SPEC forms as --led-status)
    #[arg(long, value_name = "SPEC")]
    led_error: Option<LedSpec>,
    /// A press held this long is a long press: detach, then power off [default: 3000]
    #[arg(long, value_name = "N")]
    long_press_ms: Option<u32>,
    /// Button debounce time in ms [default: 50]
    #[arg(long, value_name = "N")]
    debounce_ms: Option<u32>,
    /// Shell command a long press runs after the detach [default: poweroff]
    #[arg(long, value_name = "CMD")]
    poweroff_cmd: Option<String>,
    /// Also offer the device to a USB host as a drive (configfs mass-storage
    /// gadget; the [usb] section of the config sets its identity) [default: none]
    #[arg(long, value_name = "none|usb")]
    export: Option<Export>,
    /// USB device controller for --export usb: auto (the only one in
    /// /sys/class/udc) or its name [default: auto]
    #[arg(long, value_name = "NAME")]
    udc: Option<String>,
    /// Check the config file and flags, print the device they name as JSON, and
    /// exit without serving (what `usrbd upgrade` runs the new binary with first)
    #[arg(long)]
    check_config: bool,
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            name: self.name.clone(),
            size: self.size,
            backend: self.backend,
            file: self.file.clone(),
            image: self.image.clone(),
            queues: self.queues,
            depth: self.depth,
            max_io: self.max_io,
            block_size: self.block_size,
            timeout_ms: self.timeout_ms,
            read_only: self.read_only,
            direct: self.direct,
            socket: self.socket.clone(),
            button: self.button.clone(),
            led_status: self.led_status.clone(),
            led_activity: self.led_activity.clone(),
            led_error: self.led_error.clone(),
            long_press_ms: self.long_press_ms,
            debounce_ms: self.debounce_ms,
            poweroff_cmd: self.poweroff_cmd.clone(),
            export: self.export,
            udc: self.udc.clone(),
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None if Path::new(DEFAULT_CONFIG).exists() => FileConfig::load(Path::new(DEFAULT_CONFIG))?,
        None => FileConfig::default(),
    };
    let cfg = ServiceConfig::resolve(file, args.overrides())?;
    if args.check_config {
        println!("{}", cfg.identity());
        return Ok(0);
    }
    usrbd::service::run(cfg).context("serving")?;
    Ok(0)
}
