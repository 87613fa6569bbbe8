//! TPM structures marshalled as a TPM writes them (TPM 2.0 Library, Part 2),
//! from plain fields: the parsers' tests build their inputs with these.

/// TPM_ALG_ID values (Part 2, Table 9).
pub mod alg {
    /// TPM_ALG_RSA.
    pub const RSA: u16 = 0x0001;
    /// TPM_ALG_SHA1.
    pub const SHA1: u16 = 0x0004;
    /// TPM_ALG_SHA256.
    pub const SHA256: u16 = 0x000b;
    /// TPM_ALG_SHA384.
    pub const SHA384: u16 = 0x000c;
    /// TPM_ALG_SHA512.
    pub const SHA512: u16 = 0x000d;
    /// TPM_ALG_NULL.
    pub const NULL: u16 = 0x0010;
    /// TPM_ALG_RSASSA.
    pub const RSASSA: u16 = 0x0014;
    /// TPM_ALG_RSAPSS.
    pub const RSAPSS: u16 = 0x0016;
    /// TPM_ALG_ECDSA.
    pub const ECDSA: u16 = 0x0018;
    /// TPM_ALG_ECC.
    pub const ECC: u16 = 0x0023;
}

/// TPM_ECC_NIST_P256.
pub const ECC_NIST_P256: u16 = 0x0003;

/// TPM_GENERATED_VALUE, the magic a TPMS_ATTEST starts with.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;

/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// Attributes of aver's AK: fixedTPM, fixedParent, sensitiveDataOrigin,
/// userWithAuth, restricted, sign.
pub const AK_ATTRIBUTES: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);

/// Appends `bytes` as a TPM2B: a 16-bit size, then the bytes.
pub fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    let size = u16::try_from(bytes.len()).expect("a TPM2B holds at most 65535 bytes");
    out.extend(size.to_be_bytes());
    out.extend(bytes);
}

/// A TPMT_PUBLIC of an ECDSA/SHA-256 signing key on NIST P-256 with name
/// algorithm SHA-256, no authPolicy, `attributes` and point (x, y): an AK
/// as aver creates it, with [`AK_ATTRIBUTES`].
pub fn ak_public(attributes: u32, x: [u8; 32], y: [u8; 32]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(alg::ECC.to_be_bytes());
    v.extend(alg::SHA256.to_be_bytes());
    v.extend(attributes.to_be_bytes());
    tpm2b(&mut v, &[]); // authPolicy
    v.extend(alg::NULL.to_be_bytes()); // symmetric
    v.extend(alg::ECDSA.to_be_bytes());
    v.extend(alg::SHA256.to_be_bytes());
    v.extend(ECC_NIST_P256.to_be_bytes());
    v.extend(alg::NULL.to_be_bytes()); // kdf
    tpm2b(&mut v, &x);
    tpm2b(&mut v, &y);
    v
}

/// The fields of a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quote {
    /// qualifiedSigner, a TPM2B_NAME.
    pub qualified_signer: Vec<u8>,
    /// extraData (the nonce).
    pub extra_data: Vec<u8>,
    /// clockInfo.clock.
    pub clock: u64,
    /// clockInfo.resetCount.
    pub reset_count: u32,
    /// clockInfo.restartCount.
    pub restart_count: u32,
    /// clockInfo.safe.
    pub safe: bool,
    /// firmwareVersion.
    pub firmware_version: u64,
    /// The TPML_PCR_SELECTION as wire fields: each hash and its bitmap
    /// (sizeofSelect is the bitmap's length). [`pcr_bitmap`] makes the
    /// 3-byte bitmaps PC-client TPMs write.
    pub pcr_select: Vec<(u16, Vec<u8>)>,
    /// pcrDigest.
    pub pcr_digest: Vec<u8>,
}

impl Quote {
    /// The TPMS_ATTEST, marshalled.
    pub fn marshal(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(TPM_GENERATED_VALUE.to_be_bytes());
        v.extend(TPM_ST_ATTEST_QUOTE.to_be_bytes());
        tpm2b(&mut v, &self.qualified_signer);
        tpm2b(&mut v, &self.extra_data);
        v.extend(self.clock.to_be_bytes());
        v.extend(self.reset_count.to_be_bytes());
        v.extend(self.restart_count.to_be_bytes());
        v.push(u8::from(self.safe));
        v.extend(self.firmware_version.to_be_bytes());
        let count = u32::try_from(self.pcr_select.len()).expect("a u32 count of selections");
        v.extend(count.to_be_bytes());
        for (hash_alg, bitmap) in &self.pcr_select {
            v.extend(hash_alg.to_be_bytes());
            v.push(u8::try_from(bitmap.len()).expect("a PCR bitmap of at most 255 bytes"));
            v.extend(bitmap);
        }
        tpm2b(&mut v, &self.pcr_digest);
        v
    }
}

/// The 3-byte TPMS_PCR_SELECTION bitmap of `pcrs`, as PC-client TPMs write
/// it; `None` if one is above 23.
pub fn pcr_bitmap(pcrs: &[u8]) -> Option<Vec<u8>> {
    let mut bitmap = vec![0u8; 3];
    for pcr in pcrs {
        *bitmap.get_mut(usize::from(*pcr) / 8)? |= 1 << (pcr % 8);
    }
    Some(bitmap)
}

/// A TPMT_SIGNATURE of ECDSA with `hash_alg`: r and s as TPM2Bs.
pub fn ecdsa_signature(hash_alg: u16, r: &[u8], s: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(alg::ECDSA.to_be_bytes());
    v.extend(hash_alg.to_be_bytes());
    tpm2b(&mut v, r);
    tpm2b(&mut v, s);
    v
}

/// A TPMT_SIGNATURE of an RSA `scheme` ([`alg::RSASSA`] or
/// [`alg::RSAPSS`]) with `hash_alg`.
pub fn rsa_signature(scheme: u16, hash_alg: u16, signature: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(scheme.to_be_bytes());
    v.extend(hash_alg.to_be_bytes());
    tpm2b(&mut v, signature);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ak_public_has_the_tpm_layout() {
        let v = ak_public(AK_ATTRIBUTES, [1; 32], [2; 32]);
        assert_eq!(v.len(), 2 + 2 + 4 + 2 + 2 + 2 + 2 + 2 + 2 + 34 + 34);
        assert_eq!(v[..4], [0x00, 0x23, 0x00, 0x0b]);
        assert_eq!(v[16..18], ECC_NIST_P256.to_be_bytes());
    }

    #[test]
    fn bitmaps_hold_pc_client_pcrs_only() {
        assert_eq!(pcr_bitmap(&[0, 7, 15, 23]), Some(vec![0x81, 0x80, 0x80]));
        assert_eq!(pcr_bitmap(&[24]), None);
    }

    #[test]
    fn a_quote_starts_with_the_magic() {
        let quote = Quote {
            pcr_select: vec![(alg::SHA256, pcr_bitmap(&[0]).unwrap())],
            ..Quote::default()
        };
        let v = quote.marshal();
        assert_eq!(v[..6], [0xff, 0x54, 0x43, 0x47, 0x80, 0x18]);
        assert_eq!(v.len(), 6 + 2 + 2 + 17 + 8 + 4 + 2 + 1 + 3 + 2);
    }
}
