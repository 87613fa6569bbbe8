//! DER and PEM encoding by hand: for certificates assembled field by field
//! (P-521 or RSA-PSS signers, unsorted SETs) and for the extensions rcgen
//! has no builder for.

use base64::Engine as _;

/// A DER TLV: `tag`, the definite length of `content`, `content`.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already-encoded parts.
pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A SET of already-encoded parts, in the order given (not sorted).
pub fn set(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x31, &parts.concat())
}

/// An OBJECT IDENTIFIER from its dotted form ("2.23.133.8.1").
pub fn oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted
        .split('.')
        .map(|arc| arc.parse().expect("OID arcs are numbers"))
        .collect();
    assert!(arcs.len() >= 2, "an OID has at least two arcs");
    let mut body = Vec::new();
    for arc in std::iter::once(arcs[0] * 40 + arcs[1]).chain(arcs[2..].iter().copied()) {
        let mut chunk = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            chunk.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        chunk.reverse();
        body.extend(chunk);
    }
    tlv(0x06, &body)
}

/// An INTEGER with exactly these content bytes.
pub fn int(bytes: &[u8]) -> Vec<u8> {
    tlv(0x02, bytes)
}

/// A BIT STRING of whole bytes (no unused bits).
pub fn bits(bytes: &[u8]) -> Vec<u8> {
    tlv(0x03, &[&[0u8][..], bytes].concat())
}

/// NULL.
pub fn null() -> Vec<u8> {
    vec![0x05, 0x00]
}

/// A UTF8String.
pub fn utf8(value: &str) -> Vec<u8> {
    tlv(0x0c, value.as_bytes())
}

/// A PEM block of `der` with `label` ("CERTIFICATE"), base64 on one line.
pub fn pem(label: &str, der: &[u8]) -> String {
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// A certificate as PEM.
pub fn certificate_pem(der: &[u8]) -> String {
    pem("CERTIFICATE", der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(tlv(0x04, &[0; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[0; 0x100])[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(tlv(0x04, &[0; 0x1_0000])[..5], [0x04, 0x83, 1, 0, 0]);
    }

    #[test]
    fn oids_encode_as_x690_says() {
        // id-ecPublicKey, and tcg-kp-EKCertificate.
        assert_eq!(
            oid("1.2.840.10045.2.1"),
            [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]
        );
        assert_eq!(
            oid("2.23.133.8.1"),
            [0x06, 0x05, 0x67, 0x81, 0x05, 0x08, 0x01]
        );
    }
}
