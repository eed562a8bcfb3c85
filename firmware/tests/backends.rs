//! Each backend against a plain in-memory model over random sequences of write,
//! read, discard, write_zeroes and flush; plus the RAM image's save/load and the
//! sparseness both backends promise.

use std::os::unix::fs::MetadataExt;

use proptest::prelude::*;
use usrbd::backend::file::FileBackend;
use usrbd::backend::ram::RamBackend;
use usrbd::backend::Backend;

const SIZE: u64 = 256 * 1024;
const SECTOR: u64 = 512;

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: u64, seed: u8 },
    Read { off: u64, len: u64 },
    Discard { off: u64, len: u64 },
    WriteZeroes { off: u64, len: u64, unmap: bool },
    Flush,
}

/// A sector-aligned range inside the device, up to 40 sectors long.
fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE / SECTOR, 1u64..=40).prop_map(|(s, n)| {
        let n = n.min(SIZE / SECTOR - s);
        (s * SECTOR, n * SECTOR)
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (range(), any::<u8>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        3 => range().prop_map(|(off, len)| Op::Read { off, len }),
        1 => range().prop_map(|(off, len)| Op::Discard { off, len }),
        1 => (range(), any::<bool>()).prop_map(|((off, len), unmap)| Op::WriteZeroes { off, len, unmap }),
        1 => Just(Op::Flush),
    ]
}

/// Data for a write; seed 0 writes zeros (exercising the RAM backend's release
/// of zero pages), other seeds a pattern that differs per byte and per write.
fn data(off: u64, len: u64, seed: u8) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len as usize];
    }
    (0..len)
        .map(|i| {
            (((off + i) as u8) ^ seed)
                .wrapping_mul(31)
                .wrapping_add(seed)
        })
        .collect()
}

fn check(b: &dyn Backend, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = vec![0u8; SIZE as usize];
    for op in ops {
        match *op {
            Op::Write { off, len, seed } => {
                let d = data(off, len, seed);
                b.write(off, &d).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&d);
            }
            Op::Read { off, len } => {
                let mut got = vec![0xAA; len as usize];
                b.read(off, &mut got).unwrap();
                prop_assert!(
                    got == model[off as usize..(off + len) as usize],
                    "read {len} bytes at {off} differs from the model"
                );
            }
            Op::Discard { off, len } => {
                b.discard(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::WriteZeroes { off, len, unmap } => {
                b.write_zeroes(off, len, unmap).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Flush => b.flush().unwrap(),
        }
    }
    let mut all = vec![0xAA; SIZE as usize];
    b.read(0, &mut all).unwrap();
    prop_assert!(all == model, "final contents differ from the model");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ram_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let b = RamBackend::open(Some(SIZE), None, 512).unwrap();
        check(&b, &ops)?;
    }

    #[test]
    fn file_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open(&dir.path().join("disk.img"), Some(SIZE), 512, false, false).unwrap();
        check(&b, &ops)?;
    }

    #[test]
    fn ram_image_survives_save_and_load(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ram.img");
        let b = RamBackend::open(Some(SIZE), Some(&img), 512).unwrap();
        check(&b, &ops)?;
        let mut before = vec![0; SIZE as usize];
        b.read(0, &mut before).unwrap();
        b.finish().unwrap();
        drop(b);
        let c = RamBackend::open(None, Some(&img), 512).unwrap();
        prop_assert_eq!(c.size(), SIZE);
        let mut after = vec![0xAA; SIZE as usize];
        c.read(0, &mut after).unwrap();
        prop_assert!(before == after, "image contents changed across save/load");
    }
}

#[test]
fn out_of_range_requests_are_refused() {
    let b = RamBackend::open(Some(SIZE), None, 512).unwrap();
    let mut buf = [0u8; 1024];
    assert_eq!(
        b.read(SIZE - 512, &mut buf).unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    assert!(b.discard(u64::MAX - 10, 512).is_err());
}

#[test]
fn ram_discard_frees_memory() {
    let size = 16 << 20;
    let b = RamBackend::open(Some(size), None, 512).unwrap();
    let before = b.used_bytes();
    let chunk = vec![0x5Au8; 1 << 20];
    for i in 0..16 {
        b.write(i << 20, &chunk).unwrap();
    }
    let full = b.used_bytes();
    assert!(
        full >= before + (15 << 20),
        "16 MiB written, used {before} -> {full}"
    );
    b.discard(0, size).unwrap();
    let after = b.used_bytes();
    assert!(
        after + (15 << 20) <= full,
        "discard freed too little: {full} -> {after}"
    );
    // Written zeros are not stored either.
    b.write(0, &vec![0u8; 1 << 20]).unwrap();
    assert!(b.used_bytes() <= after + 4096);
}

#[test]
fn ram_image_is_saved_sparse_and_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sparse.img");
    let size = 64 << 20;
    let b = RamBackend::open(Some(size), Some(&img), 512).unwrap();
    b.write(32 << 20, &[7u8; 4096]).unwrap();
    b.finish().unwrap();
    let m = std::fs::metadata(&img).unwrap();
    assert_eq!(m.len(), size);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "64 MiB image with one page uses {} bytes",
        m.blocks() * 512
    );
    // Only the image remains: the temporary file was renamed over it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("sparse.img")]);
    let c = RamBackend::open(None, Some(&img), 512).unwrap();
    let mut p = [0u8; 4096];
    c.read(32 << 20, &mut p).unwrap();
    assert!(p.iter().all(|x| *x == 7));
}

#[test]
fn ram_image_larger_than_the_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    assert!(RamBackend::open(Some(1 << 20), Some(&img), 512).is_err());
}

#[test]
fn file_backend_creates_sparse_and_punches_holes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    assert!(
        FileBackend::open(&path, None, 512, false, false).is_err(),
        "size is required for a new file"
    );
    let b = FileBackend::open(&path, Some(8 << 20), 512, false, false).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
    b.write(0, &vec![1u8; 4 << 20]).unwrap();
    b.flush().unwrap();
    let full = b.used_bytes();
    assert!(full >= 4 << 20);
    b.discard(0, 4 << 20).unwrap();
    assert!(b.used_bytes() < full, "punching a hole freed nothing");
    b.finish().unwrap();
    drop(b);
    // Reopened without a size, it keeps the file's.
    let c = FileBackend::open(&path, None, 512, false, false).unwrap();
    assert_eq!(c.size(), 8 << 20);
}

#[test]
fn ram_open_removes_stale_temporaries_of_killed_saves() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ram.img");
    let stale = dir.path().join(".ram.img.tmp-424242");
    let other = dir.path().join(".other.img.tmp-1");
    std::fs::write(&stale, b"half a save").unwrap();
    std::fs::write(&other, b"not ours").unwrap();
    let _b = RamBackend::open(Some(SIZE), Some(&img), 512).unwrap();
    assert!(!stale.exists(), "the stale temporary image is still there");
    assert!(other.exists(), "another image's temporary was removed");
}
