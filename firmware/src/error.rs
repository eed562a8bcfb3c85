//! Error types of the library, one enum per concern. Each variant names what failed
//! and with which input, so the binary can print it without more context.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// The control device and server fds (`/dev/usrbd-control`, ioctls).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("opening {}: {source} (is usrbd.ko loaded and are you root?)", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{op} failed: {errno}")]
    Ioctl { op: String, errno: Errno },
    #[error("module speaks ABI {module}, this program speaks {ours}")]
    Abi { module: u32, ours: u32 },
    #[error("device name `{0}` must be `usrbd` and up to 26 more of `a-z`, `0-9`, `-` or `_`")]
    Name(String),
    #[error("no usrbd device named `{0}`")]
    NotFound(String),
    #[error("server buffer of {len} bytes: {errno}")]
    Buffer { len: usize, errno: Errno },
}

impl DeviceError {
    /// The errno of a failed ioctl, if that is what this is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            DeviceError::Ioctl { errno, .. } | DeviceError::Buffer { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Opening, loading, saving and syncing a backend (the per-request path answers
/// errnos to the kernel instead).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("device.size (--size) is required: {} does not exist yet", path.display())]
    SizeRequired { path: PathBuf },
    #[error("device.size (--size) is required for the ram backend without an existing image")]
    RamSizeRequired,
    #[error("{} holds {have} bytes, less than the {want} bytes asked for", path.display())]
    TooSmall { path: PathBuf, have: u64, want: u64 },
    #[error("image {} holds {have} bytes, more than the {want}-byte device", path.display())]
    ImageTooLarge { path: PathBuf, have: u64, want: u64 },
    #[error("mapping {size} bytes of RAM: {errno}")]
    Map { size: u64, errno: Errno },
    #[error("size {size} is not a multiple of the {block}-byte block size")]
    Unaligned { size: u64, block: u32 },
    #[error("{} is in use (mounted, or held by another driver): serving it would corrupt it", path.display())]
    InUse { path: PathBuf },
    #[error("{} is on another filesystem than when the service started (mounted over since?): not saving the image there; the data stays in RAM", dir.display())]
    ImageDirMoved { dir: PathBuf },
    #[error("{} has {free} bytes free; saving the image needs up to {need}", dir.display())]
    NoRoom { dir: PathBuf, free: u64, need: u64 },
}

/// Reading and checking the configuration (TOML file and flags).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{key}: `{value}` is not accepted; expected {accepted}")]
    Invalid {
        key: &'static str,
        value: String,
        accepted: String,
    },
    #[error("{key} is required {why}")]
    Missing {
        key: &'static str,
        why: &'static str,
    },
}

/// A step of the detach sequence that failed; the device keeps serving unless the
/// variant says the graceful destroy already happened.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("{} is busy (still in use), not unmounting; the device keeps serving", mountpoint.display())]
    Busy { mountpoint: PathBuf },
    #[error("unmounting {}: {errno}", mountpoint.display())]
    Unmount { mountpoint: PathBuf, errno: Errno },
    #[error("reading the mount table: {0}")]
    MountTable(#[source] io::Error),
    #[error("flushing {}: {source}", path.display())]
    Flush {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("graceful destroy: {0}")]
    Destroy(#[source] DeviceError),
    #[error("a worker failed: {0}")]
    Worker(#[source] WorkerError),
    #[error("final sync of the backend: {0}")]
    Finish(#[source] BackendError),
    #[error("USB export: {0}")]
    Export(#[source] ExportError),
    #[error("reading the device status: {0}")]
    Status(#[source] DeviceError),
    #[error("{} is still open {openers} time(s) {waited_ms} ms after the USB eject; the device keeps serving", path.display())]
    StillOpen {
        path: PathBuf,
        openers: u32,
        waited_ms: u64,
    },
}

/// Why a worker thread (one queue's server) stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("queue {queue}: attaching again after the module unbound the server: {source}")]
    Reattach {
        queue: u32,
        #[source]
        source: DeviceError,
    },
    #[error("queue {queue}: SERVE failed: {errno}")]
    Serve { queue: u32, errno: Errno },
    #[error("worker thread {thread} panicked")]
    Panicked { thread: String },
}

/// Setting up, driving and removing the USB mass-storage gadget.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting configfs on {}: {errno}", path.display())]
    Mount { path: PathBuf, errno: Errno },
    #[error("{} does not exist after loading libcomposite: this kernel has no USB gadget support", path.display())]
    NoGadgetSupport { path: PathBuf },
    #[error("no USB device controller in {} (Pi: dtoverlay=dwc2 and the USB data/OTG port; VM: modprobe dummy_hcd)", dir.display())]
    NoUdc { dir: PathBuf },
    #[error("several USB device controllers in {} ({}); name one with usb.udc (--udc)", dir.display(), list.join(", "))]
    AmbiguousUdc { dir: PathBuf, list: Vec<String> },
    #[error("USB device controller `{name}` is not in {} (present: {})", dir.display(), list.join(", "))]
    UnknownUdc {
        name: String,
        dir: PathBuf,
        list: Vec<String>,
    },
}

/// The control socket.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no usrbd server socket in {}; is `usrbd serve` running? (or pass --socket)", dir.display())]
    NoServer { dir: PathBuf },
    #[error("several servers run ({}); pick one with --socket", list.join(", "))]
    Ambiguous { list: Vec<String> },
    #[error("talking to the server: {0}")]
    Protocol(String),
}

/// Starting or running `usrbd serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Ipc(#[from] IpcError),
    #[error("USB export: {0}")]
    Export(#[from] ExportError),
    #[error("setting up signal handling: {0}")]
    Signals(#[source] Errno),
    #[error("starting the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading {}: {source}", path.display())]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Lock {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("device `{name}` is already served by another `usrbd serve` (it holds {}); this one changes nothing and exits", lock.display())]
    AlreadyServed { name: String, lock: PathBuf },
    #[error("device `{name}` was left by a RAM server that died, and its RAM died with it: destroyed it by force (a filesystem still mounted on it sees I/O errors); the saved image is untouched, `usrbd attach` serves it again")]
    Orphan { name: String },
}
