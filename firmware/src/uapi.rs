//! Raw mirror of `kmod/include/uapi/linux/usrbd.h`, the user/kernel contract.
//!
//! Field for field and constant for constant the same as the C header; nothing here
//! is safe API (that is [`crate::device`]). The tables [`LAYOUT`] and [`IOCTLS`] hold
//! what the header says; `const` assertions below prove that the structs of every
//! target this crate is compiled for match them, and `tests/layout.rs` compiles the
//! header with the host and cross C compilers and compares against the same tables.

#![allow(non_camel_case_types)]

use std::os::raw::c_char;

pub const USRBD_ABI_VERSION: u32 = 2;
pub const USRBD_CONTROL_NAME: &str = "usrbd-control";
pub const USRBD_IOCTL_MAGIC: u8 = 0xBD;

pub const USRBD_MAX_DEVICES: usize = 256;
pub const USRBD_NAME_LEN: usize = 32;
pub const USRBD_MAX_QUEUES: u32 = 64;
pub const USRBD_MAX_QUEUE_DEPTH: u32 = 1024;
pub const USRBD_MAX_IO_BYTES: u32 = 1 << 20;
pub const USRBD_MAX_BATCH: u32 = 1024;

pub const USRBD_INDEX_AUTO: u32 = 0xffff_ffff;
pub const USRBD_WAIT_FOREVER: u32 = 0xffff_ffff;

pub const USRBD_F_FLUSH: u32 = 1 << 0;
pub const USRBD_F_FUA: u32 = 1 << 1;
pub const USRBD_F_DISCARD: u32 = 1 << 2;
pub const USRBD_F_WRITE_ZEROES: u32 = 1 << 3;
pub const USRBD_F_READ_ONLY: u32 = 1 << 4;
pub const USRBD_F_ALL: u32 =
    USRBD_F_FLUSH | USRBD_F_FUA | USRBD_F_DISCARD | USRBD_F_WRITE_ZEROES | USRBD_F_READ_ONLY;

pub const USRBD_OP_READ: u32 = 0;
pub const USRBD_OP_WRITE: u32 = 1;
pub const USRBD_OP_FLUSH: u32 = 2;
pub const USRBD_OP_DISCARD: u32 = 3;
pub const USRBD_OP_WRITE_ZEROES: u32 = 4;
pub const USRBD_OP_COUNT: usize = 5;

pub const USRBD_REQ_FUA: u32 = 1 << 0;
pub const USRBD_REQ_NOUNMAP: u32 = 1 << 1;

pub const USRBD_STATE_WAITING: u32 = 0;
pub const USRBD_STATE_LIVE: u32 = 1;
pub const USRBD_STATE_DRAINING: u32 = 2;
pub const USRBD_STATE_DEAD: u32 = 3;

pub const USRBD_DESTROY_FORCE: u32 = 1 << 0;

pub const USRBD_ATTACH_LINEAR: u32 = 1 << 0;

pub const USRBD_EV_GONE: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_version {
    pub abi_version: u32,
    pub features: u32,
    pub max_devices: u32,
    pub max_queues: u32,
    pub max_queue_depth: u32,
    pub max_io_bytes: u32,
    pub max_batch: u32,
    pub attach_flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_create {
    pub abi_version: u32,
    pub index: u32,
    pub name: [c_char; USRBD_NAME_LEN],
    pub size: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub nr_queues: u32,
    pub queue_depth: u32,
    pub max_io_bytes: u32,
    pub timeout_ms: u32,
    pub flags: u32,
    pub reserved: [u32; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_destroy {
    pub index: u32,
    pub flags: u32,
    pub timeout_ms: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct usrbd_list {
    pub count: u32,
    pub reserved: u32,
    pub index: [u32; USRBD_MAX_DEVICES],
}

impl Default for usrbd_list {
    fn default() -> Self {
        usrbd_list {
            count: 0,
            reserved: 0,
            index: [0; USRBD_MAX_DEVICES],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_op_stats {
    pub submitted: u64,
    pub completed: u64,
    pub errors: u64,
    pub bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_status {
    pub index: u32,
    pub state: u32,
    pub name: [c_char; USRBD_NAME_LEN],
    pub size: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub nr_queues: u32,
    pub queue_depth: u32,
    pub max_io_bytes: u32,
    pub timeout_ms: u32,
    pub flags: u32,
    pub openers: u32,
    pub servers: u32,
    pub queued: u32,
    pub inflight: u32,
    pub reserved: u32,
    pub timeouts: u64,
    pub rejected: u64,
    pub ops: [usrbd_op_stats; USRBD_OP_COUNT],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_attach {
    pub index: u32,
    pub queue: u32,
    pub buf_addr: u64,
    pub buf_len: u64,
    pub flags: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_request {
    pub tag: u32,
    pub op: u32,
    pub flags: u32,
    pub len: u32,
    pub offset: u64,
    pub cookie: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_completion {
    pub tag: u32,
    pub op: u32,
    pub result: i32,
    pub len: u32,
    pub cookie: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct usrbd_serve {
    pub completions: u64,
    pub requests: u64,
    pub nr_completions: u32,
    pub max_requests: u32,
    pub wait_ms: u32,
    pub nr_completed: u32,
    pub nr_requests: u32,
    pub events: u32,
}

// The header's 64-bit fields are `__aligned_u64`, 8-byte aligned even on i386 and
// armhf ABIs where a bare u64 may be 4-aligned; Rust's u64 is 8-aligned on every
// target this crate supports, which the const assertions below prove per target.

nix::ioctl_read!(usrbd_ioc_version, USRBD_IOCTL_MAGIC, 0x00, usrbd_version);
nix::ioctl_readwrite!(usrbd_ioc_create, USRBD_IOCTL_MAGIC, 0x01, usrbd_create);
nix::ioctl_write_ptr!(usrbd_ioc_destroy, USRBD_IOCTL_MAGIC, 0x02, usrbd_destroy);
nix::ioctl_read!(usrbd_ioc_list, USRBD_IOCTL_MAGIC, 0x03, usrbd_list);
nix::ioctl_readwrite!(usrbd_ioc_status, USRBD_IOCTL_MAGIC, 0x04, usrbd_status);
// Returns the new server fd as the ioctl's return value.
nix::ioctl_write_ptr!(usrbd_ioc_attach, USRBD_IOCTL_MAGIC, 0x05, usrbd_attach);
nix::ioctl_readwrite!(usrbd_ioc_serve, USRBD_IOCTL_MAGIC, 0x10, usrbd_serve);

/// Offset of a field, computed in a const context (`core::mem::offset_of!` needs
/// Rust 1.77; the workspace supports 1.75).
#[macro_export]
macro_rules! usrbd_field_offset {
    ($t:ty, $f:ident) => {{
        let u = ::core::mem::MaybeUninit::<$t>::uninit();
        let base = u.as_ptr();
        // SAFETY: only the address of the field is taken; nothing is read.
        let field = unsafe { ::core::ptr::addr_of!((*base).$f) };
        // SAFETY: both pointers are inside the same allocation.
        (unsafe { (field as *const u8).offset_from(base as *const u8) }) as usize
    }};
}

/// Size of a field, computed in a const context.
#[macro_export]
macro_rules! usrbd_field_size {
    ($t:ty, $f:ident) => {{
        const fn size_of_pointee<T>(_: *const T) -> usize {
            ::core::mem::size_of::<T>()
        }
        let u = ::core::mem::MaybeUninit::<$t>::uninit();
        let base = u.as_ptr();
        // SAFETY: only the address of the field is taken; nothing is read.
        size_of_pointee(unsafe { ::core::ptr::addr_of!((*base).$f) })
    }};
}

/// One row of the expected layout: struct, field (`""` for the struct itself),
/// offset and size in bytes, as the C header defines them on every supported ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    pub st: &'static str,
    pub field: &'static str,
    pub offset: usize,
    pub size: usize,
}

const fn row(st: &'static str, field: &'static str, offset: usize, size: usize) -> FieldLayout {
    FieldLayout {
        st,
        field,
        offset,
        size,
    }
}

/// Defines [`LAYOUT`] from one list and asserts each row against the Rust structs at
/// compile time, so the table and the structs cannot drift apart on any target.
macro_rules! layout_table {
    ($( $st:ident { size: $ssz:expr, $( $f:ident: $off:expr, $fsz:expr; )* } )*) => {
        /// The expected layout of every struct and field in the header.
        pub const LAYOUT: &[FieldLayout] = &[
            $(
                row(stringify!($st), "", 0, $ssz),
                $( row(stringify!($st), stringify!($f), $off, $fsz), )*
            )*
        ];
        $(
            const _: () = assert!(::core::mem::size_of::<$st>() == $ssz);
            const _: () = assert!(::core::mem::align_of::<$st>() <= 8);
            $(
                const _: () = assert!(usrbd_field_offset!($st, $f) == $off);
                const _: () = assert!(usrbd_field_size!($st, $f) == $fsz);
            )*
        )*
    };
}

layout_table! {
    usrbd_version { size: 32,
        abi_version: 0, 4; features: 4, 4; max_devices: 8, 4; max_queues: 12, 4;
        max_queue_depth: 16, 4; max_io_bytes: 20, 4; max_batch: 24, 4; attach_flags: 28, 4;
    }
    usrbd_create { size: 96,
        abi_version: 0, 4; index: 4, 4; name: 8, 32; size: 40, 8;
        logical_block_size: 48, 4; physical_block_size: 52, 4; nr_queues: 56, 4;
        queue_depth: 60, 4; max_io_bytes: 64, 4; timeout_ms: 68, 4; flags: 72, 4;
        reserved: 76, 20;
    }
    usrbd_destroy { size: 16,
        index: 0, 4; flags: 4, 4; timeout_ms: 8, 4; reserved: 12, 4;
    }
    usrbd_list { size: 1032,
        count: 0, 4; reserved: 4, 4; index: 8, 1024;
    }
    usrbd_op_stats { size: 32,
        submitted: 0, 8; completed: 8, 8; errors: 16, 8; bytes: 24, 8;
    }
    usrbd_status { size: 272,
        index: 0, 4; state: 4, 4; name: 8, 32; size: 40, 8;
        logical_block_size: 48, 4; physical_block_size: 52, 4; nr_queues: 56, 4;
        queue_depth: 60, 4; max_io_bytes: 64, 4; timeout_ms: 68, 4; flags: 72, 4;
        openers: 76, 4; servers: 80, 4; queued: 84, 4; inflight: 88, 4; reserved: 92, 4;
        timeouts: 96, 8; rejected: 104, 8; ops: 112, 160;
    }
    usrbd_attach { size: 32,
        index: 0, 4; queue: 4, 4; buf_addr: 8, 8; buf_len: 16, 8; flags: 24, 4;
        reserved: 28, 4;
    }
    usrbd_request { size: 32,
        tag: 0, 4; op: 4, 4; flags: 8, 4; len: 12, 4; offset: 16, 8; cookie: 24, 8;
    }
    usrbd_completion { size: 24,
        tag: 0, 4; op: 4, 4; result: 8, 4; len: 12, 4; cookie: 16, 8;
    }
    usrbd_serve { size: 40,
        completions: 0, 8; requests: 8, 8; nr_completions: 16, 4; max_requests: 20, 4;
        wait_ms: 24, 4; nr_completed: 28, 4; nr_requests: 32, 4; events: 36, 4;
    }
}

/// `_IOC` as `<asm-generic/ioctl.h>` encodes it (x86, arm and arm64 share it).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((USRBD_IOCTL_MAGIC as u32) << 8) | nr
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// The ioctl numbers, by their C macro names, as the header computes them.
pub const IOCTLS: &[(&str, u32)] = &[
    ("USRBD_IOC_VERSION", ioc(IOC_READ, 0x00, 32)),
    ("USRBD_IOC_CREATE", ioc(IOC_READ | IOC_WRITE, 0x01, 96)),
    ("USRBD_IOC_DESTROY", ioc(IOC_WRITE, 0x02, 16)),
    ("USRBD_IOC_LIST", ioc(IOC_READ, 0x03, 1032)),
    ("USRBD_IOC_STATUS", ioc(IOC_READ | IOC_WRITE, 0x04, 272)),
    ("USRBD_IOC_ATTACH", ioc(IOC_WRITE, 0x05, 32)),
    ("USRBD_IOC_SERVE", ioc(IOC_READ | IOC_WRITE, 0x10, 40)),
];

// The numbers nix computes for the wrappers above equal the table.
const _: () = assert!(
    nix::request_code_read!(
        USRBD_IOCTL_MAGIC,
        0x00,
        core::mem::size_of::<usrbd_version>()
    ) as u32
        == IOCTLS[0].1
);
const _: () = assert!(
    nix::request_code_readwrite!(
        USRBD_IOCTL_MAGIC,
        0x01,
        core::mem::size_of::<usrbd_create>()
    ) as u32
        == IOCTLS[1].1
);
const _: () = assert!(
    nix::request_code_write!(
        USRBD_IOCTL_MAGIC,
        0x02,
        core::mem::size_of::<usrbd_destroy>()
    ) as u32
        == IOCTLS[2].1
);
const _: () = assert!(
    nix::request_code_read!(USRBD_IOCTL_MAGIC, 0x03, core::mem::size_of::<usrbd_list>()) as u32
        == IOCTLS[3].1
);
const _: () = assert!(
    nix::request_code_readwrite!(
        USRBD_IOCTL_MAGIC,
        0x04,
        core::mem::size_of::<usrbd_status>()
    ) as u32
        == IOCTLS[4].1
);
const _: () = assert!(
    nix::request_code_write!(
        USRBD_IOCTL_MAGIC,
        0x05,
        core::mem::size_of::<usrbd_attach>()
    ) as u32
        == IOCTLS[5].1
);
const _: () = assert!(
    nix::request_code_readwrite!(USRBD_IOCTL_MAGIC, 0x10, core::mem::size_of::<usrbd_serve>())
        as u32
        == IOCTLS[6].1
);

/// The plain constants, by their C macro names (checked against the header too).
pub const CONSTANTS: &[(&str, u64)] = &[
    ("USRBD_ABI_VERSION", USRBD_ABI_VERSION as u64),
    ("USRBD_IOCTL_MAGIC", USRBD_IOCTL_MAGIC as u64),
    ("USRBD_MAX_DEVICES", USRBD_MAX_DEVICES as u64),
    ("USRBD_NAME_LEN", USRBD_NAME_LEN as u64),
    ("USRBD_MAX_QUEUES", USRBD_MAX_QUEUES as u64),
    ("USRBD_MAX_QUEUE_DEPTH", USRBD_MAX_QUEUE_DEPTH as u64),
    ("USRBD_MAX_IO_BYTES", USRBD_MAX_IO_BYTES as u64),
    ("USRBD_MAX_BATCH", USRBD_MAX_BATCH as u64),
    ("USRBD_INDEX_AUTO", USRBD_INDEX_AUTO as u64),
    ("USRBD_WAIT_FOREVER", USRBD_WAIT_FOREVER as u64),
    ("USRBD_F_FLUSH", USRBD_F_FLUSH as u64),
    ("USRBD_F_FUA", USRBD_F_FUA as u64),
    ("USRBD_F_DISCARD", USRBD_F_DISCARD as u64),
    ("USRBD_F_WRITE_ZEROES", USRBD_F_WRITE_ZEROES as u64),
    ("USRBD_F_READ_ONLY", USRBD_F_READ_ONLY as u64),
    ("USRBD_F_ALL", USRBD_F_ALL as u64),
    ("USRBD_OP_READ", USRBD_OP_READ as u64),
    ("USRBD_OP_WRITE", USRBD_OP_WRITE as u64),
    ("USRBD_OP_FLUSH", USRBD_OP_FLUSH as u64),
    ("USRBD_OP_DISCARD", USRBD_OP_DISCARD as u64),
    ("USRBD_OP_WRITE_ZEROES", USRBD_OP_WRITE_ZEROES as u64),
    ("USRBD_OP_COUNT", USRBD_OP_COUNT as u64),
    ("USRBD_REQ_FUA", USRBD_REQ_FUA as u64),
    ("USRBD_REQ_NOUNMAP", USRBD_REQ_NOUNMAP as u64),
    ("USRBD_STATE_WAITING", USRBD_STATE_WAITING as u64),
    ("USRBD_STATE_LIVE", USRBD_STATE_LIVE as u64),
    ("USRBD_STATE_DRAINING", USRBD_STATE_DRAINING as u64),
    ("USRBD_STATE_DEAD", USRBD_STATE_DEAD as u64),
    ("USRBD_DESTROY_FORCE", USRBD_DESTROY_FORCE as u64),
    ("USRBD_ATTACH_LINEAR", USRBD_ATTACH_LINEAR as u64),
    ("USRBD_EV_GONE", USRBD_EV_GONE as u64),
];

/// Copies `s` into a NUL-terminated C name field; `None` if it does not fit.
// c_char is i8 on x86 and u8 on arm: the casts are no-ops on some targets only.
#[allow(clippy::unnecessary_cast)]
pub fn name_to_c(s: &str) -> Option<[c_char; USRBD_NAME_LEN]> {
    let bytes = s.as_bytes();
    if bytes.len() >= USRBD_NAME_LEN || bytes.contains(&0) {
        return None;
    }
    let mut out = [0 as c_char; USRBD_NAME_LEN];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b as c_char;
    }
    Some(out)
}

/// The string in a C name field, up to the first NUL.
#[allow(clippy::unnecessary_cast)]
pub fn name_from_c(name: &[c_char; USRBD_NAME_LEN]) -> String {
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_overlong() {
        let c = name_to_c("usrbd0").unwrap();
        assert_eq!(name_from_c(&c), "usrbd0");
        assert!(name_to_c(&"x".repeat(USRBD_NAME_LEN)).is_none());
        assert!(name_to_c(&"x".repeat(USRBD_NAME_LEN - 1)).is_some());
        assert!(name_to_c("a\0b").is_none());
    }

    #[test]
    fn layout_rows_cover_every_struct_size() {
        let sizes: Vec<_> = LAYOUT.iter().filter(|r| r.field.is_empty()).collect();
        assert_eq!(sizes.len(), 10);
        assert!(LAYOUT
            .iter()
            .any(|r| r.st == "usrbd_status" && r.field == "ops" && r.offset == 112));
    }
}
