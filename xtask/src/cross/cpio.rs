//! A minimal `newc` cpio writer for the initramfs: every entry owned by root,
//! so the image does not depend on who runs the xtask or on a host `cpio`.

use std::io::Write;

/// Builds an uncompressed initramfs archive in memory.
#[derive(Default)]
pub struct Archive {
    data: Vec<u8>,
    ino: u32,
}

impl Archive {
    pub fn dir(&mut self, path: &str) {
        self.entry(path, 0o040_755, b"");
    }

    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) {
        self.entry(path, 0o100_000 | mode, contents);
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, b"");
        self.data
    }

    fn entry(&mut self, path: &str, mode: u32, contents: &[u8]) {
        self.ino += 1;
        let name_len = path.len() + 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        // Writes into a Vec cannot fail.
        let _ = write!(
            self.data,
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            contents.len(),
            0,
            0,
            0,
            0,
            name_len,
            0
        );
        self.data.extend_from_slice(path.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(contents);
        self.pad();
    }

    fn pad(&mut self) {
        while self.data.len() % 4 != 0 {
            self.data.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_alignment() {
        let mut a = Archive::default();
        a.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = a.finish();
        assert_eq!(&bytes[..6], b"070701");
        // mode field: regular file, 0755
        assert_eq!(&bytes[14..22], b"000081ed");
        // file size field
        assert_eq!(&bytes[54..62], b"0000000a");
        // header (110) + "init\0" (5) padded to 116, then the contents
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(bytes.len() % 4, 0);
        let trailer = bytes
            .windows(10)
            .position(|w| w == b"TRAILER!!!")
            .expect("trailer present");
        assert!(trailer > 126);
    }
}
