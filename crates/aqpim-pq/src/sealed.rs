//! The frame every binary file of the workspace shares (codebooks,
//! pre-transforms, KV caches): 8 bytes of magic, a little-endian `u32`
//! format version, the format's own bytes, and a CRC-32 (IEEE) of every byte
//! before it. One writer ([`Frame::start`], [`Frame::seal`]) and one reader
//! ([`Frame::open`]), which checks in one order with one set of messages:
//! length, magic, version, the format's own header check, checksum.

use std::ops::RangeInclusive;

/// Bytes of magic and version at the start of every framed file.
pub const FRAME_HEADER: usize = 12;

/// One file format's frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The first 8 bytes of every file of the format.
    pub magic: &'static [u8; 8],
    /// What the format holds, for errors ("aqpim codebook").
    pub kind: &'static str,
    /// The versions this build reads; it writes the last.
    pub versions: RangeInclusive<u32>,
}

impl Frame {
    /// A new file's first bytes: the magic and the newest version.
    pub fn start(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.magic);
        out.extend_from_slice(&self.versions.end().to_le_bytes());
        out
    }

    /// Appends the CRC-32 of every byte so far: the file is complete.
    pub fn seal(mut out: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Checks a file's frame and returns its version and every byte before
    /// the CRC (magic and version included, so that a format's offsets count
    /// from the file's start). `min_len` is the shortest whole file; `header`
    /// checks the format's own header fields after the version and before
    /// the checksum (a length field, say), with the version. The reason of
    /// an error says what was wrong; the caller names the file.
    pub fn open<'a>(
        &self,
        bytes: &'a [u8],
        min_len: usize,
        header: impl FnOnce(u32, &[u8]) -> Result<(), String>,
    ) -> Result<(u32, &'a [u8]), String> {
        let min_len = min_len.max(FRAME_HEADER + 4);
        if bytes.len() < min_len {
            return Err(format!(
                "truncated: {} bytes, the header alone takes at least {min_len}",
                bytes.len()
            ));
        }
        if &bytes[..8] != self.magic {
            return Err(format!("not an {} file (bad magic)", self.kind));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if !self.versions.contains(&version) {
            let reads = if self.versions.start() == self.versions.end() {
                self.versions.start().to_string()
            } else {
                format!("{} to {}", self.versions.start(), self.versions.end())
            };
            return Err(format!(
                "format version {version} is not supported (this build reads {reads})"
            ));
        }
        header(version, bytes)?;
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
        let actual = crc32fast::hash(body);
        if stored != actual {
            return Err(format!(
                "checksum mismatch (stored {stored:#010x}, computed {actual:#010x}): the file is corrupted or truncated"
            ));
        }
        Ok((version, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Frame = Frame {
        magic: b"AQPIMT\0\0",
        kind: "aqpim test",
        versions: 1..=2,
    };

    fn file() -> Vec<u8> {
        let mut out = F.start();
        out.extend_from_slice(b"body");
        Frame::seal(out)
    }

    #[test]
    fn a_sealed_file_opens_to_its_version_and_body() {
        let f = file();
        let (v, body) = F.open(&f, 0, |_, _| Ok(())).unwrap();
        assert_eq!((v, &body[FRAME_HEADER..]), (2, &b"body"[..]));
    }

    #[test]
    fn each_check_names_what_is_wrong_in_order() {
        let ok = |_: u32, _: &[u8]| Ok(());
        let f = file();
        assert!(F.open(&f[..10], 0, ok).unwrap_err().contains("truncated"));
        let mut m = f.clone();
        m[0] ^= 1;
        assert!(F.open(&m, 0, ok).unwrap_err().contains("bad magic"));
        let mut v = f.clone();
        v[8] = 9;
        let e = F.open(&v, 0, ok).unwrap_err();
        assert!(e.contains("version 9") && e.contains("1 to 2"), "{e}");
        let e = F
            .open(&f, 0, |_, _| Err("length field".into()))
            .unwrap_err();
        assert_eq!(e, "length field");
        let mut c = f.clone();
        c[13] ^= 0x40;
        assert!(F.open(&c, 0, ok).unwrap_err().contains("checksum mismatch"));
    }
}
