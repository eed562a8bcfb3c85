//! What the fuzzer sends, drawn from a seeded RNG. A case holds only
//! random numbers; which tag or device they point at is decided when it
//! runs (that depends on what is in flight then), so the sequence of cases
//! is the same for a seed however the kernel behaves.

use fastrand::Rng;
use usrbd::uapi;

/// Indices into `rig::REAL`.
pub const CREATE: usize = 1;
pub const DESTROY: usize = 2;
pub const STATUS: usize = 4;
pub const ATTACH: usize = 5;
pub const SERVE: usize = 6;
const REAL_COUNT: usize = 7;
const REAL_NRS: [u32; REAL_COUNT] = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x10];

/// Ioctl types the VFS answers itself for any fd (FIOCLEX, FIFREEZE,
/// FS_IOC_*, FICLONE, FS_IOC_GETFSUUID…), and our own magic.
const NOT_FOREIGN: [u32; 7] = [0x00, 0x15, 0x54, 0x58, 0x66, 0x94, 0xBD];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPtr {
    Null,
    /// A mapped page with no access rights.
    Inaccessible,
    /// Starts 8 bytes before an inaccessible page.
    Straddle,
    Kernel,
    NonCanonical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LenFault {
    PlusOne,
    MinusSector,
    Double,
    Huge,
    Zero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeFault {
    /// tag = queue_depth + over
    TagOutOfRange {
        over: u32,
    },
    /// A tag below queue_depth that is not in flight.
    NotInFlight {
        pick: u32,
        op: u32,
    },
    WrongOp {
        pick: u32,
        shift: u32,
    },
    WrongLen {
        pick: u32,
        how: LenFault,
    },
    /// Neither 0 nor a negative errno.
    BadResult {
        pick: u32,
        result: i32,
    },
    /// The same (valid) answer twice in one call.
    Duplicate {
        pick: u32,
    },
    /// Up to `k` valid answers, then one for a tag out of range.
    PrefixThenBad {
        k: u32,
        over: u32,
    },
    TooManyCompletions {
        extra: u32,
    },
    TooManyRequests {
        extra: u32,
    },
    CompletionsPtr {
        ptr: BadPtr,
        n: u32,
    },
    /// Bad request array: the kernel may only notice when it has requests
    /// to write, so this one must not *succeed with requests*.
    RequestsPtr {
        ptr: BadPtr,
        n: u32,
    },
    /// A request in flight answered with a cookie other than its own (an
    /// earlier or a later fetch of the same tag, or any other number).
    StaleCookie {
        pick: u32,
        delta: u64,
    },
    /// An answer already applied, sent again: its tag may be in flight
    /// again by now, for another request with a newer cookie.
    Replay {
        pick: u32,
    },
    /// A tag in flight on the device's other queue.
    CrossQueue {
        pick: u32,
    },
    /// A tag in flight on the other served device.
    CrossDevice {
        pick: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFault {
    Abi(u32),
    Reserved {
        slot: usize,
        value: u32,
    },
    Flags(u32),
    IndexOutOfRange(u32),
    IndexTaken,
    NameTaken,
    NameNoNul,
    NameSlash,
    /// A name outside the usrbd prefix, which could squat another driver's.
    ForeignName(usize),
    Lbs(u32),
    Pbs {
        lbs: u32,
        pbs: u32,
    },
    Size {
        lbs: u32,
        size: u64,
    },
    QueuesZero,
    QueuesOver(u32),
    DepthZero,
    DepthOver(u32),
    MaxIo(u32),
    MaxIoOver(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexFault {
    /// Below max_devices, but no device has it.
    NoDevice(u32),
    /// max_devices + n
    OutOfRange(u32),
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyFault {
    Flags(u32),
    Reserved(u32),
    Index(IndexFault),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachFault {
    /// Flags with at least one unknown bit.
    Flags(u32),
    /// USRBD_ATTACH_LINEAR with a buffer shorter than the device.
    LinearShort(u32),
    Reserved(u32),
    Index(IndexFault),
    Queue(u32),
    BufNull,
    BufKernel,
    BufNonCanonical,
    BufShort(u32),
    BufZeroLen,
    /// buf_addr this many bytes below 2^64 (1 ..= the size needed, maybe
    /// linear): buf_addr + need wraps, which a 32-bit kernel's pointer
    /// arithmetic would not notice.
    BufWraps {
        below_top: u64,
        linear: bool,
    },
    /// A queue already served by the fuzzer.
    Busy,
    /// The same free queue twice.
    Twice,
}

/// A correct answer made stale by what happened to its fetch since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleAnswer {
    /// The server fd was closed and the queue attached again: the old
    /// answer on the new fd, before and after the request is fetched again.
    AfterReattach { offset: u32 },
    /// The request timed out while held: the answer on the unbound fd, and
    /// on a new one.
    AfterTimeout { offset: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidOp {
    Version,
    List,
    Status(u32),
    AttachClose,
    CreateDestroy,
    Fetch(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// A real ioctl number with another direction or size.
    WrongNumber {
        ioctl: usize,
        dir: u32,
        size: u32,
    },
    /// Our magic with a number the module does not define.
    UnknownNumber {
        nr: u32,
        dir: u32,
        size: u32,
    },
    /// Any other number, on the control fd or a server fd.
    ForeignNumber {
        number: u32,
        on_server: bool,
    },
    ServeOnControl,
    /// A control ioctl on a server fd.
    ControlOnServer {
        ioctl: usize,
        queue: u32,
    },
    Create(CreateFault),
    Destroy(DestroyFault),
    Status(IndexFault),
    Attach(AttachFault),
    /// A real ioctl whose argument pointer is bad.
    ArgPointer {
        ioctl: usize,
        ptr: BadPtr,
        queue: u32,
    },
    Serve {
        target: u32,
        fault: ServeFault,
    },
    /// Random bytes for a struct, with one field forced out of range.
    RandomStruct {
        ioctl: usize,
        seed: u64,
    },
    /// On device E, which nothing else serves.
    Stale(StaleAnswer),
    Valid(ValidOp),
}

impl Case {
    /// The family a case belongs to, for coverage checks.
    pub fn family(&self) -> &'static str {
        match self {
            Case::WrongNumber { .. } => "wrong-number",
            Case::UnknownNumber { .. } => "unknown-number",
            Case::ForeignNumber { .. } => "foreign-number",
            Case::ServeOnControl => "serve-on-control",
            Case::ControlOnServer { .. } => "control-on-server",
            Case::Create(_) => "create",
            Case::Destroy(_) => "destroy",
            Case::Status(_) => "status",
            Case::Attach(_) => "attach",
            Case::ArgPointer { .. } => "arg-pointer",
            Case::Serve { .. } => "serve",
            Case::RandomStruct { .. } => "random-struct",
            Case::Stale(_) => "stale-answer",
            Case::Valid(_) => "valid",
        }
    }
}

/// The first `n` cases for `seed`.
pub fn generate(seed: u64, n: usize) -> Vec<Case> {
    let mut rng = Rng::with_seed(seed);
    (0..n).map(|_| case(&mut rng)).collect()
}

fn case(rng: &mut Rng) -> Case {
    match rng.u32(0..100) {
        0..=4 => wrong_number(rng),
        5..=8 => {
            let nr = loop {
                let nr = rng.u32(0..256);
                if !REAL_NRS.contains(&nr) {
                    break nr;
                }
            };
            Case::UnknownNumber {
                nr,
                dir: rng.u32(0..4),
                size: rng.u32(0..4096),
            }
        }
        9..=11 => {
            let number = loop {
                let n = rng.u32(..);
                if !NOT_FOREIGN.contains(&((n >> 8) & 0xff)) {
                    break n;
                }
            };
            Case::ForeignNumber {
                number,
                on_server: rng.bool(),
            }
        }
        12..=13 => Case::ServeOnControl,
        14..=15 => Case::ControlOnServer {
            ioctl: rng.usize(0..SERVE),
            queue: rng.u32(..),
        },
        16..=27 => Case::Create(create_fault(rng)),
        28..=32 => Case::Destroy(match rng.u32(0..3) {
            0 => DestroyFault::Flags(1 << rng.u32(1..32)),
            1 => DestroyFault::Reserved(nonzero(rng)),
            _ => DestroyFault::Index(index_fault(rng)),
        }),
        33..=35 => Case::Status(index_fault(rng)),
        36..=45 => Case::Attach(attach_fault(rng)),
        46..=53 => Case::ArgPointer {
            ioctl: rng.usize(0..REAL_COUNT),
            ptr: bad_ptr(rng),
            queue: rng.u32(..),
        },
        54..=83 => Case::Serve {
            target: rng.u32(..),
            fault: serve_fault(rng),
        },
        84..=89 => Case::RandomStruct {
            ioctl: [CREATE, DESTROY, STATUS, ATTACH, SERVE][rng.usize(0..5)],
            seed: rng.u64(..),
        },
        // A timeout takes 1-2 s: the rig runs only a few (Rig::stale).
        90 => Case::Stale(if rng.u32(0..5) == 0 {
            StaleAnswer::AfterTimeout {
                offset: rng.u32(..),
            }
        } else {
            StaleAnswer::AfterReattach {
                offset: rng.u32(..),
            }
        }),
        // Adding a disk is slow (tens of ms under emulation): rarely.
        _ => Case::Valid(match rng.u32(0..100) {
            0..=9 => ValidOp::Version,
            10..=24 => ValidOp::List,
            25..=44 => ValidOp::Status(rng.u32(..)),
            45..=57 => ValidOp::AttachClose,
            58..=59 => ValidOp::CreateDestroy,
            _ => ValidOp::Fetch(rng.u32(..)),
        }),
    }
}

fn nonzero(rng: &mut Rng) -> u32 {
    rng.u32(1..)
}

fn wrong_number(rng: &mut Rng) -> Case {
    let ioctl = rng.usize(0..REAL_COUNT);
    let real = super::rig::REAL[ioctl].1;
    let (dir, size) = (real >> 30, (real >> 16) & 0x3fff);
    loop {
        let d = if rng.bool() { rng.u32(0..4) } else { dir };
        let s = match rng.u32(0..4) {
            0 => size,
            1 => size.saturating_sub(rng.u32(1..=8)),
            2 => (size + rng.u32(1..=8)).min(0x3fff),
            _ => rng.u32(0..0x4000),
        };
        if (d, s) != (dir, size) {
            return Case::WrongNumber {
                ioctl,
                dir: d,
                size: s,
            };
        }
    }
}

fn index_fault(rng: &mut Rng) -> IndexFault {
    match rng.u32(0..3) {
        0 => IndexFault::NoDevice(rng.u32(..)),
        1 => IndexFault::OutOfRange(rng.u32(0..1 << 20)),
        _ => IndexFault::Auto,
    }
}

fn bad_ptr(rng: &mut Rng) -> BadPtr {
    [
        BadPtr::Null,
        BadPtr::Inaccessible,
        BadPtr::Straddle,
        BadPtr::Kernel,
        BadPtr::NonCanonical,
    ][rng.usize(0..5)]
}

fn create_fault(rng: &mut Rng) -> CreateFault {
    match rng.u32(0..17) {
        0 => CreateFault::Abi(match rng.u32(0..4) {
            0 => 0,
            // The ABI before this one (no cookies) is refused too.
            1 => uapi::USRBD_ABI_VERSION - 1,
            2 => uapi::USRBD_ABI_VERSION + 1,
            _ => rng.u32(uapi::USRBD_ABI_VERSION + 1..),
        }),
        1 => CreateFault::Reserved {
            slot: rng.usize(0..5),
            value: nonzero(rng),
        },
        2 => CreateFault::Flags(1 << rng.u32(5..32)),
        3 => CreateFault::IndexOutOfRange(rng.u32(0..1 << 20)),
        4 => CreateFault::IndexTaken,
        5 => CreateFault::NameTaken,
        6 => CreateFault::NameNoNul,
        7 if rng.bool() => CreateFault::NameSlash,
        7 => CreateFault::ForeignName(rng.usize(..)),
        8 => CreateFault::Lbs(
            [0, 1, 256, 511, 513, 768, 3000, 8192, 65536, u32::MAX][rng.usize(0..10)],
        ),
        9 => {
            let (lbs, pbs) = [
                (4096, 512),
                (2048, 1024),
                (1024, 512),
                (512, 1536),
                (512, 3072),
                (512, 8192),
                (4096, 65536),
                (512, 0),
            ][rng.usize(0..8)];
            CreateFault::Pbs { lbs, pbs }
        }
        10 => {
            let k = rng.u64(1..1 << 16);
            let (lbs, size) = match rng.u32(0..5) {
                0 => (512, 0),
                1 => (512, k * 512 + rng.u64(1..512)),
                2 => (4096, k * 4096 + 512 * rng.u64(1..8)),
                3 => (512, u64::MAX),
                _ => (512, 1 << 63),
            };
            CreateFault::Size { lbs, size }
        }
        11 => CreateFault::QueuesZero,
        12 => CreateFault::QueuesOver(rng.u32(..)),
        13 => CreateFault::DepthZero,
        14 => CreateFault::DepthOver(rng.u32(..)),
        15 => CreateFault::MaxIo([0, 512, 4095, 4097, 6144, 12288 + 512][rng.usize(0..6)]),
        _ => CreateFault::MaxIoOver(rng.u32(..)),
    }
}

fn attach_fault(rng: &mut Rng) -> AttachFault {
    match rng.u32(0..13) {
        0 => AttachFault::Flags(rng.u32(..) | 1 << rng.u32(1..32)),
        11 => AttachFault::LinearShort(rng.u32(..)),
        12 => AttachFault::BufWraps {
            below_top: rng.u64(..),
            linear: rng.bool(),
        },
        1 => AttachFault::Reserved(nonzero(rng)),
        2 => AttachFault::Index(index_fault(rng)),
        3 => AttachFault::Queue(rng.u32(..)),
        4 => AttachFault::BufNull,
        5 => AttachFault::BufKernel,
        6 => AttachFault::BufNonCanonical,
        7 => AttachFault::BufShort(rng.u32(..)),
        8 => AttachFault::BufZeroLen,
        9 => AttachFault::Busy,
        _ => AttachFault::Twice,
    }
}

fn serve_fault(rng: &mut Rng) -> ServeFault {
    let pick = rng.u32(..);
    match rng.u32(0..15) {
        0 => ServeFault::TagOutOfRange {
            over: [0, 1, rng.u32(..)][rng.usize(0..3)],
        },
        1 => ServeFault::NotInFlight {
            pick,
            op: rng.u32(0..5),
        },
        2 => ServeFault::WrongOp {
            pick,
            shift: rng.u32(..),
        },
        3 => ServeFault::WrongLen {
            pick,
            how: [
                LenFault::PlusOne,
                LenFault::MinusSector,
                LenFault::Double,
                LenFault::Huge,
                LenFault::Zero,
            ][rng.usize(0..5)],
        },
        4 => ServeFault::BadResult {
            pick,
            result: if rng.bool() {
                rng.i32(1..)
            } else {
                rng.i32(i32::MIN..-4095)
            },
        },
        5 => ServeFault::Duplicate { pick },
        6 => ServeFault::PrefixThenBad {
            k: rng.u32(1..8),
            over: rng.u32(0..1000),
        },
        7 => ServeFault::TooManyCompletions {
            extra: rng.u32(0..1024),
        },
        8 => ServeFault::TooManyRequests {
            extra: rng.u32(0..1024),
        },
        9 => ServeFault::CompletionsPtr {
            ptr: bad_ptr(rng),
            n: rng.u32(1..4),
        },
        10 => ServeFault::RequestsPtr {
            ptr: bad_ptr(rng),
            n: rng.u32(1..8),
        },
        11 => ServeFault::CrossQueue { pick },
        12 => ServeFault::StaleCookie {
            pick,
            delta: [1, u64::MAX, rng.u64(2..1 << 20), rng.u64(..)][rng.usize(0..4)],
        },
        13 => ServeFault::Replay { pick },
        _ => ServeFault::CrossDevice { pick },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn same_seed_same_cases() {
        assert_eq!(generate(42, 5000), generate(42, 5000));
        assert_ne!(generate(42, 200), generate(43, 200));
    }

    #[test]
    fn every_family_and_serve_fault_is_drawn() {
        let cases = generate(7, 20_000);
        let families: BTreeSet<_> = cases.iter().map(|c| c.family()).collect();
        assert_eq!(families.len(), 14, "{families:?}");
        let serve: std::collections::HashSet<_> = cases
            .iter()
            .filter_map(|c| match c {
                Case::Serve { fault, .. } => Some(std::mem::discriminant(fault)),
                _ => None,
            })
            .collect();
        assert_eq!(serve.len(), 15);
    }

    #[test]
    fn numbers_are_really_wrong() {
        for c in generate(3, 20_000) {
            match c {
                Case::WrongNumber { ioctl, dir, size } => {
                    let n = super::super::rig::ioc(dir, REAL_NRS[ioctl], size);
                    assert!(super::super::rig::REAL.iter().all(|r| r.1 != n), "{c:?}");
                }
                Case::UnknownNumber { nr, .. } => assert!(!REAL_NRS.contains(&nr)),
                Case::ForeignNumber { number, .. } => {
                    assert!(!NOT_FOREIGN.contains(&((number >> 8) & 0xff)))
                }
                _ => {}
            }
        }
    }
}
