//! A reader for R lazy-load databases (`Rdata.rdb` + `Rdata.rdx`), enough to
//! pull character vectors (such as the Jane Austen novels of the Debian
//! package `r-cran-janeaustenr`) out of an installed R package's `data/`.
//!
//! Format (R's `makeLazyLoadDB` and `serialize.c`):
//! - `Rdata.rdx` is `saveRDS(list(variables, references, compressed))`, a
//!   gzip (or zlib) compressed serialization; `variables` is a named list of
//!   integer pairs `c(offset, length)` into `Rdata.rdb`;
//! - each record of `Rdata.rdb` is a 4-byte big-endian uncompressed length,
//!   then a zlib stream of one serialization;
//! - a serialization (XDR, big-endian) is `"X\n"`, the format version (2 or
//!   3), two R versions, for version 3 the native encoding (length + bytes),
//!   then one item. An item starts with a flags word: type in the low 8 bits,
//!   bit 8 "is object", bit 9 "has attributes", bit 10 "has tag", the `gp`
//!   levels from bit 12 (for strings: bit 2 Latin-1, bit 3 UTF-8, bit 6 ASCII).
//!   A CHARSXP (type 9) is then a 4-byte length (-1 for NA) and its bytes;
//!   vectors are a length then their elements, then attributes.

use std::io::Read;

use anyhow::{bail, Context, Result};

/// One R value: the object and its attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct RValue {
    /// The object.
    pub obj: RObj,
    /// Attributes (`names` and the like), in order.
    pub attrs: Vec<(String, RValue)>,
}

/// The R object types this reader understands.
#[derive(Debug, Clone, PartialEq)]
pub enum RObj {
    /// `NULL` and the special environments (global, base, empty).
    Null,
    /// A symbol.
    Symbol(String),
    /// One CHARSXP (`None` = `NA`).
    Chars(Option<String>),
    /// A character vector.
    Strings(Vec<Option<String>>),
    /// An integer or logical vector.
    Ints(Vec<i32>),
    /// A double vector.
    Reals(Vec<f64>),
    /// A raw vector.
    Raw(Vec<u8>),
    /// A generic vector (list).
    List(Vec<RValue>),
    /// A pairlist: (tag, value) pairs.
    Pairlist(Vec<(Option<String>, RValue)>),
    /// An environment (contents not kept).
    Env,
}

impl RValue {
    fn bare(obj: RObj) -> Self {
        Self {
            obj,
            attrs: Vec::new(),
        }
    }

    /// The `names` attribute, if it is a character vector.
    pub fn names(&self) -> Option<Vec<String>> {
        self.attrs
            .iter()
            .find(|(k, _)| k == "names")
            .and_then(|(_, v)| match &v.obj {
                RObj::Strings(s) => Some(s.iter().map(|x| x.clone().unwrap_or_default()).collect()),
                _ => None,
            })
    }

    /// The element named `name` of a named list.
    pub fn get(&self, name: &str) -> Option<&RValue> {
        let RObj::List(items) = &self.obj else {
            return None;
        };
        let names = self.names()?;
        names
            .iter()
            .position(|n| n == name)
            .and_then(|i| items.get(i))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    refs: Vec<RValue>,
}

const MAX_DEPTH: u32 = 200;

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if n > self.buf.len() - self.pos {
            bail!(
                "R serialization truncated: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn int(&mut self) -> Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A vector length (`-1` announces a 64-bit length in two words), checked
    /// against the bytes left (`min_size` bytes per element).
    fn length(&mut self, min_size: usize) -> Result<usize> {
        let n = match self.int()? {
            -1 => {
                let hi = self.int()? as u32 as u64;
                let lo = self.int()? as u32 as u64;
                (hi << 32) | lo
            }
            n if n < 0 => bail!("negative vector length {n} at offset {}", self.pos),
            n => n as u64,
        };
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            bail!(
                "vector of {n} elements at offset {} exceeds the {left} bytes left",
                self.pos
            );
        }
        Ok(n as usize)
    }

    fn header(&mut self) -> Result<()> {
        if self.take(2)? != b"X\n" {
            bail!("not an XDR R serialization (expected \"X\\n\")");
        }
        let version = self.int()?;
        self.int()?;
        self.int()?;
        match version {
            2 => {}
            3 => {
                let n = self.length(1)?;
                self.take(n)?;
            }
            v => bail!("R serialization version {v} is not supported (2 or 3)"),
        }
        Ok(())
    }

    fn chars(&mut self, levels: i32) -> Result<Option<String>> {
        let n = self.int()?;
        if n == -1 {
            return Ok(None);
        }
        if n < 0 {
            bail!("negative string length {n} at offset {}", self.pos);
        }
        let bytes = self.take(n as usize)?;
        const LATIN1: i32 = 1 << 2;
        Ok(Some(if levels & LATIN1 != 0 {
            bytes.iter().map(|&b| b as char).collect()
        } else {
            String::from_utf8(bytes.to_vec())
                .context("a string of the R database is not valid UTF-8")?
        }))
    }

    fn item(&mut self, depth: u32) -> Result<RValue> {
        if depth > MAX_DEPTH {
            bail!("R serialization nested deeper than {MAX_DEPTH}");
        }
        let flags = self.int()?;
        let ty = flags & 0xff;
        let levels = flags >> 12;
        let has_attr = flags & (1 << 9) != 0;
        let has_tag = flags & (1 << 10) != 0;
        let obj = match ty {
            254 | 253 | 252 | 251 | 250 | 242 | 241 => return Ok(RValue::bare(RObj::Null)),
            255 => {
                let idx = match flags >> 8 {
                    0 => self.int()?,
                    i => i,
                };
                return self
                    .refs
                    .get((idx as usize).wrapping_sub(1))
                    .cloned()
                    .with_context(|| format!("reference {idx} to an unknown object"));
            }
            1 => {
                let name = match self.item(depth + 1)?.obj {
                    RObj::Chars(s) => s.unwrap_or_default(),
                    other => bail!("symbol name is {other:?}, not a string"),
                };
                let v = RValue::bare(RObj::Symbol(name));
                self.refs.push(v.clone());
                return Ok(v);
            }
            2 | 6 | 17 => return self.pairlist(depth, has_attr, has_tag),
            4 => {
                let v = RValue::bare(RObj::Env);
                self.refs.push(v.clone());
                self.int()?; // locked
                for _ in 0..4 {
                    self.item(depth + 1)?; // enclosure, frame, hash table, attributes
                }
                return Ok(v);
            }
            9 => RObj::Chars(self.chars(levels)?),
            10 | 13 => {
                let n = self.length(4)?;
                RObj::Ints((0..n).map(|_| self.int()).collect::<Result<_>>()?)
            }
            14 => {
                let n = self.length(8)?;
                let b = self.take(8 * n)?;
                RObj::Reals(
                    b.chunks_exact(8)
                        .map(|c| f64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                )
            }
            15 => {
                let n = self.length(16)?;
                let b = self.take(16 * n)?;
                RObj::Reals(
                    b.chunks_exact(8)
                        .map(|c| f64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                )
            }
            16 => {
                let n = self.length(8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    match self.item(depth + 1)?.obj {
                        RObj::Chars(s) => v.push(s),
                        other => bail!("character vector holds {other:?}"),
                    }
                }
                RObj::Strings(v)
            }
            19 | 20 => {
                let n = self.length(4)?;
                RObj::List(
                    (0..n)
                        .map(|_| self.item(depth + 1))
                        .collect::<Result<_>>()?,
                )
            }
            24 => {
                let n = self.length(1)?;
                RObj::Raw(self.take(n)?.to_vec())
            }
            other => bail!("R object type {other} is not supported by this reader"),
        };
        let attrs = if has_attr {
            self.attributes(depth)?
        } else {
            Vec::new()
        };
        Ok(RValue { obj, attrs })
    }

    /// A pairlist (types 2, 6 and 17), read iteratively along its CDRs.
    fn pairlist(&mut self, depth: u32, has_attr: bool, has_tag: bool) -> Result<RValue> {
        let mut items = Vec::new();
        let mut attrs = Vec::new();
        let (mut has_attr, mut has_tag) = (has_attr, has_tag);
        loop {
            if has_attr {
                attrs = self.attributes(depth)?;
            }
            let tag = if has_tag {
                match self.item(depth + 1)?.obj {
                    RObj::Symbol(s) => Some(s),
                    _ => None,
                }
            } else {
                None
            };
            items.push((tag, self.item(depth + 1)?));
            let next = self.int()?;
            match next & 0xff {
                2 | 6 | 17 => {
                    has_attr = next & (1 << 9) != 0;
                    has_tag = next & (1 << 10) != 0;
                }
                254 => break,
                other => bail!("pairlist ends in type {other}, not NULL"),
            }
        }
        Ok(RValue {
            obj: RObj::Pairlist(items),
            attrs,
        })
    }

    fn attributes(&mut self, depth: u32) -> Result<Vec<(String, RValue)>> {
        match self.item(depth + 1)?.obj {
            RObj::Pairlist(items) => Ok(items
                .into_iter()
                .map(|(k, v)| (k.unwrap_or_default(), v))
                .collect()),
            RObj::Null => Ok(Vec::new()),
            other => bail!("attributes are {other:?}, not a pairlist"),
        }
    }
}

/// Reads one serialized R value (already decompressed).
pub fn unserialize(bytes: &[u8]) -> Result<RValue> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        refs: Vec::new(),
    };
    r.header()?;
    r.item(0)
}

fn inflate(mut reader: impl Read, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .with_context(|| format!("decompressing {what}"))?;
    Ok(out)
}

/// Reads `Rdata.rdx`: (variable name, offset, length) of each record.
pub fn read_index(rdx: &[u8]) -> Result<Vec<(String, u64, u64)>> {
    let raw = if rdx.starts_with(&[0x1f, 0x8b]) {
        inflate(flate2::read::GzDecoder::new(rdx), "the index (gzip)")?
    } else if rdx.len() > 4 {
        inflate(
            flate2::read::ZlibDecoder::new(&rdx[4..]),
            "the index (zlib)",
        )?
    } else {
        bail!("the index file is too short ({} bytes)", rdx.len());
    };
    let index = unserialize(&raw).context("reading the index")?;
    let vars = index
        .get("variables")
        .context("the index has no `variables`")?;
    let (RObj::List(items), Some(names)) = (&vars.obj, vars.names()) else {
        bail!("the index's `variables` is not a named list");
    };
    items
        .iter()
        .zip(names)
        .map(|(item, name)| match &item.obj {
            RObj::Ints(v) if v.len() == 2 && v[0] >= 0 && v[1] >= 0 => {
                Ok((name, v[0] as u64, v[1] as u64))
            }
            RObj::Reals(v) if v.len() == 2 && v[0] >= 0.0 && v[1] >= 0.0 => {
                Ok((name, v[0] as u64, v[1] as u64))
            }
            other => bail!("index entry `{name}` is {other:?}, not c(offset, length)"),
        })
        .collect()
}

/// Reads the record at `offset .. offset + len` of `Rdata.rdb`.
pub fn read_record(rdb: &[u8], offset: u64, len: u64) -> Result<RValue> {
    let end = offset.checked_add(len).filter(|&e| e <= rdb.len() as u64);
    let Some(end) = end else {
        bail!(
            "record at {offset} of {len} bytes runs past the database's {} bytes",
            rdb.len()
        );
    };
    let rec = &rdb[offset as usize..end as usize];
    if rec.len() < 5 {
        bail!("record at {offset} is only {} bytes", rec.len());
    }
    let raw = match rec[4] {
        0x78 => inflate(flate2::read::ZlibDecoder::new(&rec[4..]), "a record")?,
        b'0' => rec[5..].to_vec(),
        other => {
            bail!("record at {offset} uses compression type {other:#x} (only zlib is supported)")
        }
    };
    let want = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
    if raw.len() != want {
        bail!(
            "record at {offset} inflates to {} bytes, its header says {want}",
            raw.len()
        );
    }
    unserialize(&raw)
}

/// Every character vector of a lazy-load database, by variable name.
pub fn character_vectors(rdx: &[u8], rdb: &[u8]) -> Result<Vec<(String, Vec<Option<String>>)>> {
    let mut out = Vec::new();
    for (name, offset, len) in read_index(rdx)? {
        let v = read_record(rdb, offset, len).with_context(|| format!("reading `{name}`"))?;
        if let RObj::Strings(s) = v.obj {
            out.push((name, s));
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// A minimal XDR serializer for the tests (version 3 header).
    pub(crate) struct Ser(pub Vec<u8>);

    impl Ser {
        pub(crate) fn new() -> Self {
            let mut s = Ser(b"X\n".to_vec());
            for v in [3, 0x040201, 0x030500, 5] {
                s.int(v);
            }
            s.0.extend_from_slice(b"UTF-8");
            s
        }
        pub(crate) fn int(&mut self, v: i32) {
            self.0.extend_from_slice(&v.to_be_bytes());
        }
        pub(crate) fn chars(&mut self, s: Option<&str>) {
            match s {
                None => {
                    self.int(9);
                    self.int(-1);
                }
                Some(s) => {
                    self.int(9 | (1 << 3) << 12);
                    self.int(s.len() as i32);
                    self.0.extend_from_slice(s.as_bytes());
                }
            }
        }
        pub(crate) fn strings(&mut self, v: &[Option<&str>]) {
            self.int(16);
            self.int(v.len() as i32);
            v.iter().for_each(|s| self.chars(*s));
        }
        /// `names` attribute pairlist (the symbol written once, then referenced).
        pub(crate) fn names_attr(&mut self, names: &[&str], first_symbol: bool) {
            self.int(2 | 1 << 10);
            if first_symbol {
                self.int(1);
                self.chars(Some("names"));
            } else {
                self.int(255 | 1 << 8);
            }
            self.strings(&names.iter().map(|s| Some(*s)).collect::<Vec<_>>());
            self.int(254);
        }
    }

    pub(crate) fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// A database of two character vectors and one integer vector.
    pub(crate) fn database(books: &[(&str, Vec<Option<&str>>)]) -> (Vec<u8>, Vec<u8>) {
        let mut rdb = Vec::new();
        let mut entries = Vec::new();
        for (name, lines) in books {
            let mut s = Ser::new();
            s.strings(lines);
            let off = rdb.len();
            rdb.extend_from_slice(&(s.0.len() as u32).to_be_bytes());
            rdb.extend(zlib(&s.0));
            entries.push((name.to_string(), off as i32, (rdb.len() - off) as i32));
        }
        // An integer vector that is not text.
        let mut s = Ser::new();
        s.int(13);
        s.int(2);
        s.int(7);
        s.int(8);
        let off = rdb.len();
        rdb.extend_from_slice(&(s.0.len() as u32).to_be_bytes());
        rdb.extend(zlib(&s.0));
        entries.push(("numbers".into(), off as i32, (rdb.len() - off) as i32));
        // Index: list(variables = list(name = c(off, len), ...), references = list(), compressed = TRUE)
        let mut s = Ser::new();
        s.int(19 | 1 << 9);
        s.int(3);
        s.int(19 | 1 << 9);
        s.int(entries.len() as i32);
        for (_, off, len) in &entries {
            s.int(13);
            s.int(2);
            s.int(*off);
            s.int(*len);
        }
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        s.names_attr(&names, true);
        s.int(19);
        s.int(0);
        s.int(10);
        s.int(1);
        s.int(1);
        s.names_attr(&["variables", "references", "compressed"], false);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&s.0).unwrap();
        (gz.finish().unwrap(), rdb)
    }

    #[test]
    fn extracts_character_vectors() {
        let books = [
            (
                "emma",
                vec![
                    Some("EMMA"),
                    Some(""),
                    Some("Émma Woodhouse, handsome, clever"),
                    None,
                ],
            ),
            (
                "persuasion",
                vec![Some("Sir Walter Elliot"), Some("of Kellynch-hall")],
            ),
        ];
        let (rdx, rdb) = database(&books);
        let index = read_index(&rdx).unwrap();
        assert_eq!(
            index.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["emma", "persuasion", "numbers"]
        );
        let got = character_vectors(&rdx, &rdb).unwrap();
        assert_eq!(got.len(), 2);
        for ((name, lines), (want_name, want)) in got.iter().zip(&books) {
            assert_eq!(name, want_name);
            assert_eq!(
                lines,
                &want.iter().map(|s| s.map(String::from)).collect::<Vec<_>>()
            );
        }
        assert_eq!(
            read_record(&rdb, index[2].1, index[2].2).unwrap().obj,
            RObj::Ints(vec![7, 8])
        );
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let (rdx, rdb) = database(&[("a", vec![Some("x"); 50])]);
        let index = read_index(&rdx).unwrap();
        let (_, off, len) = index[0].clone();
        for cut in [0, 3, 5, 10, len as usize - 1] {
            assert!(read_record(&rdb[..off as usize + cut], off, cut as u64).is_err());
        }
        assert!(read_record(&rdb, off, len + 1000).is_err());
        assert!(read_index(&rdx[..rdx.len() / 2]).is_err());
        assert!(read_index(b"nope").is_err());
        // Truncated raw serializations, at every length.
        let mut s = Ser::new();
        s.strings(&[Some("abc"), None, Some("de")]);
        for n in 0..s.0.len() {
            assert!(unserialize(&s.0[..n]).is_err(), "accepted {n} bytes");
        }
        assert!(unserialize(&s.0).is_ok());
        // A huge length does not allocate.
        let mut s = Ser::new();
        s.int(16);
        s.int(i32::MAX);
        assert!(unserialize(&s.0).is_err());
    }
}
