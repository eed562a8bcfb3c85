//! Runs one case against the rig and tallies what the kernel answered.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::errno::Errno;
use usrbd::uapi::{self, usrbd_completion, usrbd_request, usrbd_serve};

use super::cases::{
    AttachFault, BadPtr, Case, CreateFault, DestroyFault, IndexFault, LenFault, ServeFault,
    StaleAnswer, ValidOp,
};
use super::rig::{
    self, create_struct, ioctl_struct, raw_ioctl, BadMemory, Device, DeviceSpec, Health,
    QueueState, KERNEL_ADDR, NONCANONICAL_ADDR, REAL,
};

/// The scratch device that malformed CREATEs aim at (and valid ones make).
pub const D_SPEC: DeviceSpec = DeviceSpec {
    name: "usrbd-fuzz-d",
    size: 1 << 20,
    queues: 1,
    depth: 2,
    max_io: 4096,
    flags: 0,
};

/// The unserved device that destroys and attaches aim at.
pub const C_SPEC: DeviceSpec = DeviceSpec {
    name: "usrbd-fuzz-c",
    size: 1 << 20,
    queues: 1,
    depth: 2,
    max_io: 4096,
    flags: 0,
};

/// The device the stale-answer cases serve themselves (attach, fetch,
/// close, attach again), with a short timeout for the timeout case.
pub const E_SPEC: DeviceSpec = DeviceSpec {
    name: "usrbd-fuzz-e",
    size: 1 << 20,
    queues: 1,
    depth: 2,
    max_io: 4096,
    flags: 0,
};
const E_TIMEOUT_MS: u32 = 1000;
/// Timeout cases per run: each waits 1-2 s, and 100 000 cases would
/// otherwise spend minutes on them. Later ones re-attach instead.
const TIMEOUT_CASES: u32 = 5;

const SCRATCH: usize = 1 << 14;

#[derive(Default, Debug)]
pub struct KindCount {
    pub calls: u64,
    pub rejected: u64,
    /// Lenient kinds: accepted but harmless (nothing to copy).
    pub tolerated: u64,
    pub lenient: bool,
    pub errnos: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Tally {
    pub kinds: BTreeMap<String, KindCount>,
    pub violations: Vec<String>,
    pub valid_calls: u64,
    pub valid_failed: Vec<String>,
    /// Wall time spent per case family.
    pub time: BTreeMap<&'static str, std::time::Duration>,
}

impl Tally {
    fn count(&mut self, label: &str, result: Result<i32, Errno>) -> &mut KindCount {
        let k = self.kinds.entry(label.to_owned()).or_default();
        k.calls += 1;
        if let Err(e) = result {
            k.rejected += 1;
            *k.errnos.entry(format!("{e:?}")).or_default() += 1;
        }
        k
    }

    /// A malformed call: it must fail.
    fn malformed(&mut self, label: &str, result: Result<i32, Errno>, case: &dyn std::fmt::Debug) {
        self.count(label, result);
        if let Ok(ret) = result {
            self.violations
                .push(format!("{label}: accepted (returned {ret}): {case:?}"));
        }
    }

    fn valid(&mut self, what: &str, result: Result<i32, Errno>) -> bool {
        self.valid_calls += 1;
        match result {
            Ok(_) => true,
            Err(e) => {
                self.valid_failed.push(format!("{what}: {e}"));
                false
            }
        }
    }

    /// Calls that had to fail, and how many of those did.
    pub fn strict(&self) -> (u64, u64) {
        self.kinds
            .values()
            .filter(|k| !k.lenient)
            .fold((0, 0), |(c, r), k| (c + k.calls, r + k.rejected))
    }

    /// Calls allowed to succeed when the kernel had nothing to copy.
    pub fn lenient(&self) -> (u64, u64) {
        self.kinds
            .values()
            .filter(|k| k.lenient)
            .fold((0, 0), |(c, t), k| (c + k.calls, t + k.tolerated))
    }
}

pub struct Rig {
    pub ctl: OwnedFd,
    pub limits: uapi::usrbd_version,
    pub a: Arc<Device>,
    pub b: Arc<Device>,
    pub c: Device,
    pub e: Device,
    pub bad: BadMemory,
    pub health: Arc<Health>,
    /// Buffers big enough for C's and A's queues, for attach attempts.
    c_buf: Box<[u8]>,
    a_buf: Box<[u8]>,
    e_buf: Box<[u8]>,
    timeouts_run: u32,
}

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the uapi structs are plain data without padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

fn from_bytes<T: Copy>(b: &[u8]) -> T {
    assert!(b.len() >= std::mem::size_of::<T>());
    // SAFETY: length checked; any bit pattern is a valid uapi struct.
    unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
}

fn need(spec_depth: u32, max_io: u32) -> usize {
    spec_depth as usize * max_io as usize
}

impl Rig {
    pub fn new(
        ctl: OwnedFd,
        limits: uapi::usrbd_version,
        a: Arc<Device>,
        b: Arc<Device>,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        let c = Device::create(ctl.as_raw_fd(), &C_SPEC, false)?;
        let e = Device::create_with_timeout(ctl.as_raw_fd(), &E_SPEC, false, E_TIMEOUT_MS)?;
        Ok(Self {
            c_buf: vec![0u8; need(C_SPEC.depth, C_SPEC.max_io)].into_boxed_slice(),
            e_buf: vec![0u8; need(E_SPEC.depth, E_SPEC.max_io)].into_boxed_slice(),
            e,
            timeouts_run: 0,
            a_buf: vec![0u8; need(a.depth, a.max_io)].into_boxed_slice(),
            ctl,
            limits,
            a,
            b,
            c,
            bad: BadMemory::new()?,
            health,
        })
    }

    fn ctl(&self) -> RawFd {
        self.ctl.as_raw_fd()
    }

    fn served(&self) -> Vec<(Arc<Device>, usize)> {
        let mut v = Vec::new();
        for dev in [&self.a, &self.b] {
            for q in 0..dev.queues.len() {
                v.push((Arc::clone(dev), q));
            }
        }
        v
    }

    fn list(&self) -> Vec<u32> {
        let mut l = uapi::usrbd_list::default();
        match ioctl_struct(self.ctl(), rig::LIST, &mut l) {
            Ok(_) => l.index[..(l.count as usize).min(uapi::USRBD_MAX_DEVICES)].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    fn resolve_index(&self, f: IndexFault) -> u32 {
        let max = self.limits.max_devices;
        match f {
            IndexFault::NoDevice(pick) => {
                let used = self.list();
                (0..max)
                    .map(|i| (pick % max.max(1) + i) % max.max(1))
                    .find(|i| !used.contains(i))
                    .unwrap_or(max)
            }
            IndexFault::OutOfRange(n) => max.saturating_add(n).min(u32::MAX - 1),
            IndexFault::Auto => uapi::USRBD_INDEX_AUTO,
        }
    }

    /// Undoes what a wrongly accepted call did: closes a returned fd,
    /// removes devices that are not ours, recreates C if it was destroyed.
    fn repair(&mut self, number: u32, ret: i32) {
        if number & 0xff == 0x05 && ret > 0 {
            // SAFETY: ATTACH returned this fd and nothing else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(ret) });
        }
        let ours = [self.a.index, self.b.index, self.c.index, self.e.index];
        let listed = self.list();
        for index in listed.iter().filter(|i| !ours.contains(i)) {
            let mut st = uapi::usrbd_status {
                index: *index,
                ..Default::default()
            };
            if ioctl_struct(self.ctl(), rig::STATUS, &mut st).is_ok()
                && uapi::name_from_c(&st.name).starts_with("usrbd-fuzz")
            {
                let _ = rig::destroy(self.ctl(), *index, true);
            }
        }
        if !listed.contains(&self.c.index) {
            match Device::create(self.ctl(), &C_SPEC, false) {
                Ok(c) => self.c = c,
                Err(e) => self
                    .health
                    .report(format!("recreating {}: {e:#}", C_SPEC.name)),
            }
        }
        if !listed.contains(&self.e.index) {
            match Device::create_with_timeout(self.ctl(), &E_SPEC, false, E_TIMEOUT_MS) {
                Ok(e) => self.e = e,
                Err(e) => self
                    .health
                    .report(format!("recreating {}: {e:#}", E_SPEC.name)),
            }
        }
    }

    fn malformed_ctl(
        &mut self,
        tally: &mut Tally,
        label: &str,
        number: u32,
        arg: usize,
        case: &Case,
    ) {
        let r = raw_ioctl(self.ctl(), number, arg);
        tally.malformed(label, r, case);
        if let Ok(ret) = r {
            self.repair(number, ret);
        }
    }

    fn bad_addr(&self, p: BadPtr, prefix: &[u8]) -> u64 {
        match p {
            BadPtr::Null => 0,
            BadPtr::Inaccessible => self.bad.inaccessible() as u64,
            BadPtr::Straddle => self.bad.straddle(8, prefix) as u64,
            BadPtr::Kernel => KERNEL_ADDR,
            BadPtr::NonCanonical => NONCANONICAL_ADDR,
        }
    }

    /// The same, as an ioctl argument of this process's pointer width.
    fn bad_arg(&self, p: BadPtr, prefix: &[u8]) -> usize {
        match (p, usize::BITS) {
            (BadPtr::Kernel, 32) => 0xffff_f000,
            (BadPtr::NonCanonical, 32) => 0xffff_fff8,
            _ => self.bad_addr(p, prefix) as usize,
        }
    }

    /// A correct struct for each real ioctl, aimed at C or D (never A or B).
    fn valid_bytes(&self, ioctl: usize) -> Vec<u8> {
        match ioctl {
            1 => create_struct(&D_SPEC)
                .map(|c| bytes_of(&c))
                .unwrap_or_default(),
            2 => bytes_of(&uapi::usrbd_destroy {
                index: self.c.index,
                flags: uapi::USRBD_DESTROY_FORCE,
                timeout_ms: 0,
                reserved: 0,
            }),
            4 => bytes_of(&uapi::usrbd_status {
                index: self.a.index,
                ..Default::default()
            }),
            5 => bytes_of(&uapi::usrbd_attach {
                index: self.c.index,
                queue: 0,
                buf_addr: self.c_buf.as_ptr() as u64,
                buf_len: self.c_buf.len() as u64,
                flags: 0,
                reserved: 0,
            }),
            6 => bytes_of(&usrbd_serve::default()),
            _ => Vec::new(),
        }
    }

    fn scratch(&self, ioctl: usize) -> Vec<u8> {
        let mut buf = vec![0u8; SCRATCH];
        let valid = self.valid_bytes(ioctl);
        buf[..valid.len()].copy_from_slice(&valid);
        buf
    }

    pub fn run(&mut self, case: &Case, tally: &mut Tally) {
        let start = std::time::Instant::now();
        self.dispatch(case, tally);
        *tally.time.entry(case.family()).or_default() += start.elapsed();
    }

    fn dispatch(&mut self, case: &Case, tally: &mut Tally) {
        match *case {
            Case::WrongNumber { ioctl, dir, size } => {
                let number = rig::ioc(dir, REAL[ioctl].1 & 0xff, size);
                let mut buf = self.scratch(ioctl);
                let label = format!("wrong-number:{}", REAL[ioctl].0);
                if REAL[ioctl].2 {
                    self.malformed_ctl(tally, &label, number, buf.as_mut_ptr() as usize, case);
                } else {
                    let served = self.served();
                    let (dev, q) = &served[0];
                    let queue = &dev.queues[*q];
                    let _held = queue.lock();
                    let r = raw_ioctl(queue.fd.as_raw_fd(), number, buf.as_mut_ptr() as usize);
                    tally.malformed(&label, r, case);
                }
            }
            Case::UnknownNumber { nr, dir, size } => {
                let number = rig::ioc(dir, nr, size);
                let mut buf = vec![0u8; SCRATCH];
                if nr % 2 == 0 {
                    self.malformed_ctl(
                        tally,
                        "unknown-number:control",
                        number,
                        buf.as_mut_ptr() as usize,
                        case,
                    );
                } else {
                    let queue = Arc::clone(&self.a.queues[0]);
                    let r = raw_ioctl(queue.fd.as_raw_fd(), number, buf.as_mut_ptr() as usize);
                    tally.malformed("unknown-number:server", r, case);
                }
            }
            Case::ForeignNumber { number, on_server } => {
                let mut buf = vec![0u8; SCRATCH];
                if on_server {
                    let queue = Arc::clone(&self.b.queues[0]);
                    let r = raw_ioctl(queue.fd.as_raw_fd(), number, buf.as_mut_ptr() as usize);
                    tally.malformed("foreign-number:server", r, case);
                } else {
                    self.malformed_ctl(
                        tally,
                        "foreign-number:control",
                        number,
                        buf.as_mut_ptr() as usize,
                        case,
                    );
                }
            }
            Case::ServeOnControl => {
                let mut s = usrbd_serve::default();
                self.malformed_ctl(
                    tally,
                    "serve-on-control",
                    rig::SERVE,
                    &mut s as *mut _ as usize,
                    case,
                );
            }
            Case::ControlOnServer { ioctl, queue } => {
                let served = self.served();
                let (dev, q) = &served[queue as usize % served.len()];
                let mut buf = self.scratch(ioctl);
                let r = raw_ioctl(
                    dev.queues[*q].fd.as_raw_fd(),
                    REAL[ioctl].1,
                    buf.as_mut_ptr() as usize,
                );
                tally.malformed(&format!("control-on-server:{}", REAL[ioctl].0), r, case);
                if let Ok(ret) = r {
                    self.repair(REAL[ioctl].1, ret);
                }
            }
            Case::Create(f) => self.create(f, case, tally),
            Case::Destroy(f) => {
                let mut d = uapi::usrbd_destroy {
                    index: self.c.index,
                    flags: uapi::USRBD_DESTROY_FORCE,
                    timeout_ms: 0,
                    reserved: 0,
                };
                let label = match f {
                    DestroyFault::Flags(bit) => {
                        d.flags |= bit;
                        "destroy:flags"
                    }
                    DestroyFault::Reserved(v) => {
                        d.reserved = v;
                        "destroy:reserved"
                    }
                    DestroyFault::Index(i) => {
                        d.index = self.resolve_index(i);
                        "destroy:index"
                    }
                };
                self.malformed_ctl(tally, label, rig::DESTROY, &mut d as *mut _ as usize, case);
            }
            Case::Status(f) => {
                let mut st = uapi::usrbd_status {
                    index: self.resolve_index(f),
                    ..Default::default()
                };
                self.malformed_ctl(
                    tally,
                    "status:index",
                    rig::STATUS,
                    &mut st as *mut _ as usize,
                    case,
                );
            }
            Case::Attach(f) => self.attach(f, case, tally),
            Case::ArgPointer { ioctl, ptr, queue } => {
                let mut prefix = self.valid_bytes(ioctl);
                prefix.resize(8, 0);
                let arg = self.bad_arg(ptr, &prefix);
                let label = format!("arg-pointer:{}:{ptr:?}", REAL[ioctl].0);
                if REAL[ioctl].2 {
                    self.malformed_ctl(tally, &label, REAL[ioctl].1, arg, case);
                } else {
                    let served = self.served();
                    let (dev, q) = &served[queue as usize % served.len()];
                    let queue = &dev.queues[*q];
                    let _held = queue.lock();
                    let r = raw_ioctl(queue.fd.as_raw_fd(), rig::SERVE, arg);
                    tally.malformed(&label, r, case);
                }
            }
            Case::Serve { target, fault } => self.serve(target, fault, case, tally),
            Case::RandomStruct { ioctl, seed } => self.random_struct(ioctl, seed, case, tally),
            Case::Stale(f) => self.stale(f, case, tally),
            Case::Valid(op) => self.valid(op, tally),
        }
    }

    fn create(&mut self, f: CreateFault, case: &Case, tally: &mut Tally) {
        let Ok(mut c) = create_struct(&D_SPEC) else {
            return;
        };
        let l = self.limits;
        let label = match f {
            CreateFault::Abi(v) => {
                c.abi_version = v;
                "create:abi"
            }
            CreateFault::Reserved { slot, value } => {
                c.reserved[slot % 5] = value;
                "create:reserved"
            }
            CreateFault::Flags(bit) => {
                c.flags |= bit;
                "create:flags"
            }
            CreateFault::IndexOutOfRange(n) => {
                c.index = l.max_devices.saturating_add(n).min(u32::MAX - 1);
                "create:index-range"
            }
            CreateFault::IndexTaken => {
                c.index = self.a.index;
                "create:index-taken"
            }
            CreateFault::NameTaken => {
                c.name = uapi::name_to_c(&self.a.name).unwrap_or_default();
                "create:name-taken"
            }
            CreateFault::NameNoNul => {
                c.name = [b'x' as libc::c_char; uapi::USRBD_NAME_LEN];
                "create:name-no-nul"
            }
            CreateFault::NameSlash => {
                c.name = uapi::name_to_c("usrbd/fuzz").unwrap_or_default();
                "create:name-slash"
            }
            CreateFault::ForeignName(i) => {
                const FOREIGN: [&str; 6] = ["sda", "mmcblk0", "foo1", "nvme0n1", "loop7", "usrb"];
                c.name = uapi::name_to_c(FOREIGN[i % FOREIGN.len()]).unwrap_or_default();
                "create:foreign-name"
            }
            CreateFault::Lbs(v) => {
                c.logical_block_size = v;
                "create:logical-block-size"
            }
            CreateFault::Pbs { lbs, pbs } => {
                c.logical_block_size = lbs;
                c.physical_block_size = pbs;
                "create:physical-block-size"
            }
            CreateFault::Size { lbs, size } => {
                c.logical_block_size = lbs;
                c.size = size;
                "create:size"
            }
            CreateFault::QueuesZero => {
                c.nr_queues = 0;
                "create:queues"
            }
            CreateFault::QueuesOver(n) => {
                c.nr_queues = l.max_queues.saturating_add(1 + n % 64);
                "create:queues"
            }
            CreateFault::DepthZero => {
                c.queue_depth = 0;
                "create:depth"
            }
            CreateFault::DepthOver(n) => {
                c.queue_depth = l.max_queue_depth.saturating_add(1 + n % 1000);
                "create:depth"
            }
            CreateFault::MaxIo(v) => {
                c.max_io_bytes = v;
                "create:max-io"
            }
            CreateFault::MaxIoOver(n) => {
                c.max_io_bytes = l.max_io_bytes.saturating_add(4096 * (1 + n % 256));
                "create:max-io"
            }
        };
        self.malformed_ctl(tally, label, rig::CREATE, &mut c as *mut _ as usize, case);
    }

    fn attach(&mut self, f: AttachFault, case: &Case, tally: &mut Tally) {
        let mut a = uapi::usrbd_attach {
            index: self.c.index,
            queue: 0,
            buf_addr: self.c_buf.as_ptr() as u64,
            buf_len: self.c_buf.len() as u64,
            flags: 0,
            reserved: 0,
        };
        let need = self.c_buf.len() as u64;
        let mut first: Option<OwnedFd> = None;
        let label = match f {
            AttachFault::Flags(v) => {
                a.flags = v;
                "attach:flags"
            }
            AttachFault::LinearShort(n) => {
                a.flags = uapi::USRBD_ATTACH_LINEAR;
                let size = C_SPEC.size;
                a.buf_len = size - 1 - u64::from(n) % size;
                "attach:linear-short"
            }
            AttachFault::Reserved(v) => {
                a.reserved = v;
                "attach:reserved"
            }
            AttachFault::Index(i) => {
                a.index = self.resolve_index(i);
                "attach:index"
            }
            AttachFault::Queue(n) => {
                a.queue = n.max(self.c.nr_queues);
                "attach:queue"
            }
            AttachFault::BufNull => {
                a.buf_addr = 0;
                "attach:buf-null"
            }
            AttachFault::BufKernel => {
                a.buf_addr = KERNEL_ADDR;
                "attach:buf-kernel"
            }
            AttachFault::BufNonCanonical => {
                a.buf_addr = NONCANONICAL_ADDR;
                "attach:buf-noncanonical"
            }
            AttachFault::BufWraps { below_top, linear } => {
                // The buffer is long enough; only its end lies past 2^64.
                let need = if linear { C_SPEC.size } else { need };
                if linear {
                    a.flags = uapi::USRBD_ATTACH_LINEAR;
                    a.buf_len = need;
                }
                a.buf_addr = 0u64.wrapping_sub(1 + below_top % need);
                "attach:buf-wraps"
            }
            AttachFault::BufShort(n) => {
                a.buf_len = need - 1 - u64::from(n) % need;
                "attach:buf-short"
            }
            AttachFault::BufZeroLen => {
                a.buf_len = 0;
                "attach:buf-short"
            }
            AttachFault::Busy => {
                a.index = self.a.index;
                a.buf_addr = self.a_buf.as_ptr() as u64;
                a.buf_len = self.a_buf.len() as u64;
                "attach:busy"
            }
            AttachFault::Twice => {
                match rig::attach(self.ctl(), self.c.index, 0, a.buf_addr, a.buf_len) {
                    Ok(fd) => {
                        tally.valid("attach C queue 0", Ok(0));
                        first = Some(fd);
                    }
                    Err(e) => {
                        tally.valid("attach C queue 0", Err(e));
                        return;
                    }
                }
                "attach:twice"
            }
        };
        self.malformed_ctl(tally, label, rig::ATTACH, &mut a as *mut _ as usize, case);
        drop(first);
    }

    fn random_struct(&mut self, ioctl: usize, seed: u64, case: &Case, tally: &mut Tally) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bytes = vec![0u8; 1100];
        rng.fill(&mut bytes);
        let label = format!("random-struct:{}", REAL[ioctl].0);
        match ioctl {
            1 => {
                let mut c: uapi::usrbd_create = from_bytes(&bytes);
                c.reserved[rng.usize(0..5)] |= 1;
                self.malformed_ctl(tally, &label, rig::CREATE, &mut c as *mut _ as usize, case);
            }
            2 => {
                let mut d: uapi::usrbd_destroy = from_bytes(&bytes);
                d.reserved |= 1;
                if d.index == self.a.index || d.index == self.b.index {
                    d.index = self.c.index;
                }
                self.malformed_ctl(tally, &label, rig::DESTROY, &mut d as *mut _ as usize, case);
            }
            4 => {
                let mut st: uapi::usrbd_status = from_bytes(&bytes);
                if self.list().contains(&st.index) {
                    st.index = st.index.saturating_add(self.limits.max_devices);
                }
                self.malformed_ctl(tally, &label, rig::STATUS, &mut st as *mut _ as usize, case);
            }
            5 => {
                let mut a: uapi::usrbd_attach = from_bytes(&bytes);
                a.flags |= 1;
                self.malformed_ctl(tally, &label, rig::ATTACH, &mut a as *mut _ as usize, case);
            }
            _ => {
                let mut s: usrbd_serve = from_bytes(&bytes);
                s.nr_completions = uapi::USRBD_MAX_BATCH + 1 + rng.u32(0..10_000);
                let queue = Arc::clone(&self.a.queues[0]);
                let _held = queue.lock();
                let r = ioctl_struct(queue.fd.as_raw_fd(), rig::SERVE, &mut s);
                tally.malformed(&label, r, case);
            }
        }
    }

    fn valid(&mut self, op: ValidOp, tally: &mut Tally) {
        let ctl = self.ctl();
        match op {
            ValidOp::Version => {
                let mut v = uapi::usrbd_version::default();
                let r = ioctl_struct(ctl, rig::VERSION, &mut v);
                if tally.valid("VERSION", r) && v.abi_version != uapi::USRBD_ABI_VERSION {
                    tally
                        .valid_failed
                        .push(format!("VERSION says abi {}", v.abi_version));
                }
            }
            ValidOp::List => {
                let mut l = uapi::usrbd_list::default();
                let r = ioctl_struct(ctl, rig::LIST, &mut l);
                let listed = &l.index[..(l.count as usize).min(uapi::USRBD_MAX_DEVICES)];
                if tally.valid("LIST", r)
                    && ![self.a.index, self.b.index, self.c.index]
                        .iter()
                        .all(|i| listed.contains(i))
                {
                    tally
                        .valid_failed
                        .push(format!("LIST misses one of ours: {listed:?}"));
                }
            }
            ValidOp::Status(w) => {
                let (index, name) = match w % 3 {
                    0 => (self.a.index, self.a.name.clone()),
                    1 => (self.b.index, self.b.name.clone()),
                    _ => (self.c.index, self.c.name.clone()),
                };
                let mut st = uapi::usrbd_status {
                    index,
                    ..Default::default()
                };
                let r = ioctl_struct(ctl, rig::STATUS, &mut st);
                if tally.valid("STATUS", r) && uapi::name_from_c(&st.name) != name {
                    tally.valid_failed.push(format!(
                        "STATUS {index} names {:?}, expected {name:?}",
                        uapi::name_from_c(&st.name)
                    ));
                }
            }
            ValidOp::AttachClose => {
                let r = rig::attach(
                    ctl,
                    self.c.index,
                    0,
                    self.c_buf.as_ptr() as u64,
                    self.c_buf.len() as u64,
                );
                tally.valid("ATTACH C", r.map(|fd| fd.as_raw_fd()));
            }
            ValidOp::CreateDestroy => match Device::create(ctl, &D_SPEC, false) {
                Ok(d) => {
                    tally.valid("CREATE D", Ok(0));
                    let r = rig::destroy(ctl, d.index, true).map(|()| 0);
                    tally.valid("DESTROY D", r);
                }
                Err(e) => tally.valid_failed.push(format!("CREATE D: {e:#}")),
            },
            ValidOp::Fetch(w) => {
                let served = self.served();
                let (dev, q) = &served[w as usize % served.len()];
                let queue = &dev.queues[*q];
                let mut st = queue.lock();
                let r = dev.serve_once(queue, &mut st, dev.depth, 0, &self.health);
                tally.valid("SERVE fetch", r.map(|n| n as i32));
            }
        }
    }

    fn serve(&mut self, target: u32, fault: ServeFault, case: &Case, tally: &mut Tally) {
        let served = self.served();
        let (dev, qi) = served[target as usize % served.len()].clone();
        // Tags in flight elsewhere, read before locking the target queue.
        let other = match fault {
            ServeFault::CrossQueue { .. } if dev.queues.len() > 1 => Some(
                dev.queues[(qi + 1) % dev.queues.len()]
                    .lock()
                    .pending
                    .clone(),
            ),
            ServeFault::CrossDevice { .. } => {
                let o = if Arc::ptr_eq(&dev, &self.a) {
                    &self.b
                } else {
                    &self.a
                };
                Some(
                    o.queues[target as usize % o.queues.len()]
                        .lock()
                        .pending
                        .clone(),
                )
            }
            _ => None,
        };
        let queue = Arc::clone(&dev.queues[qi]);
        let mut st = queue.lock();
        let needs_in_flight = matches!(
            fault,
            ServeFault::WrongOp { .. }
                | ServeFault::WrongLen { .. }
                | ServeFault::BadResult { .. }
                | ServeFault::Duplicate { .. }
                | ServeFault::PrefixThenBad { .. }
                | ServeFault::StaleCookie { .. }
        );
        if needs_in_flight && st.pending.is_empty() {
            // Fetch something for the fault to aim at; a short wait, since
            // the I/O threads have only a few requests out at a time.
            let r = dev.serve_once(&queue, &mut st, dev.depth, 1, &self.health);
            tally.valid("SERVE fetch", r.map(|n| n as i32));
        }
        let depth = dev.depth;
        let pick = |p: u32, st: &QueueState| {
            st.pending
                .get(p as usize % st.pending.len().max(1))
                .copied()
        };
        let not_in_flight = |p: u32, st: &QueueState| {
            let free: Vec<u32> = (0..depth)
                .filter(|t| st.pending.iter().all(|x| x.req.tag != *t))
                .collect();
            free.get(p as usize % free.len().max(1))
                .copied()
                .unwrap_or(depth)
        };
        let stray = |tag: u32, op: u32| usrbd_completion {
            tag,
            op,
            result: 0,
            len: if op == uapi::USRBD_OP_FLUSH { 0 } else { 4096 },
            cookie: 0,
        };

        let mut comps: Vec<usrbd_completion> = Vec::new();
        let mut s = usrbd_serve::default();
        let mut max_requests = 0u32;
        let mut expect_completed = 0u32;
        let mut lenient = false;
        let label: String = match fault {
            ServeFault::TagOutOfRange { over } => {
                comps.push(stray(depth.saturating_add(over), uapi::USRBD_OP_READ));
                "serve:tag-out-of-range".into()
            }
            ServeFault::NotInFlight { pick: p, op } => {
                comps.push(stray(not_in_flight(p, &st), op));
                "serve:not-in-flight".into()
            }
            ServeFault::WrongOp { pick: p, shift } => match pick(p, &st) {
                Some(x) => {
                    comps.push(usrbd_completion {
                        op: x.req.op + 1 + shift % 7,
                        ..x.answer
                    });
                    "serve:wrong-op".into()
                }
                None => {
                    comps.push(stray(not_in_flight(p, &st), uapi::USRBD_OP_READ));
                    "serve:not-in-flight".into()
                }
            },
            ServeFault::WrongLen { pick: p, how } => match pick(p, &st) {
                Some(x) => {
                    let len = x.req.len;
                    let bad = match how {
                        LenFault::PlusOne => len.wrapping_add(1),
                        LenFault::MinusSector => len.wrapping_sub(512),
                        LenFault::Double if len > 0 => len * 2,
                        LenFault::Huge => u32::MAX,
                        LenFault::Zero if len > 0 => 0,
                        _ => 4096,
                    };
                    comps.push(usrbd_completion {
                        len: bad,
                        result: 0,
                        ..x.answer
                    });
                    "serve:wrong-len".into()
                }
                None => {
                    comps.push(stray(not_in_flight(p, &st), uapi::USRBD_OP_WRITE));
                    "serve:not-in-flight".into()
                }
            },
            ServeFault::BadResult { pick: p, result } => match pick(p, &st) {
                Some(x) => {
                    comps.push(usrbd_completion { result, ..x.answer });
                    "serve:bad-result".into()
                }
                None => {
                    comps.push(usrbd_completion {
                        result,
                        ..stray(not_in_flight(p, &st), uapi::USRBD_OP_READ)
                    });
                    "serve:not-in-flight".into()
                }
            },
            ServeFault::StaleCookie { pick: p, delta } => match pick(p, &st) {
                Some(x) => {
                    comps.push(usrbd_completion {
                        cookie: x.answer.cookie.wrapping_add(delta.max(1)),
                        ..x.answer
                    });
                    "serve:stale-cookie".into()
                }
                None => {
                    comps.push(stray(not_in_flight(p, &st), uapi::USRBD_OP_READ));
                    "serve:not-in-flight".into()
                }
            },
            ServeFault::Replay { pick: p } => {
                let n = st.answered.len();
                match st.answered.get(p as usize % n.max(1)) {
                    Some(a) => {
                        comps.push(*a);
                        "serve:replayed-answer".into()
                    }
                    None => {
                        comps.push(stray(not_in_flight(p, &st), uapi::USRBD_OP_READ));
                        "serve:not-in-flight".into()
                    }
                }
            }
            ServeFault::Duplicate { pick: p } => match pick(p, &st) {
                Some(x) => {
                    comps.push(x.answer);
                    comps.push(x.answer);
                    expect_completed = 1;
                    "serve:duplicate-tag".into()
                }
                None => {
                    comps.push(stray(not_in_flight(p, &st), uapi::USRBD_OP_READ));
                    "serve:not-in-flight".into()
                }
            },
            ServeFault::PrefixThenBad { k, over } => {
                let k = (k as usize).min(st.pending.len());
                comps.extend(st.pending[..k].iter().map(|p| p.answer));
                comps.push(stray(depth.saturating_add(over), uapi::USRBD_OP_READ));
                expect_completed = k as u32;
                "serve:valid-then-bad".into()
            }
            ServeFault::TooManyCompletions { extra } => {
                let n = uapi::USRBD_MAX_BATCH + 1 + extra;
                comps = vec![stray(u32::MAX, uapi::USRBD_OP_READ); n as usize];
                "serve:too-many-completions".into()
            }
            ServeFault::TooManyRequests { extra } => {
                max_requests = uapi::USRBD_MAX_BATCH + 1 + extra;
                "serve:too-many-requests".into()
            }
            ServeFault::CompletionsPtr { ptr, n } => {
                let prefix = bytes_of(&stray(u32::MAX, uapi::USRBD_OP_READ));
                s.completions = self.bad_addr(ptr, &prefix);
                s.nr_completions = n;
                format!("serve:completions-pointer:{ptr:?}")
            }
            ServeFault::RequestsPtr { ptr, n } => {
                s.requests = self.bad_addr(ptr, &[0u8; 8]);
                s.max_requests = n;
                lenient = true;
                format!("serve:requests-pointer:{ptr:?}")
            }
            ServeFault::CrossQueue { pick: p } | ServeFault::CrossDevice { pick: p } => {
                let candidates: Vec<_> = other
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| st.pending.iter().all(|x| x.req.tag != o.req.tag))
                    .collect();
                match candidates.get(p as usize % candidates.len().max(1)) {
                    Some(o) => {
                        comps.push(o.answer);
                        if matches!(fault, ServeFault::CrossQueue { .. }) {
                            "serve:other-queue-tag".into()
                        } else {
                            "serve:other-device-tag".into()
                        }
                    }
                    None => {
                        comps.push(stray(not_in_flight(p, &st), uapi::USRBD_OP_READ));
                        "serve:not-in-flight".into()
                    }
                }
            }
        };
        let mut reqs = vec![usrbd_request::default(); max_requests.max(s.max_requests) as usize];
        if !comps.is_empty() {
            s.completions = comps.as_ptr() as u64;
            s.nr_completions = comps.len() as u32;
        }
        if max_requests > 0 {
            s.requests = reqs.as_mut_ptr() as u64;
            s.max_requests = max_requests;
        }
        let r = ioctl_struct(queue.fd.as_raw_fd(), rig::SERVE, &mut s);

        // Whatever the kernel applied is no longer in flight.
        let applied = (s.nr_completed as usize).min(comps.len());
        for c in &comps[..applied] {
            st.pending.retain(|p| p.req.tag != c.tag);
        }
        if lenient {
            let k = tally.count(&label, r);
            k.lenient = true;
            match r {
                Ok(_) if s.nr_requests == 0 => k.tolerated += 1,
                Ok(_) => tally.violations.push(format!(
                    "{label}: claimed {} requests written to a bad address: {case:?}",
                    s.nr_requests
                )),
                Err(_) => {}
            }
        } else {
            tally.malformed(&label, r, case);
            if r.is_err() && s.nr_completed != expect_completed {
                tally.violations.push(format!(
                    "{label}: nr_completed {} after the refusal, expected {expect_completed}: {case:?}",
                    s.nr_completed
                ));
            }
        }
        if r.is_ok() && s.nr_requests > 0 && !lenient {
            // Wrongly accepted and fetched: serve those requests properly.
            let n = (s.nr_requests as usize).min(reqs.len());
            for req in &reqs[..n] {
                let p = dev.process(&mut st, *req, &self.health);
                st.pending.push(p);
            }
        }
    }

    /// Attaches E's queue 0 with its buffer.
    fn attach_e(&self, tally: &mut Tally) -> Option<OwnedFd> {
        let r = rig::attach(
            self.ctl(),
            self.e.index,
            0,
            self.e_buf.as_ptr() as u64,
            self.e_buf.len() as u64,
        );
        let ok = tally.valid(
            "ATTACH E",
            r.as_ref().map(|fd| fd.as_raw_fd()).map_err(|e| *e),
        );
        r.ok().filter(|_| ok)
    }

    fn stale(&mut self, f: StaleAnswer, case: &Case, tally: &mut Tally) {
        let (offset, timeout) = match f {
            StaleAnswer::AfterReattach { offset } => (offset, false),
            StaleAnswer::AfterTimeout { offset } => (offset, self.timeouts_run < TIMEOUT_CASES),
        };
        self.timeouts_run += u32::from(timeout);
        let Some(fd1) = self.attach_e(tally) else {
            return;
        };
        let file = match rig::open_direct(&self.e.path()) {
            Ok(f) => f,
            Err(e) => {
                tally.valid_failed.push(format!("opening E: {e:#}"));
                return;
            }
        };
        let at = u64::from(offset) % (E_SPEC.size / 4096) * 4096;
        let reader = std::thread::spawn(move || {
            let mut b = rig::AlignedBuf::new(4096);
            std::os::unix::fs::FileExt::read_exact_at(&file, b.bytes_mut(), at)
        });
        let first = e_fetch(fd1.as_raw_fd(), 5000);
        tally.valid(
            "SERVE fetch E",
            first.as_ref().map(|r| r.len() as i32).map_err(|e| *e),
        );
        let Some(r1) = first.ok().and_then(|r| r.first().copied()) else {
            tally
                .valid_failed
                .push("E: the READ was not fetched in 5 s".into());
            self.drain_e(fd1, reader, tally);
            return;
        };
        let old = answer_of(&r1);
        if timeout {
            // Held past its timeout: the READ fails and the server is unbound.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !reader.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            match reader.is_finished().then(|| reader.join()) {
                Some(Ok(Err(_))) => {}
                Some(Ok(Ok(()))) => tally.violations.push(format!(
                    "stale: a READ held past its timeout succeeded: {case:?}"
                )),
                _ => tally.violations.push(format!(
                    "stale: a held READ did not time out in 10 s: {case:?}"
                )),
            }
            let r = e_answer(fd1.as_raw_fd(), &old);
            tally.malformed("stale:after-timeout-unbound-fd", r, case);
            let Some(fd2) = self.attach_e(tally) else {
                return;
            };
            let r = e_answer(fd2.as_raw_fd(), &old);
            tally.malformed("stale:after-timeout-new-fd", r, case);
            return;
        }
        // Closing the fd gives the READ back to the queue.
        drop(fd1);
        let Some(fd2) = self.attach_e(tally) else {
            return;
        };
        let r = e_answer(fd2.as_raw_fd(), &old);
        tally.malformed("stale:after-reattach-not-fetched", r, case);
        let again = e_fetch(fd2.as_raw_fd(), 5000);
        tally.valid(
            "SERVE fetch E",
            again.as_ref().map(|r| r.len() as i32).map_err(|e| *e),
        );
        if let Some(r2) = again.ok().and_then(|r| r.first().copied()) {
            if r2.cookie == r1.cookie {
                tally.violations.push(format!(
                    "stale: the READ fetched again kept cookie {}: {case:?}",
                    r1.cookie
                ));
            }
            let r = e_answer(fd2.as_raw_fd(), &old);
            tally.malformed("stale:after-reattach-old-cookie", r, case);
            let r = e_answer(fd2.as_raw_fd(), &answer_of(&r2));
            tally.valid("SERVE answer E", r);
        }
        self.drain_e(fd2, reader, tally);
    }

    /// Serves E until the reader is done, so no request outlives the case.
    fn drain_e(
        &self,
        fd: OwnedFd,
        reader: std::thread::JoinHandle<std::io::Result<()>>,
        tally: &mut Tally,
    ) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !reader.is_finished() && std::time::Instant::now() < deadline {
            if let Ok(reqs) = e_fetch(fd.as_raw_fd(), 50) {
                for r in reqs {
                    let _ = e_answer(fd.as_raw_fd(), &answer_of(&r));
                }
            }
        }
        match reader.is_finished().then(|| reader.join()) {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => tally.valid_failed.push(format!("READ of E: {e}")),
            _ => tally
                .valid_failed
                .push("READ of E: not done in 10 s".into()),
        }
    }
}

fn answer_of(r: &usrbd_request) -> usrbd_completion {
    usrbd_completion {
        tag: r.tag,
        op: r.op,
        result: 0,
        len: r.len,
        cookie: r.cookie,
    }
}

/// Fetches up to E's depth, waiting up to `wait_ms`.
fn e_fetch(fd: RawFd, wait_ms: u32) -> Result<Vec<usrbd_request>, Errno> {
    let mut reqs = vec![usrbd_request::default(); E_SPEC.depth as usize];
    let mut s = usrbd_serve {
        requests: reqs.as_mut_ptr() as u64,
        max_requests: E_SPEC.depth,
        wait_ms,
        ..Default::default()
    };
    ioctl_struct(fd, rig::SERVE, &mut s)?;
    reqs.truncate(s.nr_requests.min(E_SPEC.depth) as usize);
    Ok(reqs)
}

fn e_answer(fd: RawFd, a: &usrbd_completion) -> Result<i32, Errno> {
    let mut s = usrbd_serve {
        completions: a as *const usrbd_completion as u64,
        nr_completions: 1,
        ..Default::default()
    };
    ioctl_struct(fd, rig::SERVE, &mut s)
}
