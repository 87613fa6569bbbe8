//! A bounds-checked big-endian reader over TPM wire bytes.

use super::TpmParseError;

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], structure: &'static str) -> Self {
        Self {
            bytes,
            offset: 0,
            structure,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], TpmParseError> {
        let rest = &self.bytes[self.offset..];
        if rest.len() < n {
            return Err(TpmParseError::Truncated {
                structure: self.structure,
                offset: self.offset,
                needed: n - rest.len(),
            });
        }
        self.offset += n;
        Ok(&rest[..n])
    }

    pub(crate) fn u8(&mut self) -> Result<u8, TpmParseError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, TpmParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, TpmParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, TpmParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A TPM2B: a u16 size then that many bytes, at most `max`.
    pub(crate) fn tpm2b(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], TpmParseError> {
        let size = usize::from(self.u16()?);
        if size > max {
            return Err(TpmParseError::TooLarge {
                structure: self.structure,
                field,
                size,
                max,
            });
        }
        self.take(size)
    }

    pub(crate) fn finish(self) -> Result<(), TpmParseError> {
        let count = self.bytes.len() - self.offset;
        if count != 0 {
            return Err(TpmParseError::TrailingBytes {
                structure: self.structure,
                count,
            });
        }
        Ok(())
    }

    pub(crate) fn structure(&self) -> &'static str {
        self.structure
    }
}
