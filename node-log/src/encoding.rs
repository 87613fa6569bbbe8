//! The canonical, length-prefixed binary encoding every measured value is
//! hashed in. JSON is what travels and what people read; hashes are taken
//! over this encoding instead, because JSON has many spellings of one value
//! (key order, escapes, number forms) and a digest must have exactly one.
//!
//! Strings and byte strings are a u32 big-endian length then the bytes;
//! lists are a u32 count then the items; options are a 0/1 byte then the
//! value; booleans are one 0/1 byte; integers are big-endian. Every field is
//! written in a fixed, documented order, so no two different values encode
//! to the same bytes.

use sha2::{Digest as _, Sha256};

use aver_crds::Sha256Digest;

/// Builds a canonical encoding; [`Encoder::digest`] hashes it.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    bytes: Vec<u8>,
}

impl Encoder {
    /// Starts an encoding with a domain separator and a version, so that an
    /// encoding of one kind of value can never be read as another.
    pub fn new(domain: &str, version: u16) -> Self {
        let mut e = Self::default();
        e.str(domain);
        e.bytes.extend_from_slice(&version.to_be_bytes());
        e
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Lengths are u32: no measured value is anywhere near 4 GiB, and the
    /// node log bounds every event far below that.
    fn len(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.len(v.len());
        self.bytes.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub fn digest_value(&mut self, v: &Sha256Digest) -> &mut Self {
        self.bytes.extend_from_slice(v.as_bytes());
        self
    }

    pub fn opt<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) -> &mut Self
    where
        T: ?Sized,
    {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
                self
            }
        }
    }

    pub fn list<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) -> &mut Self {
        self.len(items.len());
        for item in items {
            f(self, item);
        }
        self
    }

    pub fn strs(&mut self, items: &[String]) -> &mut Self {
        self.list(items, |e, s| {
            e.str(s);
        })
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest(Sha256::digest(&self.bytes).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixes_keep_boundaries() {
        let mut a = Encoder::new("t", 1);
        a.str("ab").str("c");
        let mut b = Encoder::new("t", 1);
        b.str("a").str("bc");
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn domain_and_version_separate() {
        assert_ne!(Encoder::new("a", 1).digest(), Encoder::new("b", 1).digest());
        assert_ne!(Encoder::new("a", 1).digest(), Encoder::new("a", 2).digest());
    }

    #[test]
    fn none_differs_from_empty() {
        let mut a = Encoder::new("t", 1);
        a.opt(None::<&str>, |e, s| {
            e.str(s);
        });
        let mut b = Encoder::new("t", 1);
        b.opt(Some(""), |e, s| {
            e.str(s);
        });
        assert_ne!(a.digest(), b.digest());
    }
}
