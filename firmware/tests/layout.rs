//! The Rust mirror (`usrbd::uapi`) against the C header, per ABI.
//!
//! A generated C file includes `kmod/include/uapi/linux/usrbd.h` and stores every
//! offset, size, ioctl number and constant in an integer global; each compiler turns
//! it into assembly (`-S`) and the values are read back from the `.long`/`.word`
//! directives. The Rust side of each target is proven by the `const` assertions in
//! `uapi.rs` (`cargo check --target ...`); this test proves the C side agrees with the
//! same tables. A target whose cross compiler is missing is reported and skipped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use usrbd::uapi::{CONSTANTS, IOCTLS, LAYOUT};

fn header_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kmod/include/uapi")
}

/// The C source and, per global name, the value the Rust tables expect.
fn generate() -> (String, Vec<(String, u32, String)>) {
    let mut c = String::from("#include <stddef.h>\n#include <linux/usrbd.h>\n");
    let mut expect = Vec::new();
    for (i, r) in LAYOUT.iter().enumerate() {
        let what = format!("{}.{}", r.st, r.field);
        if r.field.is_empty() {
            let _ = writeln!(
                c,
                "const unsigned int usrbd_l{i}_size = sizeof(struct {});",
                r.st
            );
            expect.push((
                format!("usrbd_l{i}_size"),
                r.size as u32,
                format!("sizeof {}", r.st),
            ));
        } else {
            let _ = writeln!(
                c,
                "const unsigned int usrbd_l{i}_off = offsetof(struct {st}, {f});\n\
                 const unsigned int usrbd_l{i}_size = sizeof(((struct {st} *)0)->{f});",
                st = r.st,
                f = r.field
            );
            expect.push((
                format!("usrbd_l{i}_off"),
                r.offset as u32,
                format!("offset {what}"),
            ));
            expect.push((
                format!("usrbd_l{i}_size"),
                r.size as u32,
                format!("size {what}"),
            ));
        }
    }
    for (i, (name, v)) in IOCTLS.iter().enumerate() {
        let _ = writeln!(c, "const unsigned int usrbd_i{i} = {name};");
        expect.push((format!("usrbd_i{i}"), *v, name.to_string()));
    }
    for (i, (name, v)) in CONSTANTS.iter().enumerate() {
        let _ = writeln!(c, "const unsigned int usrbd_c{i} = {name};");
        expect.push((format!("usrbd_c{i}"), *v as u32, name.to_string()));
    }
    (c, expect)
}

/// Reads `label:` followed by a `.long`/`.word`/`.4byte` directive.
fn parse_asm(asm: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    let mut label: Option<String> = None;
    for line in asm.lines() {
        let t = line.trim();
        if let Some(l) = t.strip_suffix(':') {
            label = Some(l.to_owned());
            continue;
        }
        let Some(l) = label.as_ref() else { continue };
        let mut parts = t.split_whitespace();
        if let (Some(dir), Some(val)) = (parts.next(), parts.next()) {
            // A zero may be emitted as `.zero 4` / `.space 4`.
            if matches!(dir, ".zero" | ".space") && val == "4" {
                out.insert(l.clone(), 0);
                label = None;
            } else if matches!(dir, ".long" | ".word" | ".4byte" | ".int") {
                let v: i64 = if let Some(h) = val.strip_prefix("0x") {
                    i64::from_str_radix(h, 16).expect("hex value")
                } else {
                    val.parse().expect("integer value")
                };
                out.insert(l.clone(), v as u32);
                label = None;
            }
        }
    }
    out
}

/// Compiles for one ABI; `None` (after saying why) when the compiler is missing.
fn compile(cc: &str, extra: &[&str], src: &Path) -> Option<String> {
    let out = src.with_extension(format!("{}.s", cc.replace('/', "_")));
    let res = Command::new(cc)
        .args(extra)
        .args(["-S", "-O0", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(header_dir())
        .arg(src)
        .output();
    match res {
        Err(e) => {
            println!("SKIP {cc} {extra:?}: compiler not available ({e})");
            None
        }
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            // A compiler that runs but cannot build this ABI (no multilib headers)
            // is a missing toolchain, not a layout mismatch; a header error is not.
            if err.contains("No such file or directory")
                && !err.contains("linux/usrbd.h: No such file")
            {
                println!("SKIP {cc} {extra:?}: toolchain incomplete: {err}");
                None
            } else {
                panic!("{cc} {extra:?} failed on the header:\n{err}");
            }
        }
        Ok(_) => Some(std::fs::read_to_string(&out).expect("read assembly")),
    }
}

fn check_abi(cc: &str, extra: &[&str], required: bool) {
    let (src, expect) = generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("layout.c");
    std::fs::write(&path, src).expect("write C");
    let Some(asm) = compile(cc, extra, &path) else {
        assert!(!required, "{cc} is required for this test");
        return;
    };
    let got = parse_asm(&asm);
    let mut bad = Vec::new();
    for (sym, want, what) in &expect {
        match got.get(sym) {
            Some(v) if v == want => {}
            Some(v) => bad.push(format!("{what}: C says {v}, Rust says {want}")),
            None => bad.push(format!("{what}: {sym} not found in the assembly")),
        }
    }
    assert!(bad.is_empty(), "{cc} {extra:?}:\n{}", bad.join("\n"));
    println!("{cc} {extra:?}: {} values agree", expect.len());
}

#[test]
fn x86_64_matches_header() {
    check_abi("cc", &[], true);
}

#[test]
fn aarch64_matches_header() {
    check_abi("aarch64-linux-gnu-gcc", &[], false);
}

#[test]
fn armv7_matches_header() {
    check_abi("arm-linux-gnueabihf-gcc", &[], false);
}

#[test]
fn i386_matches_header() {
    check_abi("cc", &["-m32"], false);
}

#[test]
fn parser_reads_both_directive_styles() {
    let asm = "a:\n\t.long\t-1\nb:\n\t.word\t40\nc:\n\t.4byte 0x10\nd:\n\t.zero\t4\n";
    let m = parse_asm(asm);
    assert_eq!(m["a"], u32::MAX);
    assert_eq!(m["b"], 40);
    assert_eq!(m["c"], 16);
    assert_eq!(m["d"], 0);
}
