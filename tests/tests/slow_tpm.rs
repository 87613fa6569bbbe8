//! The `SlowTpm` fixture: a relay in front of swtpm that delays commands by
//! command code. These tests check the fixture's own properties (a delayed
//! command takes at least its delay, commands and responses arrive intact,
//! commands are counted), not any performance of aver.

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use aver_enclave::tpm::DEFAULT_AK_HANDLE;
use aver_enclave::Tpm;
use aver_tests::slow_tpm::{
    TPM2_CC_ACTIVATE_CREDENTIAL, TPM2_CC_CREATE_PRIMARY, TPM2_CC_GET_RANDOM, TPM2_CC_QUOTE,
};
use aver_tests::{require_swtpm, Delays, SlowTpm, Swtpm};
use p256::ecdsa::signature::Verifier as _;
use tss_esapi::traits::UnMarshall as _;

const PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 15];

#[test]
fn a_quote_through_the_relay_takes_at_least_the_delay_and_verifies() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let delay = Duration::from_millis(200);
    let slow = SlowTpm::start(&swtpm, Delays::quote(delay)).unwrap();
    assert_ne!(slow.tcti(), swtpm.tcti());

    // Opening creates the AK (CreatePrimary, Create, EvictControl...):
    // not delayed here, but counted.
    let mut tpm = Tpm::open(&slow.tcti(), DEFAULT_AK_HANDLE).unwrap();
    assert_eq!(slow.count(TPM2_CC_CREATE_PRIMARY), 1);
    assert_eq!(slow.count(TPM2_CC_QUOTE), 0);

    let t = Instant::now();
    let (attest, signature) = tpm.quote(&PCRS, &[7; 32]).unwrap();
    let elapsed = t.elapsed();
    assert!(
        elapsed >= delay,
        "quote took {elapsed:?}, less than {delay:?}"
    );
    assert_eq!(slow.count(TPM2_CC_QUOTE), 1);

    // The response arrived whole: the AK's signature over the quote
    // verifies, and the quote carries our qualifying data.
    verify(&tpm.ak_public_tpmt(), &attest, &signature);
    let quoted = aver_enclave::tpm::parse_quote(&attest).unwrap();
    assert_eq!(quoted.extra_data, [7; 32]);

    // A second quote is delayed and counted too; PCR reads are not delayed.
    let t = Instant::now();
    tpm.quote(&PCRS, &[8; 32]).unwrap();
    assert!(t.elapsed() >= delay);
    assert_eq!(slow.count(TPM2_CC_QUOTE), 2);
    let through_relay = tpm.read_pcrs(&PCRS).unwrap();
    let ak_name = tpm.ak_name().to_vec();
    drop(tpm);

    // The same TPM seen directly: same AK, same PCRs. Reopening loads the
    // persisted AK, so no CreatePrimary went through the relay this time.
    let mut direct = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap();
    assert_eq!(direct.ak_name(), ak_name.as_slice());
    assert_eq!(direct.read_pcrs(&PCRS).unwrap(), through_relay);
    assert_eq!(slow.count(TPM2_CC_CREATE_PRIMARY), 1);
}

#[test]
fn each_command_code_gets_its_own_delay_and_count() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let delays = Delays {
        quote: Duration::from_millis(300),
        create_primary: Duration::from_millis(150),
        activate_credential: Duration::from_millis(50),
        ..Delays::default()
    };
    assert_eq!(delays.of(TPM2_CC_QUOTE), Duration::from_millis(300));
    assert_eq!(
        delays.of(TPM2_CC_ACTIVATE_CREDENTIAL),
        Duration::from_millis(50)
    );
    assert_eq!(delays.of(TPM2_CC_GET_RANDOM), Duration::ZERO);
    let slow = SlowTpm::start(&swtpm, delays).unwrap();

    // CreatePrimary is delayed: opening (which creates the AK under a new
    // primary) takes at least its delay.
    let t = Instant::now();
    let tpm = Tpm::open(&slow.tcti(), DEFAULT_AK_HANDLE).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(slow.count(TPM2_CC_CREATE_PRIMARY), 1);
    drop(tpm);

    // Raw commands through tss-esapi: GetRandom answers intact and is
    // counted, once per call.
    let conf = tss_esapi::TctiNameConf::from_str(&slow.tcti()).unwrap();
    let mut context = tss_esapi::Context::new(conf).unwrap();
    let before = slow.count(TPM2_CC_GET_RANDOM);
    for n in [1usize, 16, 32] {
        let bytes = context.get_random(n).unwrap();
        assert_eq!(bytes.value().len(), n);
    }
    assert_eq!(slow.count(TPM2_CC_GET_RANDOM), before + 3);
    assert!(slow.counts().values().sum::<u64>() >= 4);
}

/// Checks an ECDSA-P256-SHA256 quote signature with the AK public area.
fn verify(ak_public: &[u8], attest: &[u8], signature: &[u8]) {
    use tss_esapi::structures::{Public, Signature};
    let Public::Ecc { unique, .. } = Public::unmarshall(ak_public).unwrap() else {
        panic!("AK is not ECC");
    };
    let mut sec1 = vec![0x04];
    sec1.extend(left_pad(unique.x().value()));
    sec1.extend(left_pad(unique.y().value()));
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();
    let Signature::EcDsa(signature) = Signature::unmarshall(signature).unwrap() else {
        panic!("quote is not signed with ECDSA");
    };
    let signature = p256::ecdsa::Signature::from_scalars(
        left_pad(signature.signature_r().value()),
        left_pad(signature.signature_s().value()),
    )
    .unwrap();
    key.verify(attest, &signature)
        .expect("the quote's signature verifies with the AK");
}

fn left_pad(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(bytes);
    out
}

/// A third party's PCR_Extend goes in between a connected client's
/// commands: the client's next read sees the PCR extended by exactly that
/// digest, and the client's connection keeps working.
#[test]
fn a_pcr_extended_behind_a_connected_client() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let relay = SlowTpm::start(&swtpm, Delays::default()).unwrap();
    // Without a client, on a connection of its own.
    relay.extend_pcr(16, [1; 32]).unwrap();
    let mut tpm = Tpm::open(&relay.tcti(), DEFAULT_AK_HANDLE).unwrap();
    let before = tpm.read_pcrs(&[16]).unwrap();
    relay.extend_pcr(16, [2; 32]).unwrap();
    let after = tpm.read_pcrs(&[16]).unwrap();
    use sha2::Digest as _;
    let expected: [u8; 32] = sha2::Sha256::new()
        .chain_update(before[0].1)
        .chain_update([2u8; 32])
        .finalize()
        .into();
    assert_eq!(after[0], (16, expected));
    let from_zero: [u8; 32] = sha2::Sha256::new()
        .chain_update([0u8; 32])
        .chain_update([1u8; 32])
        .finalize()
        .into();
    assert_eq!(before[0], (16, from_zero));
    // The TPM's answer is checked: an out-of-range PCR is refused.
    assert!(relay.extend_pcr(99, [3; 32]).is_err());
    tpm.quote(&[16], &[9; 32]).unwrap();
}
