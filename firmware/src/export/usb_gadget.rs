//! The USB mass-storage gadget: configfs `usb_gadget`, function `mass_storage`.
//!
//! The gadget lives in `<configfs>/usb_gadget/usrbd`. It is made in this order
//! and removed in the reverse one, because configfs refuses to remove a
//! directory that is still linked into a configuration or bound to a UDC:
//!
//! ```text
//! idVendor idProduct bcdDevice bcdUSB
//! strings/0x409/{manufacturer,product,serialnumber}
//! configs/c.1/MaxPower, configs/c.1/strings/0x409/configuration
//! functions/mass_storage.usb0/lun.0/{removable,ro,nofua,inquiry_string}
//! configs/c.1/mass_storage.usb0 -> functions/mass_storage.usb0
//! UDC                      (bind: the host sees a drive with no medium)
//! lun.0/file = /dev/usrbdN (the medium, written at every attach)
//! ```
//!
//! Every filesystem action goes through [`ConfigFs`], and both kernel roots are
//! parameters ([`Roots`]), so tests run the same code against a temporary
//! directory that behaves like configfs.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use log::{info, warn};

use crate::error::ExportError;

/// Where configfs is mounted.
pub const CONFIGFS: &str = "/sys/kernel/config";
/// The USB device controllers (UDC class).
pub const UDC_CLASS: &str = "/sys/class/udc";
/// The gadget's directory name under `usb_gadget`.
pub const GADGET: &str = "usrbd";

const STRINGS: &str = "strings/0x409"; // US English: the table every host reads
const CONFIG: &str = "configs/c.1";
const CONFIG_STRINGS: &str = "configs/c.1/strings/0x409";
const FUNCTION: &str = "functions/mass_storage.usb0";
const LINK: &str = "configs/c.1/mass_storage.usb0";
const LUN: &str = "functions/mass_storage.usb0/lun.0";

/// Which USB device controller to bind to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Udc {
    /// The only entry of /sys/class/udc.
    Auto,
    Named(String),
}

impl FromStr for Udc {
    type Err = String;
    fn from_str(s: &str) -> Result<Udc, String> {
        match s.trim() {
            "" => Err("an empty name: expected auto or a name from /sys/class/udc".into()),
            "auto" => Ok(Udc::Auto),
            n if n.contains('/') => Err(format!("`{n}`: a UDC name has no `/`")),
            n => Ok(Udc::Named(n.to_owned())),
        }
    }
}

impl fmt::Display for Udc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Udc::Auto => f.write_str("auto"),
            Udc::Named(n) => f.write_str(n),
        }
    }
}

/// What the host is told, and how the medium is offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbConfig {
    pub udc: Udc,
    pub vendor_id: u16,
    pub product_id: u16,
    pub manufacturer: String,
    pub product: String,
    /// `None`: derived from the board's serial number or /etc/machine-id.
    pub serial: Option<String>,
    /// The host may only read (`lun.0/ro`).
    pub read_only: bool,
}

impl Default for UsbConfig {
    fn default() -> Self {
        UsbConfig {
            udc: Udc::Auto,
            // Linux Foundation, multifunction composite gadget.
            vendor_id: 0x1d6b,
            product_id: 0x0104,
            manufacturer: "usrbd".into(),
            product: "usrbd USB drive".into(),
            serial: None,
            read_only: false,
        }
    }
}

/// The filesystem actions the gadget needs; [`RealFs`] on a live system.
pub trait ConfigFs {
    fn exists(&self, path: &Path) -> bool;
    fn create_dir(&mut self, path: &Path) -> io::Result<()>;
    fn remove_dir(&mut self, path: &Path) -> io::Result<()>;
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()>;
    fn remove_link(&mut self, link: &Path) -> io::Result<()>;
    /// Stores `value` in an existing attribute (configfs cannot create files).
    fn write(&mut self, path: &Path, value: &str) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// configfs and sysfs as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl ConfigFs for RealFs {
    fn exists(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }
    fn create_dir(&mut self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }
    fn remove_dir(&mut self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }
    fn remove_link(&mut self, link: &Path) -> io::Result<()> {
        fs::remove_file(link)
    }
    fn write(&mut self, path: &Path, value: &str) -> io::Result<()> {
        // One write(2) per value: configfs hands each write to the attribute's
        // store whole, and a zero-length write never reaches it, so the
        // newline is what makes "" (unbind, no medium) arrive.
        let mut f = OpenOptions::new().write(true).open(path)?;
        f.write_all(format!("{value}\n").as_bytes())
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path).map(|s| s.trim_end_matches('\n').to_owned())
    }
}

/// Where the kernel interfaces are; tests point both into a temporary directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    pub configfs: PathBuf,
    pub udc_class: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            configfs: CONFIGFS.into(),
            udc_class: UDC_CLASS.into(),
        }
    }
}

impl Roots {
    fn gadget_dir(&self) -> PathBuf {
        self.configfs.join("usb_gadget").join(GADGET)
    }
}

/// The UDC's view of the host (`/sys/class/udc/<udc>/state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostState {
    /// A host enumerated and configured the drive.
    Configured,
    /// Anything else: `not attached`, `powered`, `default`, `addressed`,
    /// `suspended`...
    Other(String),
}

impl HostState {
    pub fn parse(s: &str) -> HostState {
        match s.trim() {
            "configured" => HostState::Configured,
            other => HostState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            HostState::Configured => "configured",
            HostState::Other(s) => s,
        }
    }
}

/// Makes sure configfs is mounted and knows USB gadgets: loads `libcomposite`
/// and mounts configfs at `roots.configfs` when needed. Only for the live system.
pub fn prepare_kernel(roots: &Roots) -> Result<(), ExportError> {
    let gadgets = roots.configfs.join("usb_gadget");
    if gadgets.is_dir() {
        return Ok(());
    }
    match Command::new("modprobe").arg("libcomposite").status() {
        Ok(s) if s.success() => info!("usb: loaded libcomposite"),
        Ok(s) => warn!("usb: `modprobe libcomposite` exited with {s}"),
        Err(e) => warn!("usb: running modprobe libcomposite: {e}"),
    }
    if !is_configfs_mounted(&roots.configfs) {
        nix::mount::mount(
            Some("configfs"),
            &roots.configfs,
            Some("configfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| ExportError::Mount {
            path: roots.configfs.clone(),
            errno,
        })?;
        info!("usb: mounted configfs on {}", roots.configfs.display());
    }
    if gadgets.is_dir() {
        Ok(())
    } else {
        Err(ExportError::NoGadgetSupport { path: gadgets })
    }
}

fn is_configfs_mounted(at: &Path) -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split(' ');
            let (_, mp, ty) = (f.next(), f.next(), f.next());
            ty == Some("configfs") && mp.is_some_and(|mp| Path::new(mp) == at)
        })
    })
}

/// The UDC the config names, checked against `class_dir` (/sys/class/udc).
pub fn choose_udc(udc: &Udc, class_dir: &Path) -> Result<String, ExportError> {
    let mut present: Vec<String> = match fs::read_dir(class_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(ExportError::Io {
                what: "listing",
                path: class_dir.to_owned(),
                source,
            })
        }
    };
    present.sort();
    match udc {
        Udc::Auto => match present.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ExportError::NoUdc {
                dir: class_dir.to_owned(),
            }),
            _ => Err(ExportError::AmbiguousUdc {
                dir: class_dir.to_owned(),
                list: present,
            }),
        },
        Udc::Named(n) if present.contains(n) => Ok(n.clone()),
        Udc::Named(n) => Err(ExportError::UnknownUdc {
            name: n.clone(),
            dir: class_dir.to_owned(),
            list: present,
        }),
    }
}

/// A serial number for the host: the board's (device tree), else the machine
/// id, as upper-case hex; hosts key their per-drive settings on it.
pub fn default_serial() -> String {
    let from = |p: &str| {
        fs::read_to_string(p).ok().map(|s| {
            s.chars()
                .filter(char::is_ascii_hexdigit)
                .collect::<String>()
                .to_ascii_uppercase()
        })
    };
    from("/proc/device-tree/serial-number")
        .filter(|s| s.len() >= 8)
        .or_else(|| from("/etc/machine-id").filter(|s| s.len() >= 12))
        .map(|s| s.chars().rev().take(16).collect::<Vec<_>>())
        .map(|v| v.into_iter().rev().collect())
        .unwrap_or_else(|| "000000000001".into())
}

/// SCSI INQUIRY identity: 8 bytes vendor, 16 product, 4 revision.
fn inquiry_string(cfg: &UsbConfig) -> String {
    let rev: String = env!("CARGO_PKG_VERSION")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let ascii = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
            .collect()
    };
    format!(
        "{:<8.8}{:<16.16}{:<4.4}",
        ascii(&cfg.manufacturer),
        ascii(&cfg.product),
        rev
    )
}

/// A configured and bound mass-storage gadget.
pub struct UsbGadget<F: ConfigFs = RealFs> {
    fs: F,
    dir: PathBuf,
    udc: String,
    udc_class: PathBuf,
}

impl<F: ConfigFs> UsbGadget<F> {
    /// Builds the gadget with an empty LUN and binds it. A gadget left by an
    /// earlier run is torn down first; a failure part-way removes what was made.
    pub fn setup(mut fs: F, roots: &Roots, cfg: &UsbConfig) -> Result<UsbGadget<F>, ExportError> {
        let udc = choose_udc(&cfg.udc, &roots.udc_class)?;
        let dir = roots.gadget_dir();
        if fs.exists(&dir) {
            warn!(
                "usb: removing the gadget an earlier run left in {}",
                dir.display()
            );
            teardown_dir(&mut fs, &dir)?;
        }
        if let Err(e) = build(&mut fs, &dir, cfg, &udc) {
            if let Err(t) = teardown_dir(&mut fs, &dir) {
                warn!("usb: cleaning up after a failed setup: {t}");
            }
            return Err(e);
        }
        info!(
            "usb: gadget {} ({:04x}:{:04x}) bound to {udc}",
            dir.display(),
            cfg.vendor_id,
            cfg.product_id
        );
        Ok(UsbGadget {
            fs,
            dir,
            udc,
            udc_class: roots.udc_class.clone(),
        })
    }

    pub fn udc(&self) -> &str {
        &self.udc
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Offers `device` to the host as the medium.
    pub fn load(&mut self, device: &Path) -> Result<(), ExportError> {
        let attr = self.dir.join(LUN).join("file");
        write(&mut self.fs, &attr, &device.to_string_lossy())?;
        info!("usb: medium {} loaded", device.display());
        Ok(())
    }

    /// Takes the medium away whatever the host thinks (`forced_eject`): the
    /// command in progress completes first, then the LUN closes the device.
    pub fn eject(&mut self) -> Result<(), ExportError> {
        let attr = self.dir.join(LUN).join("forced_eject");
        write(&mut self.fs, &attr, "1")?;
        info!("usb: medium ejected");
        Ok(())
    }

    /// A cheap handle other threads use to look at the host and the medium.
    pub fn probe(&self) -> UsbProbe {
        UsbProbe {
            udc: self.udc.clone(),
            state: self.udc_class.join(&self.udc).join("state"),
            file: self.dir.join(LUN).join("file"),
        }
    }

    /// Unbinds and removes the gadget (the host sees the drive unplugged).
    pub fn teardown(mut self) -> Result<(), ExportError> {
        teardown_dir(&mut self.fs, &self.dir)?;
        info!("usb: gadget {} removed", self.dir.display());
        Ok(())
    }

    #[cfg(test)]
    fn fs(&self) -> &F {
        &self.fs
    }
}

/// Reads the UDC state and the LUN's medium straight from sysfs/configfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbProbe {
    pub udc: String,
    state: PathBuf,
    file: PathBuf,
}

impl UsbProbe {
    /// What the UDC says about the host.
    pub fn host_state(&self) -> Result<HostState, ExportError> {
        fs::read_to_string(&self.state)
            .map(|s| HostState::parse(&s))
            .map_err(io_err("reading", &self.state))
    }

    /// The device the LUN has open, if any.
    pub fn medium(&self) -> Result<Option<PathBuf>, ExportError> {
        let v = fs::read_to_string(&self.file).map_err(io_err("reading", &self.file))?;
        let v = v.trim();
        Ok((!v.is_empty()).then(|| PathBuf::from(v)))
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_owned();
    move |source| ExportError::Io { what, path, source }
}

fn write(fs: &mut impl ConfigFs, path: &Path, value: &str) -> Result<(), ExportError> {
    fs.write(path, value).map_err(io_err("writing", path))
}

fn read(fs: &impl ConfigFs, path: &Path) -> Result<String, ExportError> {
    fs.read(path).map_err(io_err("reading", path))
}

fn mkdir(fs: &mut impl ConfigFs, path: &Path) -> Result<(), ExportError> {
    fs.create_dir(path).map_err(io_err("creating", path))
}

fn build(
    fs: &mut impl ConfigFs,
    dir: &Path,
    cfg: &UsbConfig,
    udc: &str,
) -> Result<(), ExportError> {
    mkdir(fs, dir)?;
    write(
        fs,
        &dir.join("idVendor"),
        &format!("{:#06x}", cfg.vendor_id),
    )?;
    write(
        fs,
        &dir.join("idProduct"),
        &format!("{:#06x}", cfg.product_id),
    )?;
    write(fs, &dir.join("bcdDevice"), "0x0100")?;
    write(fs, &dir.join("bcdUSB"), "0x0200")?;
    let strings = dir.join(STRINGS);
    mkdir(fs, &strings)?;
    write(fs, &strings.join("manufacturer"), &cfg.manufacturer)?;
    write(fs, &strings.join("product"), &cfg.product)?;
    let serial = cfg.serial.clone().unwrap_or_else(default_serial);
    write(fs, &strings.join("serialnumber"), &serial)?;

    mkdir(fs, &dir.join(CONFIG))?;
    // Bus power the Pi may draw from the host, in mA.
    write(fs, &dir.join(CONFIG).join("MaxPower"), "250")?;
    mkdir(fs, &dir.join(CONFIG_STRINGS))?;
    write(
        fs,
        &dir.join(CONFIG_STRINGS).join("configuration"),
        "mass storage",
    )?;

    mkdir(fs, &dir.join(FUNCTION))?;
    let lun = dir.join(LUN);
    // ro can only change while no medium is loaded, so everything is set now.
    write(fs, &lun.join("removable"), "1")?;
    write(fs, &lun.join("ro"), if cfg.read_only { "1" } else { "0" })?;
    // FUA writes from the host reach the device as FUA (synced), not cached.
    write(fs, &lun.join("nofua"), "0")?;
    write(fs, &lun.join("inquiry_string"), &inquiry_string(cfg))?;

    let link = dir.join(LINK);
    fs.symlink(&dir.join(FUNCTION), &link)
        .map_err(io_err("linking", &link))?;
    write(fs, &dir.join("UDC"), udc)
}

/// Removes whatever part of the gadget exists, in the reverse order of
/// [`build`]: unbind, unlink, then the directories innermost first.
fn teardown_dir(fs: &mut impl ConfigFs, dir: &Path) -> Result<(), ExportError> {
    let udc = dir.join("UDC");
    if fs.exists(&udc) && !read(fs, &udc)?.trim().is_empty() {
        write(fs, &udc, "")?;
    }
    let link = dir.join(LINK);
    if fs.exists(&link) {
        fs.remove_link(&link).map_err(io_err("removing", &link))?;
    }
    for sub in [CONFIG_STRINGS, CONFIG, FUNCTION, STRINGS, ""] {
        let p = if sub.is_empty() {
            dir.to_owned()
        } else {
            dir.join(sub)
        };
        if fs.exists(&p) {
            fs.remove_dir(&p).map_err(io_err("removing", &p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
