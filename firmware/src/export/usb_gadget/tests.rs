//! The gadget against a temporary directory that behaves like configfs: making
//! a directory creates its attributes and default groups, attributes cannot be
//! created by writing, a linked or bound directory cannot be removed, and a
//! directory goes away with its attributes and default groups only.

use std::collections::BTreeSet;

use super::*;

/// What the kernel creates inside a new configfs directory.
fn defaults(path: &Path) -> (&'static [&'static str], &'static [&'static str]) {
    let name = path
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let parent = path
        .parent()
        .and_then(Path::file_name)
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let in_config = path.components().any(|c| c.as_os_str() == "configs");
    match (parent.as_str(), name.as_str()) {
        ("usb_gadget", _) => (
            &["UDC", "idVendor", "idProduct", "bcdDevice", "bcdUSB"],
            &["strings", "configs", "functions"],
        ),
        ("strings", _) if in_config => (&["configuration"], &[]),
        ("strings", _) => (&["manufacturer", "product", "serialnumber"], &[]),
        ("configs", _) => (&["MaxPower", "bmAttributes"], &["strings"]),
        ("functions", n) if n.starts_with("mass_storage.") => (&["stall"], &["lun.0"]),
        _ => (&[], &[]),
    }
}

const LUN_ATTRS: &[&str] = &[
    "file",
    "ro",
    "removable",
    "cdrom",
    "nofua",
    "forced_eject",
    "inquiry_string",
];

#[derive(Default)]
struct FakeConfigFs {
    /// Directories the kernel made (default groups): removed with their parent.
    default_dirs: BTreeSet<PathBuf>,
    /// Every call, in order: `op path`.
    log: Vec<String>,
    /// A write to a path ending so fails (EIO), to test cleanup.
    fail_write: Option<&'static str>,
}

impl FakeConfigFs {
    fn touch(&self, p: &Path) {
        fs::write(p, "").unwrap();
    }

    fn is_linked(&self, target: &Path) -> bool {
        let root = target.ancestors().nth(3).unwrap_or(target);
        walk(root)
            .iter()
            .any(|p| fs::read_link(p).is_ok_and(|t| t == target))
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let is_dir = fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            out.push(p.clone());
            if is_dir {
                out.extend(walk(&p));
            }
        }
    }
    out
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl ConfigFs for FakeConfigFs {
    fn exists(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    fn create_dir(&mut self, path: &Path) -> io::Result<()> {
        self.log.push(format!("mkdir {}", path.display()));
        fs::create_dir(path)?;
        let (files, dirs) = defaults(path);
        for f in files {
            self.touch(&path.join(f));
        }
        for d in dirs {
            let sub = path.join(d);
            fs::create_dir(&sub)?;
            self.default_dirs.insert(sub.clone());
            if *d == "lun.0" {
                for f in LUN_ATTRS {
                    self.touch(&sub.join(f));
                }
            }
        }
        Ok(())
    }

    fn remove_dir(&mut self, path: &Path) -> io::Result<()> {
        self.log.push(format!("rmdir {}", path.display()));
        if self.is_linked(path) {
            return Err(errno(libc::EBUSY));
        }
        let udc = path.join("UDC");
        if fs::read_to_string(&udc).is_ok_and(|v| !v.trim().is_empty()) {
            return Err(errno(libc::EBUSY));
        }
        for e in walk(path) {
            let m = fs::symlink_metadata(&e)?;
            let made_by_user_inside =
                m.is_symlink() || (m.is_dir() && !self.default_dirs.contains(&e));
            if made_by_user_inside {
                return Err(errno(libc::ENOTEMPTY));
            }
        }
        fs::remove_dir_all(path)
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        self.log
            .push(format!("ln {} {}", target.display(), link.display()));
        std::os::unix::fs::symlink(target, link)
    }

    fn remove_link(&mut self, link: &Path) -> io::Result<()> {
        self.log.push(format!("rm {}", link.display()));
        fs::remove_file(link)
    }

    fn write(&mut self, path: &Path, value: &str) -> io::Result<()> {
        self.log.push(format!("write {} {value}", path.display()));
        if !path.is_file() {
            return Err(errno(libc::ENOENT));
        }
        if self.fail_write.is_some_and(|s| path.ends_with(s)) {
            return Err(errno(libc::EIO));
        }
        if path.ends_with("lun.0/forced_eject") {
            fs::write(path.with_file_name("file"), "")?;
        }
        fs::write(path, value)
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }
}

struct Rig {
    _tmp: tempfile::TempDir,
    roots: Roots,
}

fn rig(udcs: &[&str]) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let roots = Roots {
        configfs: tmp.path().join("config"),
        udc_class: tmp.path().join("udc"),
    };
    fs::create_dir_all(roots.configfs.join("usb_gadget")).unwrap();
    fs::create_dir_all(&roots.udc_class).unwrap();
    for u in udcs {
        fs::create_dir(roots.udc_class.join(u)).unwrap();
        fs::write(roots.udc_class.join(u).join("state"), "not attached\n").unwrap();
    }
    Rig { _tmp: tmp, roots }
}

fn cfg() -> UsbConfig {
    UsbConfig {
        serial: Some("0123456789AB".into()),
        ..UsbConfig::default()
    }
}

fn attr(g: &UsbGadget<FakeConfigFs>, rel: &str) -> String {
    fs::read_to_string(g.dir().join(rel)).unwrap()
}

#[test]
fn setup_writes_the_gadget_and_binds_last() {
    let r = rig(&["dummy_udc.0"]);
    let c = UsbConfig {
        read_only: true,
        manufacturer: "Acme".into(),
        product: "Pocket drive".into(),
        ..cfg()
    };
    let g = UsbGadget::setup(FakeConfigFs::default(), &r.roots, &c).unwrap();
    assert_eq!(g.udc(), "dummy_udc.0");
    assert_eq!(g.dir(), r.roots.configfs.join("usb_gadget/usrbd"));
    assert_eq!(attr(&g, "idVendor"), "0x1d6b");
    assert_eq!(attr(&g, "idProduct"), "0x0104");
    assert_eq!(attr(&g, "strings/0x409/manufacturer"), "Acme");
    assert_eq!(attr(&g, "strings/0x409/product"), "Pocket drive");
    assert_eq!(attr(&g, "strings/0x409/serialnumber"), "0123456789AB");
    let lun = "functions/mass_storage.usb0/lun.0";
    assert_eq!(attr(&g, &format!("{lun}/removable")), "1");
    assert_eq!(attr(&g, &format!("{lun}/ro")), "1");
    assert_eq!(attr(&g, &format!("{lun}/nofua")), "0");
    let inq = attr(&g, &format!("{lun}/inquiry_string"));
    assert_eq!(inq.len(), 28, "{inq:?}");
    assert!(inq.starts_with("Acme    Pocket drive    "), "{inq:?}");
    assert_eq!(
        attr(&g, &format!("{lun}/file")),
        "",
        "no medium before load"
    );
    assert_eq!(
        fs::read_link(g.dir().join("configs/c.1/mass_storage.usb0")).unwrap(),
        g.dir().join("functions/mass_storage.usb0")
    );
    assert_eq!(attr(&g, "UDC"), "dummy_udc.0");
    let log = &g.fs().log;
    let bind = log
        .iter()
        .position(|l| l.ends_with("/UDC dummy_udc.0"))
        .unwrap();
    assert_eq!(bind, log.len() - 1, "binding is the last step: {log:#?}");
    let ro = log.iter().position(|l| l.contains("lun.0/ro ")).unwrap();
    let link = log.iter().position(|l| l.starts_with("ln ")).unwrap();
    assert!(ro < link, "ro is set before the function is used: {log:#?}");
}

#[test]
fn load_eject_and_reload_the_medium() {
    let r = rig(&["fe980000.usb"]);
    let mut g = UsbGadget::setup(FakeConfigFs::default(), &r.roots, &cfg()).unwrap();
    assert_eq!(g.probe().medium().unwrap(), None);
    g.load(Path::new("/dev/usrbd0")).unwrap();
    assert_eq!(
        g.probe().medium().unwrap(),
        Some(PathBuf::from("/dev/usrbd0"))
    );
    g.eject().unwrap();
    assert_eq!(g.probe().medium().unwrap(), None);
    assert_eq!(
        g.fs().log.last().map(String::as_str),
        Some(
            format!(
                "write {} 1",
                g.dir()
                    .join("functions/mass_storage.usb0/lun.0/forced_eject")
                    .display()
            )
            .as_str()
        )
    );
    g.load(Path::new("/dev/usrbd0")).unwrap();
    assert_eq!(
        g.probe().medium().unwrap(),
        Some(PathBuf::from("/dev/usrbd0"))
    );
}

#[test]
fn host_state_comes_from_the_udc_class() {
    let r = rig(&["dummy_udc.0"]);
    let g = UsbGadget::setup(FakeConfigFs::default(), &r.roots, &cfg()).unwrap();
    assert_eq!(
        g.probe().host_state().unwrap(),
        HostState::Other("not attached".into())
    );
    fs::write(r.roots.udc_class.join("dummy_udc.0/state"), "configured\n").unwrap();
    assert_eq!(g.probe().host_state().unwrap(), HostState::Configured);
}

#[test]
fn teardown_removes_everything_it_made() {
    let r = rig(&["dummy_udc.0"]);
    let mut g = UsbGadget::setup(FakeConfigFs::default(), &r.roots, &cfg()).unwrap();
    g.load(Path::new("/dev/usrbd0")).unwrap();
    let dir = g.dir().to_owned();
    g.teardown().unwrap();
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(r.roots.configfs.join("usb_gadget").is_dir());
}

#[test]
fn teardown_order_is_logged() {
    let r = rig(&["dummy_udc.0"]);
    let mut fake = FakeConfigFs::default();
    let dir = r.roots.gadget_dir();
    build(&mut fake, &dir, &cfg(), "dummy_udc.0").unwrap();
    fake.log.clear();
    teardown_dir(&mut fake, &dir).unwrap();
    let d = dir.display();
    assert_eq!(
        fake.log,
        vec![
            format!("write {d}/UDC "),
            format!("rm {d}/configs/c.1/mass_storage.usb0"),
            format!("rmdir {d}/configs/c.1/strings/0x409"),
            format!("rmdir {d}/configs/c.1"),
            format!("rmdir {d}/functions/mass_storage.usb0"),
            format!("rmdir {d}/strings/0x409"),
            format!("rmdir {d}"),
        ]
    );
    assert!(!dir.exists());
}

#[test]
fn the_fake_refuses_a_wrong_order() {
    // The fake must be able to fail, or the order tests prove nothing.
    let r = rig(&["dummy_udc.0"]);
    let mut fake = FakeConfigFs::default();
    let dir = r.roots.gadget_dir();
    build(&mut fake, &dir, &cfg(), "dummy_udc.0").unwrap();
    let e = fake.remove_dir(&dir.join(FUNCTION)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "linked function");
    let e = fake.remove_dir(&dir).unwrap_err();
    assert!(
        [Some(libc::EBUSY), Some(libc::ENOTEMPTY)].contains(&e.raw_os_error()),
        "bound gadget: {e}"
    );
    let e = fake.write(&dir.join("no_such_attr"), "1").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn a_stale_gadget_is_replaced() {
    let r = rig(&["dummy_udc.0"]);
    let mut fake = FakeConfigFs::default();
    let dir = r.roots.gadget_dir();
    build(&mut fake, &dir, &cfg(), "dummy_udc.0").unwrap();
    fake.write(&dir.join(LUN).join("file"), "/dev/usrbd0")
        .unwrap();
    // A new server (the old one was killed) takes over the same directory.
    let g = UsbGadget::setup(fake, &r.roots, &cfg()).unwrap();
    assert_eq!(g.probe().medium().unwrap(), None);
    assert_eq!(attr(&g, "UDC"), "dummy_udc.0");
}

#[test]
fn a_failed_setup_leaves_nothing() {
    let r = rig(&["dummy_udc.0"]);
    let fake = FakeConfigFs {
        fail_write: Some("UDC"),
        ..FakeConfigFs::default()
    };
    let e = UsbGadget::setup(fake, &r.roots, &cfg()).err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("usb_gadget/usrbd/UDC"),
        "the error names the path: {msg}"
    );
    assert!(!r.roots.gadget_dir().exists());
}

#[test]
fn udc_choice() {
    let r = rig(&[]);
    let e = choose_udc(&Udc::Auto, &r.roots.udc_class).unwrap_err();
    assert!(matches!(e, ExportError::NoUdc { .. }), "{e}");
    assert!(e
        .to_string()
        .contains(&*r.roots.udc_class.to_string_lossy()));
    let r = rig(&["a.usb", "b.usb"]);
    let e = choose_udc(&Udc::Auto, &r.roots.udc_class).unwrap_err();
    assert!(e.to_string().contains("a.usb, b.usb"), "{e}");
    assert_eq!(
        choose_udc(&Udc::Named("b.usb".into()), &r.roots.udc_class).unwrap(),
        "b.usb"
    );
    let e = choose_udc(&Udc::Named("c.usb".into()), &r.roots.udc_class).unwrap_err();
    assert!(
        e.to_string().contains("c.usb") && e.to_string().contains("a.usb"),
        "{e}"
    );
    assert_eq!("auto".parse::<Udc>().unwrap(), Udc::Auto);
    assert_eq!(
        "fe980000.usb".parse::<Udc>().unwrap(),
        Udc::Named("fe980000.usb".into())
    );
    assert!("".parse::<Udc>().is_err());
    assert!("../x".parse::<Udc>().is_err());
}

#[test]
fn inquiry_identity_is_28_bytes_padded() {
    let c = UsbConfig {
        manufacturer: "a-very-long-vendor".into(),
        product: "ü".into(),
        ..cfg()
    };
    let s = inquiry_string(&c);
    assert_eq!(s.len(), 28);
    assert!(s.starts_with("a-very-l  "), "{s:?}");
}
