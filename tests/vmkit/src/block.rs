//! The self-describing block that `ackwrite` writes and `ackcheck` verifies.
//!
//! Layout (little endian): magic, seq, offset, block length, a payload
//! derived from (seq, offset), and a CRC32 of everything before it in the
//! last four bytes. A block read back names the write that produced it, so
//! a checker needs nothing but the log of acknowledged writes.

const MAGIC: &[u8; 8] = b"USRBDACK";
const HEADER: usize = 28;

/// Smallest block the format fits in with room for a payload.
pub const MIN_BLOCK: u32 = 64;

/// Fills `buf` with the block for write `seq` at byte `offset`; returns its CRC.
pub fn fill(buf: &mut [u8], seq: u64, offset: u64) -> u32 {
    let len = buf.len();
    buf[0..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&offset.to_le_bytes());
    buf[24..28].copy_from_slice(&(len as u32).to_le_bytes());
    let mut state = seq.rotate_left(32) ^ offset ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in buf[HEADER..len - 4].chunks_mut(8) {
        let word = splitmix64(&mut state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let crc = crc32fast::hash(&buf[..len - 4]);
    buf[len - 4..].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// A block that passed every check, as found on the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub seq: u64,
    pub crc: u32,
}

/// Why a block read back is not a valid block for its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    NoMagic,
    WrongOffset(u64),
    WrongLength(u32),
    BadCrc,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::NoMagic => write!(f, "no block header (never written or overwritten)"),
            Invalid::WrongOffset(o) => write!(f, "block written for offset {o}"),
            Invalid::WrongLength(l) => write!(f, "block of length {l}"),
            Invalid::BadCrc => write!(f, "crc mismatch (torn or corrupted)"),
        }
    }
}

/// Checks the block read from byte `offset`.
pub fn decode(buf: &[u8], offset: u64) -> Result<Decoded, Invalid> {
    let len = buf.len();
    if len < MIN_BLOCK as usize || &buf[0..8] != MAGIC {
        return Err(Invalid::NoMagic);
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&buf[r]);
        u64::from_le_bytes(b)
    };
    let seq = word(8..16);
    let written_at = word(16..24);
    let block_len = word(24..28) as u32;
    if written_at != offset {
        return Err(Invalid::WrongOffset(written_at));
    }
    if block_len as usize != len {
        return Err(Invalid::WrongLength(block_len));
    }
    let crc = word(len - 4..len) as u32;
    if crc32fast::hash(&buf[..len - 4]) != crc {
        return Err(Invalid::BadCrc);
    }
    Ok(Decoded { seq, crc })
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = vec![0u8; 4096];
        let crc = fill(&mut buf, 7, 8192);
        assert_eq!(decode(&buf, 8192), Ok(Decoded { seq: 7, crc }));
    }

    #[test]
    fn payload_depends_on_seq_and_offset() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        fill(&mut a, 1, 0);
        fill(&mut b, 2, 0);
        assert_ne!(a[HEADER..], b[HEADER..]);
        fill(&mut b, 1, 512);
        assert_ne!(a[HEADER..], b[HEADER..]);
    }

    #[test]
    fn rejects_damage() {
        let mut buf = vec![0u8; 512];
        fill(&mut buf, 3, 1024);
        assert_eq!(decode(&buf, 0), Err(Invalid::WrongOffset(1024)));
        assert_eq!(decode(&buf[..256], 1024), Err(Invalid::WrongLength(512)));
        buf[300] ^= 1;
        assert_eq!(decode(&buf, 1024), Err(Invalid::BadCrc));
        assert_eq!(decode(&[0u8; 512], 1024), Err(Invalid::NoMagic));
    }
}
