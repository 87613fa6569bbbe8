//! `aver-enclave` against a real (software) TPM: the AK, PCR access, launch
//! measurement across restarts and reboots, and the evidence it produces.

use std::str::FromStr as _;

use aver_crds::Sha256Digest;
use aver_enclave::launch_log::{LaunchLogError, WorkloadPcr as _};
use aver_enclave::tpm::{parse_quote, pcr_digest, DEFAULT_AK_HANDLE};
use aver_enclave::{Enclave, LaunchConfig, LaunchError, Tpm, WorkloadInputs};
use aver_tests::{require_swtpm, Swtpm};
use aver_verifier::binding::{qualifying_data, Nonce};
use aver_verifier::eventlog::{
    extend, latest_launch, replay, LaunchMeasurements, LAUNCH_SEQUENCE_LEN,
};
use aver_verifier::Evidence;
use p256::ecdsa::signature::Verifier as _;
use tempfile::TempDir;
use tss_esapi::traits::UnMarshall as _;

const WORKLOAD_PCR: u8 = 15;
const QUOTE_PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 15];

/// A model directory and a state directory for one enclave.
struct Dirs {
    model: TempDir,
    state: TempDir,
}

impl Dirs {
    fn new() -> Self {
        let model = tempfile::tempdir().unwrap();
        std::fs::write(
            model.path().join("weights.safetensors"),
            b"not really weights",
        )
        .unwrap();
        std::fs::write(model.path().join("tokenizer.json"), b"{}").unwrap();
        Self {
            model,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, swtpm: &Swtpm) -> LaunchConfig {
        LaunchConfig {
            tcti: swtpm.tcti(),
            ak_handle: DEFAULT_AK_HANDLE,
            state_dir: self.state.path().to_owned(),
            workload_pcr: WORKLOAD_PCR,
            quote_pcrs: QUOTE_PCRS.to_vec(),
            max_launches: aver_enclave::launch_log::DEFAULT_MAX_LAUNCHES,
            workload: WorkloadInputs {
                engine_digest: Sha256Digest([0x42; 32]),
                model_dir: self.model.path().to_owned(),
                serving_config: None,
            },
        }
    }
}

fn workload_pcr(swtpm: &Swtpm) -> Sha256Digest {
    let mut tpm = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap();
    tpm.read(WORKLOAD_PCR).unwrap()
}

fn persistent_handles(swtpm: &Swtpm) -> Vec<u32> {
    use tss_esapi::constants::CapabilityType;
    use tss_esapi::structures::CapabilityData;
    let conf = tss_esapi::TctiNameConf::from_str(&swtpm.tcti()).unwrap();
    let mut context = tss_esapi::Context::new(conf).unwrap();
    let (data, _) = context
        .get_capability(CapabilityType::Handles, 0x8100_0000, 64)
        .unwrap();
    let CapabilityData::Handles(list) = data else {
        panic!("asked for handles, got {data:?}");
    };
    list.into_inner()
        .into_iter()
        .map(tss_esapi::tss2_esys::TPM2_HANDLE::from)
        .collect()
}

#[test]
fn ak_is_persisted_and_survives_restarts_and_reboots() {
    require_swtpm!();
    let mut swtpm = Swtpm::start().unwrap();
    assert!(persistent_handles(&swtpm).is_empty());

    let (first_public, first_name) = {
        let tpm = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap();
        (tpm.ak_public_tpmt(), tpm.ak_name().to_vec())
    };
    assert_eq!(persistent_handles(&swtpm), vec![DEFAULT_AK_HANDLE]);
    assert_eq!(first_name[..2], [0x00, 0x0b]);
    assert_eq!(
        first_name[2..],
        <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(&first_public))
    );

    // Restart of the process: loaded from the persistent handle.
    let again = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap();
    assert_eq!(again.ak_public_tpmt(), first_public);
    drop(again);
    assert_eq!(persistent_handles(&swtpm), vec![DEFAULT_AK_HANDLE]);

    // Reboot: still the same key.
    swtpm.restart().unwrap();
    let rebooted = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap();
    assert_eq!(rebooted.ak_public_tpmt(), first_public);
    drop(rebooted);

    // Another TPM has another endorsement seed, hence another AK.
    let other = Swtpm::start().unwrap();
    let other_tpm = Tpm::open(&other.tcti(), DEFAULT_AK_HANDLE).unwrap();
    assert_ne!(other_tpm.ak_public_tpmt(), first_public);

    // The AK is the template we promise: a restricted P-256 signing key
    // with ECDSA-SHA256, fixed to the TPM.
    let public = tss_esapi::structures::Public::unmarshall(&first_public).unwrap();
    let attributes = public.object_attributes();
    assert!(attributes.restricted() && attributes.sign_encrypt() && attributes.fixed_tpm());
    assert!(!attributes.decrypt());
    let tss_esapi::structures::Public::Ecc { parameters, .. } = public else {
        panic!("AK is not an ECC key: {public:?}");
    };
    assert_eq!(
        parameters.ecc_curve(),
        tss_esapi::interface_types::ecc::EccCurve::NistP256
    );
}

#[test]
fn a_foreign_key_at_the_ak_handle_is_refused() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    // Persist an unrestricted signing key where the AK should be.
    {
        use tss_esapi::interface_types::algorithm::HashingAlgorithm;
        use tss_esapi::interface_types::dynamic_handles::Persistent;
        use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
        use tss_esapi::interface_types::session_handles::AuthSession;
        use tss_esapi::structures::{EccScheme, HashScheme};
        let conf = tss_esapi::TctiNameConf::from_str(&swtpm.tcti()).unwrap();
        let mut context = tss_esapi::Context::new(conf).unwrap();
        let public = tss_esapi::utils::create_unrestricted_signing_ecc_public(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            tss_esapi::interface_types::ecc::EccCurve::NistP256,
        )
        .unwrap();
        context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                let key = ctx
                    .create_primary(Hierarchy::Endorsement, public, None, None, None, None)?
                    .key_handle;
                ctx.evict_control(
                    Provision::Owner,
                    key.into(),
                    Persistent::Persistent(
                        tss_esapi::handles::PersistentTpmHandle::new(DEFAULT_AK_HANDLE).unwrap(),
                    ),
                )?;
                ctx.flush_context(key.into())
            })
            .unwrap();
    }
    let error = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap_err();
    assert!(
        matches!(
            error,
            aver_enclave::TpmError::UnexpectedAk {
                handle: DEFAULT_AK_HANDLE,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn extend_and_read_agree_with_the_verifiers_extend() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap();

    let zero = Sha256Digest([0; 32]);
    assert_eq!(tpm.read(WORKLOAD_PCR).unwrap(), zero);
    let once = extend(&zero, &Sha256Digest([1; 32]));
    tpm.extend(WORKLOAD_PCR, &[1; 32]).unwrap();
    assert_eq!(tpm.read(WORKLOAD_PCR).unwrap(), once);
    tpm.extend(WORKLOAD_PCR, &[2; 32]).unwrap();
    let twice = extend(&once, &Sha256Digest([2; 32]));
    assert_eq!(tpm.read(WORKLOAD_PCR).unwrap(), twice);

    // More than one TPM2_PCR_Read's worth, out of order and repeated.
    let all: Vec<u8> = (0..24).rev().chain([15, 3]).collect();
    let values = tpm.read_pcrs(&all).unwrap();
    assert_eq!(
        values.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (0..24).collect::<Vec<_>>()
    );
    assert_eq!(values[15].1, twice.0);
    assert_eq!(values[14].1, [0; 32], "only the workload PCR was extended");
    assert!(tpm.read_pcrs(&[24]).is_err());
    assert!(tpm.extend(24, &[0; 32]).is_err());
}

#[test]
fn a_launch_appends_five_events_that_replay_to_the_pcr() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let dirs = Dirs::new();
    let enclave = Enclave::launch(&dirs.config(&swtpm)).unwrap();
    let log = enclave.log().entries().to_vec();
    let measurements = enclave.measurements().clone();
    assert_eq!(measurements.tls_spki, enclave.tls_key().spki_sha256());
    drop(enclave);

    assert_eq!(log.len(), LAUNCH_SEQUENCE_LEN);
    assert!(log.iter().all(|e| e.pcr == WORKLOAD_PCR));
    let pcr = workload_pcr(&swtpm);
    assert_eq!(pcr, replay(&log));
    assert_eq!(latest_launch(&log, WORKLOAD_PCR, &pcr), Ok(measurements));

    // The stored log is what the enclave holds.
    let stored: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dirs.state.path().join(aver_enclave::launch_log::LOG_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(stored["entries"], serde_json::to_value(&log).unwrap());
}

#[test]
fn a_restart_appends_a_second_launch_after_the_first() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let dirs = Dirs::new();
    let (first_log, first) = launch(&dirs, &swtpm);
    let (second_log, second) = launch(&dirs, &swtpm);

    assert_eq!(second_log.len(), 2 * LAUNCH_SEQUENCE_LEN);
    assert_eq!(&second_log[..LAUNCH_SEQUENCE_LEN], first_log.as_slice());
    assert_ne!(
        first.tls_spki, second.tls_spki,
        "each start has a new TLS key"
    );
    let pcr = workload_pcr(&swtpm);
    assert_eq!(pcr, replay(&second_log));
    assert_eq!(latest_launch(&second_log, WORKLOAD_PCR, &pcr), Ok(second));
}

#[test]
fn a_tpm_reset_starts_a_new_log() {
    require_swtpm!();
    let mut swtpm = Swtpm::start().unwrap();
    let dirs = Dirs::new();
    launch(&dirs, &swtpm);
    launch(&dirs, &swtpm);

    swtpm.restart().unwrap();
    assert_eq!(
        workload_pcr(&swtpm),
        Sha256Digest([0; 32]),
        "a reboot resets the PCR"
    );
    let (log, measurements) = launch(&dirs, &swtpm);
    assert_eq!(log.len(), LAUNCH_SEQUENCE_LEN);
    let pcr = workload_pcr(&swtpm);
    assert_eq!(pcr, replay(&log));
    assert_eq!(latest_launch(&log, WORKLOAD_PCR, &pcr), Ok(measurements));
}

#[test]
fn a_foreign_extend_is_kept_visible() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let dirs = Dirs::new();
    let (first_log, _) = launch(&dirs, &swtpm);
    {
        let mut tpm = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).unwrap();
        tpm.extend(WORKLOAD_PCR, &[0x66; 32]).unwrap();
    }
    let (log, _) = launch(&dirs, &swtpm);
    // The stored log is kept, so the foreign extend makes it fail to
    // replay: verifiers reject instead of trusting a rewritten history.
    assert_eq!(&log[..LAUNCH_SEQUENCE_LEN], first_log.as_slice());
    let pcr = workload_pcr(&swtpm);
    assert_ne!(replay(&log), pcr);
    assert!(latest_launch(&log, WORKLOAD_PCR, &pcr).is_err());
}

#[test]
fn two_enclaves_cannot_share_a_state_dir() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let dirs = Dirs::new();
    // Hold the state directory's lock as a running enclave does.
    let _held =
        std::fs::File::create(dirs.state.path().join(aver_enclave::launch_log::LOCK_FILE)).unwrap();
    _held.lock().unwrap();
    let error = Enclave::launch(&dirs.config(&swtpm)).unwrap_err();
    assert!(
        matches!(error, LaunchError::Log(LaunchLogError::Busy(_))),
        "{error}"
    );
    assert_eq!(
        workload_pcr(&swtpm),
        Sha256Digest([0; 32]),
        "nothing was extended"
    );
}

#[test]
fn evidence_binds_the_nonce_and_key_and_its_quote_verifies() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let dirs = Dirs::new();
    let mut enclave = Enclave::launch(&dirs.config(&swtpm)).unwrap();
    let nonce = Nonce::random();
    let evidence = enclave.evidence(&nonce).unwrap();
    let spki = enclave.tls_key().spki_sha256();

    assert_eq!(evidence.version, 1);
    assert_eq!(evidence.nonce, nonce);
    assert_eq!(evidence.spki_sha256, spki);
    assert_eq!(evidence.batch, None);
    assert_eq!(evidence.ak_public.0, enclave.ak_public());
    assert_eq!(evidence.event_log, enclave.log().entries());
    assert_eq!(
        evidence.pcrs.iter().map(|p| p.pcr).collect::<Vec<_>>(),
        QUOTE_PCRS.to_vec()
    );
    let workload = evidence
        .pcrs
        .iter()
        .find(|p| p.pcr == WORKLOAD_PCR)
        .unwrap();
    assert_eq!(
        latest_launch(&evidence.event_log, WORKLOAD_PCR, &workload.value).as_ref(),
        Ok(enclave.measurements())
    );

    // The quote carries the binding and the digest of the served PCRs.
    let quoted = parse_quote(&evidence.quote.attest.0).unwrap();
    assert_eq!(
        quoted.extra_data,
        qualifying_data(&nonce, &spki, None).unwrap()
    );
    assert_eq!(quoted.pcrs, QUOTE_PCRS.to_vec());
    let values: Vec<(u8, [u8; 32])> = evidence.pcrs.iter().map(|p| (p.pcr, p.value.0)).collect();
    assert_eq!(quoted.pcr_digest, pcr_digest(&values));

    // And the AK's ECDSA signature over it verifies.
    verify_signature(&evidence);

    // The JSON form round-trips through the verifier's parser.
    assert_eq!(
        Evidence::from_json(&evidence.to_json()),
        Ok(evidence.clone())
    );

    // A second nonce gets a different quote.
    let other = enclave.evidence(&Nonce::random()).unwrap();
    assert_ne!(other.quote.attest, evidence.quote.attest);
}

#[test]
fn the_workload_pcr_must_be_quoted() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let dirs = Dirs::new();
    let mut config = dirs.config(&swtpm);
    config.quote_pcrs = vec![0, 1, 2];
    assert!(matches!(
        Enclave::launch(&config),
        Err(LaunchError::WorkloadPcrNotQuoted { .. })
    ));
    assert_eq!(workload_pcr(&swtpm), Sha256Digest([0; 32]));
}

/// Launches once (and stops), returning the log and what was measured.
fn launch(
    dirs: &Dirs,
    swtpm: &Swtpm,
) -> (Vec<aver_verifier::eventlog::LogEntry>, LaunchMeasurements) {
    let enclave = Enclave::launch(&dirs.config(swtpm)).unwrap();
    (
        enclave.log().entries().to_vec(),
        enclave.measurements().clone(),
    )
}

/// Checks the quote's ECDSA-P256-SHA256 signature with the AK public key
/// from the evidence, independently of the enclave's code.
fn verify_signature(evidence: &Evidence) {
    use tss_esapi::structures::{Public, Signature};
    let Public::Ecc { unique, .. } = Public::unmarshall(&evidence.ak_public.0).unwrap() else {
        panic!("AK is not ECC");
    };
    let mut sec1 = vec![0x04];
    sec1.extend(left_pad(unique.x().value()));
    sec1.extend(left_pad(unique.y().value()));
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();

    let Signature::EcDsa(signature) = Signature::unmarshall(&evidence.quote.signature.0).unwrap()
    else {
        panic!("quote is not signed with ECDSA");
    };
    let signature = p256::ecdsa::Signature::from_scalars(
        left_pad(signature.signature_r().value()),
        left_pad(signature.signature_s().value()),
    )
    .unwrap();
    key.verify(&evidence.quote.attest.0, &signature)
        .expect("the quote's signature verifies with the AK");
    let mut tampered = evidence.quote.attest.0.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(key.verify(&tampered, &signature).is_err());
}

fn left_pad(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(bytes);
    out
}
