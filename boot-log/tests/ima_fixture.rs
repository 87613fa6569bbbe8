//! The real list captured from Debian's 6.1 kernel (`ima_policy=tcb
//! ima_hash=sha256 ima_template=ima-ng`), checked against the firmware
//! PCRs of the same boot.

use std::collections::BTreeMap;
use std::path::Path;

use aver_boot_log::ima::{boot_aggregate_sha256, ImaLog, Template, IMA_PCR};
use sha2::{Digest, Sha256};

const FIXTURE: &[u8] = include_bytes!("../testdata/ima-ng-initramfs.bin");
const EVENTLOG_YAML: &str = include_str!("../testdata/ovmf-q35-swtpm.tpm2_eventlog.yaml");

const BUSYBOX_SHA256: &str = "3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6";

/// The `sha256:` bank of the final `pcrs:` section of `tpm2_eventlog`'s
/// output, read by hand (`N : 0x<hex>` lines).
fn yaml_sha256_pcrs(yaml: &str) -> BTreeMap<u8, [u8; 32]> {
    let mut lines = yaml.lines().skip_while(|l| *l != "pcrs:");
    assert!(lines.next().is_some(), "no pcrs: section");
    let mut in_sha256 = false;
    let mut pcrs = BTreeMap::new();
    for line in lines {
        let trimmed = line.trim();
        if !line.starts_with("    ") {
            in_sha256 = trimmed == "sha256:";
            continue;
        }
        if !in_sha256 {
            continue;
        }
        let (index, value) = trimmed.split_once(':').expect("PCR line");
        let index: u8 = index.trim().parse().expect("PCR index");
        let value = value.trim().strip_prefix("0x").expect("0x prefix");
        let value: [u8; 32] = hex::decode(value)
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        pcrs.insert(index, value);
    }
    pcrs
}

#[test]
fn fixture_parses_with_its_three_entries() {
    let log = ImaLog::parse(FIXTURE).expect("fixture parses");
    assert_eq!(log.len(), 3);
    let paths: Vec<_> = log.entries().iter().map(|e| e.path().unwrap()).collect();
    assert_eq!(paths, ["boot_aggregate", "/init", "/bin/busybox"]);
    for e in log.entries() {
        assert_eq!(e.pcr(), u32::from(IMA_PCR));
        assert_eq!(e.template_name(), "ima-ng");
        assert_eq!(e.template(), Template::ImaNg);
        assert!(!e.is_violation());
        assert_eq!(e.signature(), None);
        assert_eq!(e.buffer(), None);
        let (alg, digest) = e.file_digest().unwrap();
        assert_eq!(alg, "sha256");
        assert_eq!(digest.len(), 32);
        // The parser checked this; check it independently here.
        let sha1: [u8; 20] = sha1::Sha1::digest(e.template_data()).into();
        assert_eq!(&sha1, e.template_digest());
    }
    let digests: Vec<_> = log
        .entries()
        .iter()
        .map(|e| hex::encode(e.file_digest().unwrap().1))
        .collect();
    assert_eq!(
        digests,
        [
            "b57d5f74d1eee0076ccd35cbb86f9e5a89d94e673bb5ae777062556ed663001c",
            "ed891f0bd9ed0773561b7244e5fbccecc64166aff8dc1f534a137136a7cf351d",
            BUSYBOX_SHA256,
        ]
    );
    assert_eq!(
        hex::encode(log.entries()[0].template_digest()),
        "7eede635eb9554f135afe63df75e71c13805e0fd"
    );
    assert!(log.entries()[0].is_boot_aggregate());
    assert!(!log.entries()[1].is_boot_aggregate());
    assert_eq!(log.pcrs().into_iter().collect::<Vec<_>>(), [10]);
}

#[test]
fn fixture_boot_aggregate_is_sha256_of_pcrs_0_to_9() {
    let log = ImaLog::parse(FIXTURE).unwrap();
    let (alg, listed) = log.boot_aggregate().expect("first entry is boot_aggregate");
    assert_eq!(alg, "sha256");

    let pcrs = yaml_sha256_pcrs(EVENTLOG_YAML);
    assert_eq!(
        pcrs.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6, 7, 9]
    );
    // PCR 8 was never extended in this boot, so it holds zeros;
    // tpm2_eventlog only prints the PCRs the log extends.
    let value = |i: u8| Some(pcrs.get(&i).copied().unwrap_or([0u8; 32]));
    let computed = boot_aggregate_sha256(value).unwrap();
    assert_eq!(hex::encode(computed), hex::encode(listed));

    // And the kernel does include 8 and 9 for the SHA-256 bank: PCRs 0–7
    // alone do not give the listed value.
    let mut h = Sha256::new();
    for i in 0..8u8 {
        h.update(value(i).unwrap());
    }
    let only_0_to_7: [u8; 32] = h.finalize().into();
    assert_ne!(&only_0_to_7[..], listed);

    // A missing PCR is not silently zero.
    assert_eq!(boot_aggregate_sha256(|i| pcrs.get(&i).copied()), None);
    // Any changed PCR changes the aggregate.
    for changed in 0..10u8 {
        let other = boot_aggregate_sha256(|i| {
            let mut v = value(i)?;
            if i == changed {
                v[0] ^= 1;
            }
            Some(v)
        })
        .unwrap();
        assert_ne!(other, computed, "PCR {changed}");
    }
}

#[test]
fn fixture_replay_is_manual_extension() {
    let log = ImaLog::parse(FIXTURE).unwrap();
    let mut pcr = [0u8; 32];
    let mut pcr1 = [0u8; 20];
    for e in log.entries() {
        let m: [u8; 32] = Sha256::digest(e.template_data()).into();
        pcr = Sha256::digest([pcr, m].concat()).into();
        pcr1 = sha1::Sha1::digest([&pcr1[..], &e.template_digest()[..]].concat()).into();
    }
    assert_eq!(log.replay_sha256(IMA_PCR), pcr);
    assert_eq!(log.replay_sha1(IMA_PCR), pcr1);
    // Independently computed golden values.
    assert_eq!(
        hex::encode(pcr),
        "366f0a5573d2b19dabc0e3e4ec143917785b43a76bf24d47cd6a6c13c814507e"
    );
    assert_eq!(
        hex::encode(pcr1),
        "d20710d3689d2a609754cf0a58a1b1857de2cddd"
    );
    assert_eq!(log.replay_sha256(11), [0u8; 32]);
}

/// The fixture's `/bin/busybox` was Debian bookworm's busybox-static; when
/// this machine has the same build, its hash must be the listed one.
#[test]
fn fixture_busybox_digest_matches_local_busybox_when_same_build() {
    let log = ImaLog::parse(FIXTURE).unwrap();
    let listed = hex::encode(log.entries()[2].file_digest().unwrap().1);
    let path = Path::new("/bin/busybox");
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipping: cannot read {}: {e}", path.display());
            return;
        }
    };
    let local = hex::encode(Sha256::digest(&bytes));
    if local != listed {
        eprintln!(
            "skipping: local {} is another build (sha256 {local}, the fixture's is {listed})",
            path.display()
        );
        return;
    }
    // Same build: the IMA file digest is the plain SHA-256 of the content.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    std::fs::write(dir.path().join("bin/busybox"), &bytes).unwrap();
    let allow = aver_boot_log::ima::Allowlist::from_rootfs(dir.path()).unwrap();
    let err = allow.check(&log).unwrap_err();
    // /init is not in this root file system: refused, naming entry 1.
    assert!(err.to_string().contains("entry 1: /init"), "{err}");
    let mut allow = allow;
    let init: [u8; 32] = log.entries()[1]
        .file_digest()
        .unwrap()
        .1
        .try_into()
        .unwrap();
    allow.insert("/init".into(), init).unwrap();
    let checked = allow.check(&log).unwrap();
    assert_eq!(checked.measured_files, 2);
    assert_eq!(checked.distinct_paths, 2);
}

#[test]
fn the_prefix_a_quote_covers_is_found_and_nothing_else_is() {
    let log = ImaLog::parse(FIXTURE).unwrap();
    let full = log.replay_sha256(IMA_PCR);
    let covered = log.prefix_replaying_to(IMA_PCR, &full).unwrap();
    assert_eq!(covered, log);

    // A quote taken after the first two entries covers exactly those.
    let two = ImaLog::parse(&entry_bytes(FIXTURE, 2)).unwrap();
    let quoted = two.replay_sha256(IMA_PCR);
    let covered = log.prefix_replaying_to(IMA_PCR, &quoted).unwrap();
    assert_eq!(covered.len(), 2);
    assert_eq!(covered, two);

    assert_eq!(log.prefix_replaying_to(IMA_PCR, &[0; 32]).unwrap().len(), 0);
    assert!(log.prefix_replaying_to(IMA_PCR, &[7; 32]).is_none());
}

/// The bytes of the first `n` entries of a list.
fn entry_bytes(list: &[u8], n: usize) -> Vec<u8> {
    let mut offset = 0;
    let u32_at = |o: usize| u32::from_le_bytes(list[o..o + 4].try_into().unwrap()) as usize;
    for _ in 0..n {
        offset += 4 + 20;
        offset += 4 + u32_at(offset);
        offset += 4 + u32_at(offset);
    }
    list[..offset].to_vec()
}
