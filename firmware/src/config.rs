//! The service configuration: the TOML file (default `/etc/usrbd/usrbd.toml`)
//! merged with command-line flags (flags win), checked into a [`ServiceConfig`].
//!
//! Every error names the key (and its flag) and the values it accepts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;
use crate::export::{Udc, UsbConfig};
use crate::panel::{ButtonSpec, LedSpec, PanelConfig};
use crate::uapi::*;

/// Where `usrbd serve` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/usrbd/usrbd.toml";
/// Directory of the control sockets (`<name>.sock`).
pub const SOCKET_DIR: &str = "/run/usrbd";

/// A byte count written as `4096`, `512K`, `64MiB`, `1G`... Suffixes K, M, G, T
/// (optionally followed by `iB` or `B`) are powers of 1024.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 4096, 512K, 64MiB or 1G"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => {
                return Err(format!(
                    "`{s}`: unknown unit `{unit}` (use K, M, G, T, optionally with iB)"
                ))
            }
        };
        n.checked_mul(1u64 << shift)
            .map(Size)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a size: bytes as an integer or a string like \"64MiB\"",
            )
        })? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Ram,
    File,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ram" => Ok(BackendKind::Ram),
            "file" => Ok(BackendKind::File),
            _ => Err(format!("`{s}`: expected ram or file")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    None,
    Usb,
}

impl FromStr for Export {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Export::None),
            "usb" => Ok(Export::Usb),
            _ => Err(format!("`{s}`: expected none or usb")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    Flush,
    Fua,
    Discard,
    WriteZeroes,
}

impl Feature {
    fn flag(self) -> u32 {
        match self {
            Feature::Flush => USRBD_F_FLUSH,
            Feature::Fua => USRBD_F_FUA,
            Feature::Discard => USRBD_F_DISCARD,
            Feature::WriteZeroes => USRBD_F_WRITE_ZEROES,
        }
    }
}

/// The TOML file, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub device: DeviceSection,
    pub backend: BackendSection,
    pub panel: PanelSection,
    pub server: ServerSection,
    pub usb: UsbSection,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSection {
    pub name: Option<String>,
    pub size: Option<Size>,
    pub logical_block_size: Option<u32>,
    pub physical_block_size: Option<u32>,
    pub queues: Option<u32>,
    pub queue_depth: Option<u32>,
    pub max_io: Option<Size>,
    pub timeout_ms: Option<u32>,
    pub read_only: Option<bool>,
    pub features: Option<Vec<Feature>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSection {
    pub kind: Option<BackendKind>,
    pub image: Option<PathBuf>,
    pub path: Option<PathBuf>,
    pub direct: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PanelSection {
    pub debounce_ms: Option<u32>,
    pub long_press_ms: Option<u32>,
    pub button: Option<ButtonSpec>,
    pub led_status: Option<LedSpec>,
    pub led_activity: Option<LedSpec>,
    pub led_error: Option<LedSpec>,
    pub poweroff_cmd: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub socket: Option<PathBuf>,
    pub export: Option<Export>,
}

/// The USB drive (`[server] export = "usb"`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsbSection {
    pub udc: Option<String>,
    pub vendor_id: Option<u16>,
    pub product_id: Option<u16>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub read_only: Option<bool>,
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }
}

/// Values given on the command line; `None` = not given.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub name: Option<String>,
    pub size: Option<Size>,
    pub backend: Option<BackendKind>,
    pub file: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub queues: Option<u32>,
    pub depth: Option<u32>,
    pub max_io: Option<Size>,
    pub block_size: Option<u32>,
    pub timeout_ms: Option<u32>,
    pub read_only: bool,
    pub direct: bool,
    pub socket: Option<PathBuf>,
    pub button: Option<ButtonSpec>,
    pub led_status: Option<LedSpec>,
    pub led_activity: Option<LedSpec>,
    pub led_error: Option<LedSpec>,
    pub long_press_ms: Option<u32>,
    pub debounce_ms: Option<u32>,
    pub poweroff_cmd: Option<String>,
    pub export: Option<Export>,
    pub udc: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendConfig {
    Ram { image: Option<PathBuf> },
    File { path: PathBuf, direct: bool },
}

/// Everything `usrbd serve` needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    /// `None`: taken from the existing file or image.
    pub size: Option<u64>,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub queues: u32,
    pub queue_depth: u32,
    pub max_io: u32,
    pub timeout_ms: u32,
    pub read_only: bool,
    /// `USRBD_F_*`, read-only included.
    pub flags: u32,
    pub backend: BackendConfig,
    pub panel: PanelConfig,
    pub poweroff_cmd: String,
    pub socket: PathBuf,
    /// `Some` when the device is exported as a USB drive.
    pub usb: Option<UsbConfig>,
}

fn invalid(
    key: &'static str,
    value: impl fmt::Display,
    accepted: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        accepted: accepted.into(),
    }
}

fn in_range(key: &'static str, v: u32, lo: u32, hi: u32) -> Result<u32, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(key, v, format!("an integer in {lo}..={hi}")))
    }
}

impl ServiceConfig {
    /// What names the device a server serves: the keys an upgraded binary must
    /// resolve the same way, or it would create another device and leave this
    /// one's queued requests to time out (`usrbd serve --check-config` prints it).
    pub fn identity(&self) -> serde_json::Value {
        let (kind, path) = match &self.backend {
            BackendConfig::Ram { image } => ("ram", image.as_deref()),
            BackendConfig::File { path, .. } => ("file", Some(path.as_path())),
        };
        serde_json::json!({
            "name": self.name,
            "socket": self.socket,
            "backend": kind,
            "path": path,
            "size": self.size,
            "logical_block_size": self.logical_block_size,
        })
    }

    /// Merges flags over the file and checks every value.
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<ServiceConfig, ConfigError> {
        let d = file.device;
        let name = o.name.or(d.name).unwrap_or_else(|| "usrbd0".into());
        if !crate::device::valid_name(&name) {
            return Err(invalid(
                "device.name (--name)",
                &name,
                "`usrbd` and up to 26 more of `a-z`, `0-9`, `-` or `_` (the module's rule)",
            ));
        }
        let lbs = o.block_size.or(d.logical_block_size).unwrap_or(512);
        if ![512, 1024, 2048, 4096].contains(&lbs) {
            return Err(invalid(
                "device.logical_block_size (--block-size)",
                lbs,
                "512, 1024, 2048 or 4096",
            ));
        }
        let pbs = d.physical_block_size.unwrap_or(4096).max(lbs);
        if !pbs.is_power_of_two() || pbs > 4096 {
            return Err(invalid(
                "device.physical_block_size",
                pbs,
                "a power of two from the logical block size up to 4096",
            ));
        }
        let size = o.size.or(d.size).map(|s| s.0);
        if let Some(s) = size {
            if s == 0 || s % u64::from(lbs) != 0 {
                return Err(invalid(
                    "device.size (--size)",
                    s,
                    format!("a positive multiple of the {lbs}-byte logical block size"),
                ));
            }
        }
        let queues = in_range(
            "device.queues (--queues)",
            o.queues.or(d.queues).unwrap_or(1),
            1,
            USRBD_MAX_QUEUES,
        )?;
        let queue_depth = in_range(
            "device.queue_depth (--depth)",
            o.depth.or(d.queue_depth).unwrap_or(64),
            1,
            USRBD_MAX_QUEUE_DEPTH,
        )?;
        let max_io = o.max_io.or(d.max_io).map_or(256 * 1024, |s| s.0);
        // usrbd.ko refuses a max_io that is not a whole number of the
        // kernel's pages (16 KiB on Pi 5 kernels); say so before asking it.
        let page = crate::backend::page_size() as u64;
        if max_io == 0 || max_io % page != 0 || max_io > u64::from(USRBD_MAX_IO_BYTES) {
            return Err(invalid(
                "device.max_io (--max-io)",
                max_io,
                format!("a multiple of the {page}-byte page size up to {USRBD_MAX_IO_BYTES}"),
            ));
        }
        let timeout_ms = o.timeout_ms.or(d.timeout_ms).unwrap_or(30_000);
        let read_only = o.read_only || d.read_only.unwrap_or(false);
        let mut flags = match d.features {
            Some(f) => f.iter().fold(0, |acc, x| acc | x.flag()),
            None => USRBD_F_FLUSH | USRBD_F_FUA | USRBD_F_DISCARD | USRBD_F_WRITE_ZEROES,
        };
        if read_only {
            flags |= USRBD_F_READ_ONLY;
        }

        let b = file.backend;
        let kind = o.backend.or(b.kind).unwrap_or(BackendKind::Ram);
        let direct = o.direct || b.direct.unwrap_or(false);
        let backend = match kind {
            BackendKind::Ram => {
                if direct {
                    return Err(invalid(
                        "backend.direct (--direct)",
                        true,
                        "false with the ram backend (O_DIRECT applies to files)",
                    ));
                }
                if o.file.is_some() {
                    return Err(invalid(
                        "--file",
                        "given",
                        "--image PATH with the ram backend, or --backend file",
                    ));
                }
                BackendConfig::Ram {
                    image: o.image.or(b.image),
                }
            }
            BackendKind::File => {
                // Without FLUSH the kernel never asks for an fdatasync: what an
                // application fsynced would sit in a volatile cache (the page
                // cache, or the disk's own) and die with the power.
                if flags & USRBD_F_FLUSH == 0 && !read_only {
                    return Err(invalid(
                        "device.features",
                        "a list without \"flush\"",
                        "a list with \"flush\" for the file backend (an fsync must reach the disk)",
                    ));
                }
                BackendConfig::File {
                    path: o.file.or(b.path).ok_or(ConfigError::Missing {
                        key: "backend.path (--file)",
                        why: "with the file backend",
                    })?,
                    direct,
                }
            }
        };

        let p = file.panel;
        let panel = PanelConfig {
            debounce_ms: o.debounce_ms.or(p.debounce_ms).unwrap_or(50),
            long_press_ms: o.long_press_ms.or(p.long_press_ms).unwrap_or(3000),
            button: o.button.or(p.button).unwrap_or_default(),
            led_status: o.led_status.or(p.led_status).unwrap_or_default(),
            led_activity: o.led_activity.or(p.led_activity).unwrap_or_default(),
            led_error: o.led_error.or(p.led_error).unwrap_or_default(),
        };
        if panel.long_press_ms <= panel.debounce_ms {
            return Err(invalid(
                "panel.long_press_ms (--long-press-ms)",
                panel.long_press_ms,
                format!("more than panel.debounce_ms ({})", panel.debounce_ms),
            ));
        }
        let poweroff_cmd = o
            .poweroff_cmd
            .or(p.poweroff_cmd)
            .unwrap_or_else(|| "poweroff".into());

        let s = file.server;
        let usb = match o.export.or(s.export).unwrap_or(Export::None) {
            Export::None => None,
            Export::Usb => Some(usb_config(file.usb, o.udc, read_only)?),
        };
        let socket = o
            .socket
            .or(s.socket)
            .unwrap_or_else(|| default_socket(&name));

        Ok(ServiceConfig {
            name,
            size,
            logical_block_size: lbs,
            physical_block_size: pbs,
            queues,
            queue_depth,
            max_io: max_io as u32,
            timeout_ms,
            read_only,
            flags,
            backend,
            panel,
            poweroff_cmd,
            socket,
            usb,
        })
    }
}

impl ServiceConfig {
    /// Checks that the device fits a machine with `mem_total` bytes of RAM:
    /// the request buffers (queues x depth x max_io, locked) at most a quarter
    /// of it, and a RAM device with its buffers at most three quarters, so
    /// filling the device cannot take the machine down. `size` is the
    /// backend's actual size.
    pub fn check_memory(&self, size: u64, mem_total: u64) -> Result<(), ConfigError> {
        let buffers = u64::from(self.queues) * u64::from(self.queue_depth) * u64::from(self.max_io);
        if buffers > mem_total / 4 {
            return Err(invalid(
                "device.queues x device.queue_depth x device.max_io",
                format!(
                    "{} x {} x {} = {buffers} bytes",
                    self.queues, self.queue_depth, self.max_io
                ),
                format!("at most a quarter of this machine's {mem_total} bytes of RAM"),
            ));
        }
        if matches!(self.backend, BackendConfig::Ram { .. })
            && size.saturating_add(buffers) > mem_total / 4 * 3
        {
            return Err(invalid(
                "device.size (--size)",
                size,
                format!(
                    "with the ram backend, at most three quarters of this machine's {mem_total} bytes of RAM, less the {buffers} bytes of request buffers"
                ),
            ));
        }
        Ok(())
    }
}

/// Longest USB string descriptor text (126 UTF-16 units in 254 bytes).
const USB_STRING_MAX: usize = 126;

fn usb_string(
    key: &'static str,
    v: Option<String>,
    default: String,
) -> Result<String, ConfigError> {
    let v = v.unwrap_or(default);
    if v.is_empty() || v.chars().count() > USB_STRING_MAX || v.chars().any(char::is_control) {
        return Err(invalid(
            key,
            &v,
            format!("1 to {USB_STRING_MAX} printable characters"),
        ));
    }
    Ok(v)
}

fn usb_config(
    u: UsbSection,
    udc_flag: Option<String>,
    device_read_only: bool,
) -> Result<UsbConfig, ConfigError> {
    let d = UsbConfig::default();
    let udc = match udc_flag.or(u.udc) {
        None => Udc::Auto,
        Some(n) => n.parse().map_err(|why: String| {
            invalid(
                "usb.udc (--udc)",
                &n,
                format!("auto or a name from /sys/class/udc ({why})"),
            )
        })?,
    };
    let serial = match u.serial {
        None => None,
        Some(s) => Some(usb_string("usb.serial", Some(s), String::new())?),
    };
    Ok(UsbConfig {
        udc,
        vendor_id: u.vendor_id.unwrap_or(d.vendor_id),
        product_id: u.product_id.unwrap_or(d.product_id),
        manufacturer: usb_string("usb.manufacturer", u.manufacturer, d.manufacturer)?,
        product: usb_string("usb.product", u.product, d.product)?,
        serial,
        // A read-only device can only be offered read-only.
        read_only: device_read_only || u.read_only.unwrap_or(false),
    })
}

/// `/run/usrbd/<name>.sock`.
pub fn default_socket(name: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(t: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(t, Path::new("test.toml"))
    }

    fn resolve(t: &str, o: Overrides) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::resolve(parse(t)?, o)
    }

    #[test]
    fn the_shipped_default_config_parses() {
        let text = include_str!("../usrbd.toml");
        let c = resolve(text, Overrides::default()).unwrap();
        assert_eq!(c.name, "usrbd0");
        assert!(c.size.is_some());
    }

    #[test]
    fn defaults_without_a_file() {
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!(c.name, "usrbd0");
        assert_eq!(c.size, None);
        assert_eq!((c.queues, c.queue_depth, c.max_io), (1, 64, 256 * 1024));
        assert_eq!((c.logical_block_size, c.timeout_ms), (512, 30_000));
        assert_eq!(
            c.flags,
            USRBD_F_FLUSH | USRBD_F_FUA | USRBD_F_DISCARD | USRBD_F_WRITE_ZEROES
        );
        assert_eq!(c.backend, BackendConfig::Ram { image: None });
        assert_eq!(c.socket, PathBuf::from("/run/usrbd/usrbd0.sock"));
        assert_eq!(c.poweroff_cmd, "poweroff");
    }

    #[test]
    fn flags_override_the_file() {
        let t = "[device]\nname = \"usrbda\"\nsize = \"1G\"\nqueues = 2\n[backend]\nkind = \"file\"\npath = \"/x\"\n";
        let o = Overrides {
            name: Some("usrbdb".into()),
            size: Some(Size(1 << 20)),
            queues: Some(3),
            ..Default::default()
        };
        let c = resolve(t, o).unwrap();
        assert_eq!(
            (c.name.as_str(), c.size, c.queues),
            ("usrbdb", Some(1 << 20), 3)
        );
        assert_eq!(
            c.backend,
            BackendConfig::File {
                path: "/x".into(),
                direct: false
            }
        );
        assert_eq!(c.socket, PathBuf::from("/run/usrbd/usrbdb.sock"));
    }

    #[test]
    fn unknown_key_names_the_key_and_the_accepted_ones() {
        let e = parse("[device]\nsise = 3\n").unwrap_err().to_string();
        assert!(e.contains("sise"), "{e}");
        assert!(e.contains("size") && e.contains("queue_depth"), "{e}");
        let e = parse("[devices]\n").unwrap_err().to_string();
        assert!(e.contains("devices") && e.contains("backend"), "{e}");
    }

    #[test]
    fn bad_enum_values_name_the_accepted_values() {
        let e = parse("[backend]\nkind = \"disk\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("disk") && e.contains("ram") && e.contains("file"),
            "{e}"
        );
        let e = parse("[device]\nfeatures = [\"trim\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("trim") && e.contains("write_zeroes"), "{e}");
        let e = parse("[panel]\nbutton = \"usb:3\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("usb:3") && e.contains("gpio"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_accepted_range() {
        let e = resolve("[device]\nlogical_block_size = 100\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("device.logical_block_size") && e.contains("4096"),
            "{e}"
        );
        let e = resolve("[device]\nsize = \"1000\"\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("device.size") && e.contains("multiple"), "{e}");
        let e = resolve("[device]\nmax_io = \"5000\"\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("device.max_io") && e.contains("4096"), "{e}");
        let e = resolve("[backend]\nkind = \"file\"\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("backend.path"), "{e}");
        let e = parse("[server]\nexport = \"disk\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk") && e.contains("usb"), "{e}");
        let e = resolve("[device]\nname = \"a/b\"\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("device.name"), "{e}");
        // The module's rule (ABI 2): the `usrbd` prefix, lower case only.
        for bad in ["a", "sda", "USRBD0", "usrbdA", "xusrbd0"] {
            let o = Overrides {
                name: Some(bad.into()),
                ..Default::default()
            };
            let e = resolve("", o).unwrap_err().to_string();
            assert!(
                e.contains("device.name") && e.contains("usrbd"),
                "{bad}: {e}"
            );
        }
        for good in ["usrbd", "usrbd0", "usrbd-data_1"] {
            let o = Overrides {
                name: Some(good.into()),
                ..Default::default()
            };
            assert_eq!(resolve("", o).unwrap().name, good);
        }
        let e = resolve("[panel]\nlong_press_ms = 10\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("panel.long_press_ms"), "{e}");
    }

    #[test]
    fn usb_export_defaults_and_overrides() {
        let c = resolve("[server]\nexport = \"usb\"\n", Overrides::default()).unwrap();
        assert_eq!(c.usb, Some(UsbConfig::default()));
        assert_eq!(resolve("", Overrides::default()).unwrap().usb, None);
        let t = "[device]\nread_only = true\n[server]\nexport = \"none\"\n[usb]\nudc = \"fe980000.usb\"\nvendor_id = 0x1234\nproduct_id = 0xabcd\nmanufacturer = \"Acme\"\nproduct = \"Stick\"\nserial = \"00C0FFEE0001\"\n";
        let o = Overrides {
            export: Some(Export::Usb),
            ..Default::default()
        };
        let u = resolve(t, o).unwrap().usb.unwrap();
        assert_eq!(u.udc, Udc::Named("fe980000.usb".into()));
        assert_eq!((u.vendor_id, u.product_id), (0x1234, 0xabcd));
        assert_eq!(
            (u.manufacturer.as_str(), u.product.as_str()),
            ("Acme", "Stick")
        );
        assert_eq!(u.serial.as_deref(), Some("00C0FFEE0001"));
        assert!(u.read_only, "a read-only device is exported read-only");
        let o = Overrides {
            export: Some(Export::Usb),
            udc: Some("dummy_udc.0".into()),
            ..Default::default()
        };
        let u = resolve(t, o).unwrap().usb.unwrap();
        assert_eq!(u.udc, Udc::Named("dummy_udc.0".into()), "--udc wins");
    }

    #[test]
    fn bad_usb_values_name_the_key() {
        let usb = |body: &str| {
            resolve(
                &format!("[server]\nexport = \"usb\"\n[usb]\n{body}\n"),
                Overrides::default(),
            )
            .unwrap_err()
            .to_string()
        };
        let e = usb("udc = \"\"");
        assert!(e.contains("usb.udc") && e.contains("auto"), "{e}");
        let e = usb("product = \"\"");
        assert!(e.contains("usb.product"), "{e}");
        let e = usb(&format!("manufacturer = \"{}\"", "x".repeat(127)));
        assert!(e.contains("usb.manufacturer") && e.contains("126"), "{e}");
        let e = usb("vendor_id = 70000");
        assert!(e.contains("vendor_id"), "{e}");
        let e = usb("speed = 3");
        assert!(e.contains("speed") && e.contains("udc"), "{e}");
    }

    #[test]
    fn the_file_backend_needs_flush() {
        let t = "[device]\nfeatures = [\"fua\", \"discard\"]\n[backend]\nkind = \"file\"\npath = \"/x\"\n";
        let e = resolve(t, Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("device.features") && e.contains("flush"), "{e}");
        let o = Overrides {
            read_only: true,
            ..Default::default()
        };
        assert!(resolve(t, o).is_ok(), "a read-only device writes nothing");
        let ram = "[device]\nfeatures = [\"fua\"]\n";
        assert!(resolve(ram, Overrides::default()).is_ok());
    }

    #[test]
    fn buffers_and_ram_devices_must_fit_the_machine() {
        let mib = 1u64 << 20;
        let zero_w = 432 * mib;
        let c = resolve("[device]\nsize = \"256MiB\"\n", Overrides::default()).unwrap();
        c.check_memory(256 * mib, zero_w)
            .expect("the default 256 MiB RAM device fits a Zero W");
        let e = c.check_memory(400 * mib, zero_w).unwrap_err().to_string();
        assert!(
            e.contains("device.size") && e.contains("three quarters"),
            "{e}"
        );
        let o = Overrides {
            queues: Some(4),
            depth: Some(1024),
            max_io: Some(Size(1 << 20)),
            ..Default::default()
        };
        let c = resolve("", o).unwrap();
        let e = c.check_memory(mib, zero_w).unwrap_err().to_string();
        assert!(
            e.contains("device.queue_depth") && e.contains("quarter"),
            "{e}"
        );
        let file = "[backend]\nkind = \"file\"\npath = \"/x\"\n";
        let c = resolve(file, Overrides::default()).unwrap();
        assert!(
            c.check_memory(1 << 40, zero_w).is_ok(),
            "a file device is not held in RAM"
        );
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!("4096".parse::<Size>().unwrap(), Size(4096));
        assert_eq!("64MiB".parse::<Size>().unwrap(), Size(64 << 20));
        assert_eq!("512M".parse::<Size>().unwrap(), Size(512 << 20));
        assert_eq!("1G".parse::<Size>().unwrap(), Size(1 << 30));
        assert_eq!("256KiB".parse::<Size>().unwrap(), Size(256 << 10));
        assert!("12Q".parse::<Size>().is_err());
        assert!("MiB".parse::<Size>().is_err());
        assert!("99999999999T".parse::<Size>().is_err());
        let c = parse("[device]\nsize = 1048576\nmax_io = \"128K\"\n").unwrap();
        assert_eq!(c.device.size, Some(Size(1 << 20)));
        assert_eq!(c.device.max_io, Some(Size(128 << 10)));
    }

    proptest! {
        #[test]
        fn size_strings_round_trip(n in 0u64..1_000_000, unit in 0usize..5) {
            let (suffix, mul) = [("", 1u64), ("K", 1 << 10), ("MiB", 1 << 20), ("G", 1 << 30), ("TiB", 1 << 40)][unit];
            let s = format!("{n}{suffix}");
            prop_assert_eq!(s.parse::<Size>().unwrap(), Size(n * mul));
        }

        #[test]
        fn block_sizes_are_accepted_exactly_when_valid(lbs in 0u32..10_000) {
            let o = Overrides { block_size: Some(lbs), ..Default::default() };
            let ok = ServiceConfig::resolve(FileConfig::default(), o).is_ok();
            prop_assert_eq!(ok, [512, 1024, 2048, 4096].contains(&lbs));
        }

        #[test]
        fn queues_and_depth_bounds(q in 0u32..100, d in 0u32..2000) {
            let o = Overrides { queues: Some(q), depth: Some(d), ..Default::default() };
            let r = ServiceConfig::resolve(FileConfig::default(), o);
            let ok = (1..=64).contains(&q) && (1..=1024).contains(&d);
            prop_assert_eq!(r.is_ok(), ok);
            if let Err(e) = r {
                let e = e.to_string();
                prop_assert!(e.contains("device.queues") || e.contains("device.queue_depth"));
            }
        }
    }
}
