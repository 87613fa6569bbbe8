//! TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.

use super::reader::Reader;
use super::{alg, TpmParseError};

const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// sizeof(TPMU_NAME): a TPMT_HA with the largest digest.
const MAX_NAME: usize = 2 + 64;
/// sizeof(TPMT_HA) bounds TPM2B_DATA.
const MAX_DATA: usize = 2 + 64;
const MAX_DIGEST: usize = 64;
/// PCR_SELECT_MAX on PC-client TPMs (24 PCRs → 3 bytes); 4 allows 32.
const MAX_SELECT_BYTES: usize = 4;
/// HASH_COUNT bound: one selection per bank.
const MAX_BANKS: u32 = 16;

/// TPMS_CLOCK_INFO: the TPM's clock and its reset/restart counters, which a
/// client tracks per AK to notice a TPM that went back in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
}

/// The PCRs of one bank that a quote covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    pub hash_alg: u16,
    /// Selected PCR indices in ascending order, the order the TPM hashes them.
    pub pcrs: Vec<u8>,
}

/// A parsed quote body. Parsing proves nothing: only after the signature
/// over the exact bytes is verified may the fields be believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock_info: ClockInfo,
    pub firmware_version: u64,
    pub pcr_select: Vec<PcrSelection>,
    pub pcr_digest: Vec<u8>,
}

impl Attest {
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmParseError> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        if r.u32()? != TPM_GENERATED_VALUE {
            return Err(TpmParseError::NotTpmGenerated);
        }
        let st = r.u16()?;
        if st != TPM_ST_ATTEST_QUOTE {
            return Err(TpmParseError::NotAQuote(st));
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("extraData", MAX_DATA)?.to_vec();
        let clock_info = ClockInfo {
            clock: r.u64()?,
            reset_count: r.u32()?,
            restart_count: r.u32()?,
            safe: match r.u8()? {
                0 => false,
                1 => true,
                _ => {
                    return Err(TpmParseError::Invalid {
                        structure: r.structure(),
                        reason: "clockInfo.safe is neither YES nor NO",
                    })
                }
            },
        };
        let firmware_version = r.u64()?;
        let count = r.u32()?;
        if count > MAX_BANKS {
            return Err(TpmParseError::TooLarge {
                structure: r.structure(),
                field: "pcrSelect.count",
                size: count as usize,
                max: MAX_BANKS as usize,
            });
        }
        let mut pcr_select = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let hash_alg = r.u16()?;
            let size = usize::from(r.u8()?);
            if size > MAX_SELECT_BYTES {
                return Err(TpmParseError::TooLarge {
                    structure: r.structure(),
                    field: "sizeofSelect",
                    size,
                    max: MAX_SELECT_BYTES,
                });
            }
            let bitmap = r.take(size)?;
            let pcrs = (0..size * 8)
                .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
                .map(|i| i as u8)
                .collect();
            pcr_select.push(PcrSelection { hash_alg, pcrs });
        }
        let pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST)?.to_vec();
        r.finish()?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }

    /// The one PCR bank the quote selects and its PCR indices; a mixed-bank
    /// digest is not something this verifier can recompute.
    pub fn quoted_bank(&self) -> Result<&PcrSelection, TpmParseError> {
        let banks: Vec<&PcrSelection> = self
            .pcr_select
            .iter()
            .filter(|s| !s.pcrs.is_empty())
            .collect();
        match banks.as_slice() {
            [only] => Ok(only),
            [] => Err(TpmParseError::Invalid {
                structure: "TPMS_ATTEST",
                reason: "quote selects no PCRs",
            }),
            _ => Err(TpmParseError::Invalid {
                structure: "TPMS_ATTEST",
                reason: "quote selects more than one PCR bank",
            }),
        }
    }

    /// The quoted PCR indices of the sha256 bank, provided that is the only
    /// bank quoted: evidence carries sha256 PCR values, so a quote of
    /// another bank is [`TpmParseError::OtherPcrBank`].
    pub fn sha256_pcrs(&self) -> Result<&[u8], TpmParseError> {
        let bank = self.quoted_bank()?;
        if bank.hash_alg != alg::SHA256 {
            return Err(TpmParseError::OtherPcrBank {
                bank: super::bank_name(bank.hash_alg),
            });
        }
        Ok(&bank.pcrs)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use aver_testkit::tpm::{pcr_bitmap, Quote};

    use super::*;
    use proptest::prelude::*;

    /// Marshals a quote the way a TPM does, for tests of the parser: the
    /// PCR selections as 3-byte bitmaps.
    pub(crate) fn marshal(a: &Attest) -> Vec<u8> {
        let selections = a
            .pcr_select
            .iter()
            .map(|s| (s.hash_alg, pcr_bitmap(&s.pcrs).expect("PCRs 0-23")))
            .collect::<Vec<_>>();
        marshal_wire_selections(a, &selections)
    }

    pub(crate) fn sample() -> Attest {
        Attest {
            qualified_signer: vec![0, 0x0b, 1, 2, 3],
            extra_data: vec![7; 32],
            clock_info: ClockInfo {
                clock: 12345,
                reset_count: 2,
                restart_count: 1,
                safe: true,
            },
            firmware_version: 99,
            pcr_select: vec![PcrSelection {
                hash_alg: alg::SHA256,
                pcrs: vec![0, 7, 15],
            }],
            pcr_digest: vec![5; 32],
        }
    }

    #[test]
    fn round_trip() {
        let a = sample();
        assert_eq!(Attest::parse(&marshal(&a)), Ok(a.clone()));
        assert_eq!(a.sha256_pcrs(), Ok(&[0u8, 7, 15][..]));
    }

    #[test]
    fn rejects_other_structures_and_trailing_bytes() {
        let mut bytes = marshal(&sample());
        bytes.push(0);
        assert!(matches!(
            Attest::parse(&bytes),
            Err(TpmParseError::TrailingBytes { .. })
        ));
        let mut bytes = marshal(&sample());
        bytes[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert_eq!(Attest::parse(&bytes), Err(TpmParseError::NotAQuote(0x8017)));
        let mut bytes = marshal(&sample());
        bytes[0] = 0;
        assert_eq!(Attest::parse(&bytes), Err(TpmParseError::NotTpmGenerated));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = marshal(&sample());
        for len in 0..bytes.len() {
            assert!(
                Attest::parse(&bytes[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn sha1_bank_is_unsupported() {
        let mut a = sample();
        a.pcr_select[0].hash_alg = 0x0004;
        let err = a.sha256_pcrs().unwrap_err();
        assert_eq!(
            err.to_string(),
            "evidence PCR values are sha256; the quote selects the sha1 bank"
        );
    }

    fn bytes_up_to(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=max)
    }

    /// Any quote [`marshal`] can write: every field at any value within the
    /// parser's bounds, PCR selections of the 24 PC-client PCRs.
    fn arb_attest() -> impl Strategy<Value = Attest> {
        let selection = (
            any::<u16>(),
            proptest::collection::btree_set(0u8..24, 0..=24),
        )
            .prop_map(|(hash_alg, pcrs)| PcrSelection {
                hash_alg,
                pcrs: pcrs.into_iter().collect(),
            });
        (
            bytes_up_to(MAX_NAME),
            bytes_up_to(MAX_DATA),
            (any::<u64>(), any::<u32>(), any::<u32>(), any::<bool>()),
            any::<u64>(),
            proptest::collection::vec(selection, 0..=MAX_BANKS as usize),
            bytes_up_to(MAX_DIGEST),
        )
            .prop_map(
                |(
                    qualified_signer,
                    extra_data,
                    (clock, reset_count, restart_count, safe),
                    firmware_version,
                    pcr_select,
                    pcr_digest,
                )| Attest {
                    qualified_signer,
                    extra_data,
                    clock_info: ClockInfo {
                        clock,
                        reset_count,
                        restart_count,
                        safe,
                    },
                    firmware_version,
                    pcr_select,
                    pcr_digest,
                },
            )
    }

    /// A TPMS_PCR_SELECTION as raw wire fields: any sizeofSelect the parser
    /// accepts and any bitmap, not only the 3-byte one [`marshal`] writes.
    fn arb_wire_selection() -> impl Strategy<Value = (u16, Vec<u8>)> {
        (any::<u16>(), bytes_up_to(MAX_SELECT_BYTES))
    }

    /// [`marshal`] with the PCR selections written as given.
    fn marshal_wire_selections(a: &Attest, selections: &[(u16, Vec<u8>)]) -> Vec<u8> {
        Quote {
            qualified_signer: a.qualified_signer.clone(),
            extra_data: a.extra_data.clone(),
            clock: a.clock_info.clock,
            reset_count: a.clock_info.reset_count,
            restart_count: a.clock_info.restart_count,
            safe: a.clock_info.safe,
            firmware_version: a.firmware_version,
            pcr_select: selections.to_vec(),
            pcr_digest: a.pcr_digest.clone(),
        }
        .marshal()
    }

    proptest! {
        #[test]
        fn marshalled_quotes_parse_back(a in arb_attest()) {
            let bytes = marshal(&a);
            prop_assert_eq!(Attest::parse(&bytes), Ok(a));
        }

        #[test]
        fn selections_of_any_size_parse_to_their_set_bits(
            a in arb_attest(),
            selections in proptest::collection::vec(arb_wire_selection(), 0..=MAX_BANKS as usize),
        ) {
            let parsed = Attest::parse(&marshal_wire_selections(&a, &selections));
            let expected: Vec<PcrSelection> = selections
                .iter()
                .map(|(hash_alg, bitmap)| PcrSelection {
                    hash_alg: *hash_alg,
                    pcrs: (0..bitmap.len() * 8)
                        .filter(|i| bitmap[i / 8] >> (i % 8) & 1 == 1)
                        .map(|i| i as u8)
                        .collect(),
                })
                .collect();
            prop_assert_eq!(parsed, Ok(Attest { pcr_select: expected, ..a }));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Attest::parse(&bytes);
        }

        #[test]
        fn mutated_quotes_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = marshal(&sample());
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            let _ = Attest::parse(&bytes);
        }
    }
}
