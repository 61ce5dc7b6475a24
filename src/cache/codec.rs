//! The byte layout of shared-data records. A record is a one-byte tag naming
//! its kind, the format version ([`super::FORMAT`]), then its fields in a
//! fixed order: integers little-endian, strings as a `u32` length and UTF-8
//! bytes, options as a `0`/`1` byte and then the value. Hand-written rather
//! than derived: a few dozen lines instead of serde's generated code in the
//! `.wasm`, and decoding a record costs no allocation beyond its strings.

pub(crate) struct Writer(Vec<u8>);

impl Writer {
    /// A record of kind `tag` in format `version` (readers accept only
    /// [`super::FORMAT`]).
    pub fn new(tag: u8, version: u8) -> Writer {
        let mut bytes = Vec::with_capacity(128);
        bytes.push(tag);
        bytes.push(version);
        Writer(bytes)
    }

    pub fn u32(mut self, v: u32) -> Writer {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Writer {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn str(self, s: &str) -> Writer {
        // Shared-data values are far below 4 GiB; longer strings saturate and fail to decode.
        let mut w = self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        w.0.extend_from_slice(s.as_bytes());
        w
    }

    pub fn opt_str(mut self, s: Option<&str>) -> Writer {
        match s {
            None => {
                self.0.push(0);
                self
            }
            Some(s) => {
                self.0.push(1);
                self.str(s)
            }
        }
    }

    pub fn opt_u64(mut self, v: Option<u64>) -> Writer {
        match v {
            None => {
                self.0.push(0);
                self
            }
            Some(v) => {
                self.0.push(1);
                self.u64(v)
            }
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader for a record of kind `tag` in this format, else `None`.
    pub fn new(bytes: &'a [u8], tag: u8) -> Option<Reader<'a>> {
        match bytes {
            [t, f, rest @ ..] if *t == tag && *f == super::FORMAT => Some(Reader { rest }),
            _ => None,
        }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn str(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).ok().map(str::to_string)
    }

    fn flag(&mut self) -> Option<bool> {
        match self.take(1)? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }

    pub fn opt_str(&mut self) -> Option<Option<String>> {
        if self.flag()? {
            self.str().map(Some)
        } else {
            Some(None)
        }
    }

    pub fn opt_u64(&mut self) -> Option<Option<u64>> {
        if self.flag()? {
            self.u64().map(Some)
        } else {
            Some(None)
        }
    }

    /// The record ends here (trailing bytes make it invalid).
    pub fn end(self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let bytes = Writer::new(b'T', super::super::FORMAT)
            .u32(7)
            .u64(u64::MAX)
            .str("héllo")
            .opt_str(None)
            .opt_str(Some(""))
            .opt_u64(Some(3))
            .finish();
        let mut r = Reader::new(&bytes, b'T').unwrap();
        assert_eq!(r.u32(), Some(7));
        assert_eq!(r.u64(), Some(u64::MAX));
        assert_eq!(r.str().as_deref(), Some("héllo"));
        assert_eq!(r.opt_str(), Some(None));
        assert_eq!(r.opt_str(), Some(Some(String::new())));
        assert_eq!(r.opt_u64(), Some(Some(3)));
        assert_eq!(r.end(), Some(()));
        assert!(Reader::new(&bytes, b'X').is_none(), "another kind");
        for cut in 0..bytes.len() {
            let Some(mut r) = Reader::new(&bytes[..cut], b'T') else {
                continue;
            };
            let whole = (|| {
                r.u32()?;
                r.u64()?;
                r.str()?;
                r.opt_str()?;
                r.opt_str()?;
                r.opt_u64()?;
                r.end()
            })();
            assert_eq!(whole, None, "truncated at {cut}");
        }
    }
}
