//! `aver tpm`: checking TPM structures made by other tools (tpm2-tools'
//! file formats), so that a quote taken on any machine can be verified here.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use aver_verifier::tpm::{alg, AkPublic, Attest, PcrSelection, Signature};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

use super::{read_input, CommandResult, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum TpmCommand {
    /// Verify a quote made with tpm2_quote: signature by the AK, qualifying
    /// data, and (with --pcrs) the PCR values against the quote's digest.
    #[command(long_about = CHECK_QUOTE_ABOUT)]
    CheckQuote(CheckQuoteArgs),
}

const CHECK_QUOTE_ABOUT: &str = "\
Verify a quote made with tpm2_quote, like tpm2_checkquote but with no native \
library. Exit 0: the quote is genuine (signed by the AK, which is a restricted \
signing key; qualifying data equal; PCR values, if given, hash to the quoted \
digest). Exit 1: one of these checks failed, named on stderr. Exit 2: an input \
could not be read or parsed.";

#[derive(clap::Args, Debug)]
pub struct CheckQuoteArgs {
    /// The AK's public area: TPM2B_PUBLIC (tpm2_createak -u) or TPMT_PUBLIC.
    #[arg(long, value_name = "FILE")]
    pub ak_public: PathBuf,
    /// The quoted TPMS_ATTEST (tpm2_quote -m).
    #[arg(long, value_name = "FILE")]
    pub quote: PathBuf,
    /// The TPMT_SIGNATURE (tpm2_quote -s).
    #[arg(long, value_name = "FILE")]
    pub signature: PathBuf,
    /// The PCR values (tpm2_quote -o, serialized or marshaled format).
    #[arg(long, value_name = "FILE")]
    pub pcrs: Option<PathBuf>,
    /// The qualifying data (nonce) given to tpm2_quote -q, in hex.
    #[arg(long, value_name = "HEX")]
    pub qualifying_data: String,
}

pub fn run(cmd: TpmCommand) -> CommandResult {
    match cmd {
        TpmCommand::CheckQuote(args) => check_quote(args),
    }
}

fn check_quote(args: CheckQuoteArgs) -> CommandResult {
    let ak_bytes = read_input(&args.ak_public, "AK public")?;
    let ak = parse_ak_public(&ak_bytes)
        .with_context(|| format!("AK public {}", args.ak_public.display()))?;
    let quote_bytes = read_input(&args.quote, "quote")?;
    let attest =
        Attest::parse(&quote_bytes).with_context(|| format!("quote {}", args.quote.display()))?;
    let signature = Signature::parse(&read_input(&args.signature, "signature")?)
        .with_context(|| format!("signature {}", args.signature.display()))?;
    let nonce = hex::decode(args.qualifying_data.trim().trim_start_matches("0x"))
        .context("--qualifying-data is not hex")?;
    let pcr_values = match &args.pcrs {
        Some(path) => Some(
            parse_pcr_file(&read_input(path, "PCR file")?)
                .with_context(|| format!("PCR file {}", path.display()))?,
        ),
        None => None,
    };

    let mut report = String::new();
    let _ = writeln!(report, "AK name: {}", ak.name_hex());
    let _ = writeln!(
        report,
        "PCR selection: {}",
        describe_selection(&attest.pcr_select)
    );
    let clock = attest.clock_info;
    let _ = writeln!(
        report,
        "clock: {} ms, resetCount {}, restartCount {}, safe {}",
        clock.clock,
        clock.reset_count,
        clock.restart_count,
        if clock.safe { "yes" } else { "no" }
    );
    let _ = writeln!(
        report,
        "firmware version: {:#018x}",
        attest.firmware_version
    );
    print!("{report}");

    if !signature.verifies(&ak.key, &quote_bytes) {
        return Err(Failure::Failed(
            "signature check failed: the signature does not verify with the AK over the quote"
                .into(),
        ));
    }
    if !ak.is_attestation_key() {
        return Err(Failure::Failed(
            "AK check failed: the key is not a restricted, fixedTPM signing key, so its signature does not prove the TPM made the quote".into(),
        ));
    }
    if attest.extra_data != nonce {
        return Err(Failure::Failed(format!(
            "qualifying data check failed: the quote holds {}, not {}",
            hex::encode(&attest.extra_data),
            hex::encode(&nonce)
        )));
    }
    if let Some(file) = pcr_values {
        check_pcrs(&attest, &file)?;
        println!("PCR values: match the quoted digest");
        for (bank, pcr, value) in file.values(&attest.pcr_select) {
            println!("  {}:{pcr} {}", bank_name(bank), hex::encode(value));
        }
    }
    println!("quote: genuine");
    Ok(())
}

/// TPM2B_PUBLIC (as tpm2_createak writes it) or TPMT_PUBLIC.
fn parse_ak_public(bytes: &[u8]) -> anyhow::Result<AkPublic> {
    match AkPublic::parse(bytes) {
        Ok(ak) => Ok(ak),
        Err(e) => match bytes {
            [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
                Ok(AkPublic::parse(rest)?)
            }
            _ => Err(e.into()),
        },
    }
}

/// The PCR selection and values of a `tpm2_quote -o` file.
#[derive(Debug)]
struct PcrFile {
    selection: Vec<PcrSelection>,
    /// In selection order: banks as listed, PCRs ascending.
    digests: Vec<Vec<u8>>,
}

impl PcrFile {
    fn values<'a>(
        &'a self,
        selection: &'a [PcrSelection],
    ) -> impl Iterator<Item = (u16, u8, &'a [u8])> + 'a {
        selection
            .iter()
            .flat_map(|s| s.pcrs.iter().map(move |p| (s.hash_alg, *p)))
            .zip(&self.digests)
            .map(|((bank, pcr), d)| (bank, pcr, d.as_slice()))
    }
}

/// tpm2-tools' sizes: TPML_PCR_SELECTION holds 16 TPMS_PCR_SELECTION of
/// 2 + 1 + 4 bytes (padded to 8 in the C layout); TPML_DIGEST holds 8
/// TPM2B_DIGEST of 2 + 64 bytes.
const SELECTIONS_MAX: usize = 16;
const SELECT_MAX: usize = 4;
const DIGESTS_PER_LIST: usize = 8;
const DIGEST_MAX: usize = 64;
const SERIALIZED_SELECTION: usize = 4 + SELECTIONS_MAX * 8;
const SERIALIZED_DIGEST_LIST: usize = 4 + DIGESTS_PER_LIST * (2 + DIGEST_MAX);

/// Reads `tpm2_quote -o`: the "serialized" format (the C structures in
/// little endian, tpm2-tools 5.x default) or the "marshaled" one (TSS2
/// marshaling: TPML_PCR_SELECTION, a UINT32 count, that many TPML_DIGEST).
fn parse_pcr_file(bytes: &[u8]) -> anyhow::Result<PcrFile> {
    let serialized = bytes.len() >= SERIALIZED_SELECTION + 4
        && (bytes.len() - SERIALIZED_SELECTION - 4).is_multiple_of(SERIALIZED_DIGEST_LIST)
        // A little-endian count of at least one; the marshaled (big-endian)
        // count starts with a zero byte.
        && bytes[0] != 0;
    if serialized {
        parse_serialized(bytes)
    } else {
        parse_marshaled(bytes)
    }
    .context("not a tpm2_quote -o PCR file (serialized or marshaled)")
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn bitmap_pcrs(bitmap: &[u8]) -> Vec<u8> {
    (0..bitmap.len() * 8)
        .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
        .map(|i| i as u8)
        .collect()
}

fn parse_serialized(b: &[u8]) -> anyhow::Result<PcrFile> {
    let count = le_u32(b, 0) as usize;
    if count > SELECTIONS_MAX {
        bail!("{count} PCR selections, more than {SELECTIONS_MAX}");
    }
    let mut selection = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        let size = usize::from(b[at + 2]);
        if size > SELECT_MAX {
            bail!("sizeofSelect {size} is more than {SELECT_MAX}");
        }
        selection.push(PcrSelection {
            hash_alg: le_u16(b, at),
            pcrs: bitmap_pcrs(&b[at + 3..at + 3 + size]),
        });
    }
    let lists = le_u32(b, SERIALIZED_SELECTION) as usize;
    if SERIALIZED_SELECTION + 4 + lists * SERIALIZED_DIGEST_LIST != b.len() {
        bail!("{lists} digest lists do not fill the file");
    }
    let mut digests = Vec::new();
    for l in 0..lists {
        let at = SERIALIZED_SELECTION + 4 + l * SERIALIZED_DIGEST_LIST;
        let n = le_u32(b, at) as usize;
        if n > DIGESTS_PER_LIST {
            bail!("a digest list holds {n} digests, more than {DIGESTS_PER_LIST}");
        }
        for d in 0..n {
            let at = at + 4 + d * (2 + DIGEST_MAX);
            let size = usize::from(le_u16(b, at));
            if size > DIGEST_MAX {
                bail!("a digest of {size} bytes, more than {DIGEST_MAX}");
            }
            digests.push(b[at + 2..at + 2 + size].to_vec());
        }
    }
    Ok(PcrFile { selection, digests })
}

struct BeReader<'a>(&'a [u8]);

impl BeReader<'_> {
    fn take(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        if self.0.len() < n {
            bail!("truncated");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> anyhow::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn parse_marshaled(b: &[u8]) -> anyhow::Result<PcrFile> {
    let mut r = BeReader(b);
    let count = r.u32()? as usize;
    if count > SELECTIONS_MAX {
        bail!("{count} PCR selections, more than {SELECTIONS_MAX}");
    }
    let mut selection = Vec::with_capacity(count);
    for _ in 0..count {
        let hash_alg = r.u16()?;
        let size = usize::from(r.u8()?);
        if size > SELECT_MAX {
            bail!("sizeofSelect {size} is more than {SELECT_MAX}");
        }
        let pcrs = bitmap_pcrs(r.take(size)?);
        selection.push(PcrSelection { hash_alg, pcrs });
    }
    let lists = r.u32()? as usize;
    if lists > SELECTIONS_MAX * 32 / DIGESTS_PER_LIST {
        bail!("{lists} digest lists");
    }
    let mut digests = Vec::new();
    for _ in 0..lists {
        let n = r.u32()? as usize;
        if n > DIGESTS_PER_LIST {
            bail!("a digest list holds {n} digests, more than {DIGESTS_PER_LIST}");
        }
        for _ in 0..n {
            let size = usize::from(r.u16()?);
            if size > DIGEST_MAX {
                bail!("a digest of {size} bytes, more than {DIGEST_MAX}");
            }
            digests.push(r.take(size)?.to_vec());
        }
    }
    if !r.0.is_empty() {
        bail!("{} trailing bytes", r.0.len());
    }
    Ok(PcrFile { selection, digests })
}

fn non_empty(selection: &[PcrSelection]) -> Vec<&PcrSelection> {
    selection.iter().filter(|s| !s.pcrs.is_empty()).collect()
}

/// The PCR values must be those of the quoted selection, each the size of
/// its bank, and hash (with the quote's digest algorithm) to pcrDigest.
fn check_pcrs(attest: &Attest, file: &PcrFile) -> Result<(), Failure> {
    let quoted = non_empty(&attest.pcr_select);
    if quoted != non_empty(&file.selection) {
        return Err(Failure::Failed(format!(
            "PCR check failed: the PCR file is for {}, the quote for {}",
            describe_selection(&file.selection),
            describe_selection(&attest.pcr_select)
        )));
    }
    let expected: usize = quoted.iter().map(|s| s.pcrs.len()).sum();
    if file.digests.len() != expected {
        return Err(Failure::Failed(format!(
            "PCR check failed: the PCR file holds {} values for {expected} quoted PCRs",
            file.digests.len()
        )));
    }
    for (bank, pcr, value) in file.values(&attest.pcr_select) {
        if bank_digest_size(bank).is_some_and(|size| size != value.len()) {
            return Err(Failure::Failed(format!(
                "PCR check failed: {}:{pcr} is {} bytes",
                bank_name(bank),
                value.len()
            )));
        }
    }
    let concatenated: Vec<u8> = file.digests.concat();
    let digest = match attest.pcr_digest.len() {
        32 => Sha256::digest(&concatenated).to_vec(),
        48 => Sha384::digest(&concatenated).to_vec(),
        64 => Sha512::digest(&concatenated).to_vec(),
        n => {
            return Err(Failure::Input(anyhow::anyhow!(
                "the quote's pcrDigest is {n} bytes, a digest this verifier cannot recompute"
            )))
        }
    };
    if digest != attest.pcr_digest {
        return Err(Failure::Failed(format!(
            "PCR check failed: the PCR values hash to {}, the quote's pcrDigest is {}",
            hex::encode(digest),
            hex::encode(&attest.pcr_digest)
        )));
    }
    Ok(())
}

const SHA1: u16 = 0x0004;
const SHA384: u16 = 0x000C;
const SHA512: u16 = 0x000D;
const SM3_256: u16 = 0x0012;

fn bank_name(hash_alg: u16) -> String {
    match hash_alg {
        SHA1 => "sha1".into(),
        alg::SHA256 => "sha256".into(),
        SHA384 => "sha384".into(),
        SHA512 => "sha512".into(),
        SM3_256 => "sm3_256".into(),
        other => format!("{other:#06x}"),
    }
}

fn bank_digest_size(hash_alg: u16) -> Option<usize> {
    match hash_alg {
        SHA1 => Some(20),
        alg::SHA256 | SM3_256 => Some(32),
        SHA384 => Some(48),
        SHA512 => Some(64),
        _ => None,
    }
}

/// `sha256:0,1,2,7+sha1:0`, the tpm2-tools notation.
fn describe_selection(selection: &[PcrSelection]) -> String {
    let banks: Vec<String> = non_empty(selection)
        .iter()
        .map(|s| {
            let pcrs: Vec<String> = s.pcrs.iter().map(u8::to_string).collect();
            format!("{}:{}", bank_name(s.hash_alg), pcrs.join(","))
        })
        .collect();
    if banks.is_empty() {
        "none".into()
    } else {
        banks.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialized(selection: &[(u16, &[u8])], digests: &[&[u8]]) -> Vec<u8> {
        let mut b = (selection.len() as u32).to_le_bytes().to_vec();
        for i in 0..SELECTIONS_MAX {
            let mut entry = [0u8; 8];
            if let Some((hash, bitmap)) = selection.get(i) {
                entry[..2].copy_from_slice(&hash.to_le_bytes());
                entry[2] = bitmap.len() as u8;
                entry[3..3 + bitmap.len()].copy_from_slice(bitmap);
            }
            b.extend_from_slice(&entry);
        }
        let chunks: Vec<&[&[u8]]> = digests.chunks(DIGESTS_PER_LIST).collect();
        b.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for chunk in chunks {
            let mut list = vec![0u8; SERIALIZED_DIGEST_LIST];
            list[..4].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
            for (i, d) in chunk.iter().enumerate() {
                let at = 4 + i * (2 + DIGEST_MAX);
                list[at..at + 2].copy_from_slice(&(d.len() as u16).to_le_bytes());
                list[at + 2..at + 2 + d.len()].copy_from_slice(d);
            }
            b.extend_from_slice(&list);
        }
        b
    }

    #[test]
    fn reads_the_serialized_format() {
        let d: &[u8] = &[7u8; 32];
        let file = parse_pcr_file(&serialized(&[(alg::SHA256, &[0x87, 0, 0])], &[d; 4])).unwrap();
        assert_eq!(file.selection[0].pcrs, vec![0, 1, 2, 7]);
        assert_eq!(file.digests.len(), 4);
        assert_eq!(file.digests[3], d);
    }

    #[test]
    fn reads_the_marshaled_format() {
        let mut b = vec![
            0, 0, 0, 1, 0x00, 0x0b, 3, 0x03, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2,
        ];
        for v in [1u8, 2] {
            b.extend_from_slice(&[0, 32]);
            b.extend_from_slice(&[v; 32]);
        }
        let file = parse_pcr_file(&b).unwrap();
        assert_eq!(file.selection[0].pcrs, vec![0, 1]);
        assert_eq!(file.digests, vec![vec![1u8; 32], vec![2u8; 32]]);
    }

    #[test]
    fn rejects_garbage_pcr_files() {
        assert!(parse_pcr_file(b"").is_err());
        assert!(parse_pcr_file(&[0xff; 668]).is_err());
        assert!(parse_pcr_file(&[0, 0, 0, 1, 0, 0x0b, 9]).is_err());
    }

    #[test]
    fn strips_a_tpm2b_size_prefix_only_when_it_fits() {
        assert!(parse_ak_public(&[0, 3, 1, 2, 3]).is_err());
        assert!(parse_ak_public(&[0, 9, 1, 2, 3]).is_err());
    }
}
