//! Reference values written from a known-good node: the boot policy a
//! firmware event log yields and the runtime allow-list a node image yields.
//!
//! Both are only as good as their source. A log from a node that was
//! already compromised yields a policy that accepts that compromise; the
//! values are a starting point to review (and to compare with the vendor's
//! published digests), not a proof of anything.

use std::path::Path;

use aver_boot_log::ima::{Allowlist, AllowlistError};
use aver_boot_log::uefi::{
    EventData, EventLog, EventType, Guid, HashAlg, UefiLogError, LINUX_INITRD_TAG,
    LINUX_LOAD_OPTIONS_TAG,
};
use aver_crds::boot_policy::MAX_RUNTIME_FILES;
use aver_crds::{AllowedFile, BootPolicy, RuntimePolicy, SecureBoot, Sha256Digest};
use sha2::{Digest, Sha256};

/// What QEMU's direct kernel boot (`-kernel … -initrd …`) appends to the
/// command line it hands the EFI stub, and so to `/proc/cmdline`.
pub const QEMU_INITRD_SUFFIX: &str = " initrd=initrd";

/// The prefix grub gives the kernel command line it measures as EV_IPL
/// text into PCR 8.
pub const GRUB_KERNEL_CMDLINE_PREFIX: &str = "kernel_cmdline: ";

/// One value written into a policy, in words: which rule, the value, and
/// where in the log (or the file system) it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The policy field, as spelled in YAML (`initrdDigests`).
    pub rule: String,
    /// The value written (a digest, a command line, `[]`), or `not written`
    /// for a rule the source cannot support.
    pub value: String,
    /// What the value is and where it came from.
    pub why: String,
}

impl Explanation {
    fn new(rule: &str, value: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            rule: rule.to_owned(),
            value: value.into(),
            why: why.into(),
        }
    }
}

/// Why reference values could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// Policies list SHA-256 digests; a log without that bank (a SHA-1
    /// legacy log) cannot give them.
    #[error(
        "the event log has no sha256 digests (banks: {banks}): boot policies list SHA-256 values"
    )]
    NoSha256Bank { banks: String },
    /// An event the policy is written from does not decode.
    #[error("{0}")]
    BadEvent(#[from] UefiLogError),
    /// A PK/KEK/db/dbx variable's signature lists do not parse.
    #[error("event {index} ({variable}): {source}")]
    BadSignatureList {
        index: usize,
        variable: String,
        #[source]
        source: UefiLogError,
    },
    /// The SecureBoot variable holds neither 0 nor 1.
    #[error("event {index}: the SecureBoot variable holds {value}, neither 0 (disabled) nor 1 (enabled)")]
    BadSecureBoot { index: usize, value: String },
    /// The log measures the same variable twice with different values.
    #[error("the log measures {what} differently in events {first} and {second}: not a single boot to take values from")]
    Conflicting {
        what: String,
        first: usize,
        second: usize,
    },
    /// The given command line is not the one the EFI stub measured.
    #[error("the given kernel command line is not the one measured in PCR 9 (event {index}, sha256:{measured}): {hint}")]
    CmdlineMismatch {
        index: usize,
        measured: String,
        hint: String,
    },
    /// The given command line is not one grub measured (and no EFI stub
    /// event exists to check it against).
    #[error("the given kernel command line is not the one grub measured in PCR 8 (event {index}: {measured:?})")]
    CmdlineNotGrubs { index: usize, measured: String },
    /// A command line was given but the log measures none to check it
    /// against.
    #[error("a kernel command line was given but the event log measures none (no EFI stub event in PCR 9, no grub kernel_cmdline in PCR 8): it cannot be checked, so it is not written")]
    CmdlineNotMeasured,
    /// Walking or hashing the root file system failed.
    #[error("{0}")]
    Rootfs(#[from] AllowlistError),
    /// The root file system holds no regular file.
    #[error("{dir} holds no regular file: a runtime policy must allow at least one")]
    EmptyRootfs { dir: String },
    /// More files than a runtime policy may list.
    #[error("{dir} holds {count} files, more than the {max} a runtime policy may list")]
    TooManyFiles {
        dir: String,
        count: usize,
        max: usize,
    },
}

/// The SHA-256 of a command line as Linux's EFI stub measures it: the
/// image's LoadOptions, UTF-16LE with its UTF-16 NUL.
pub fn efi_stub_cmdline_digest(cmdline: &str) -> [u8; 32] {
    utf16_digest(cmdline, true)
}

fn utf16_digest(text: &str, nul: bool) -> [u8; 32] {
    let mut h = Sha256::new();
    for unit in text.encode_utf16() {
        h.update(unit.to_le_bytes());
    }
    if nul {
        h.update([0, 0]);
    }
    h.finalize().into()
}

/// Whether `cmdline` is what a stub event with this digest measured (with
/// the UTF-16 NUL, as Linux does, or without, as some loaders pass it).
fn cmdline_matches(cmdline: &str, measured: &[u8; 32]) -> bool {
    utf16_digest(cmdline, true) == *measured || utf16_digest(cmdline, false) == *measured
}

fn sha256_of(e: &aver_boot_log::uefi::Event) -> Result<Sha256Digest, ReferenceError> {
    // The parser gives every record a digest of each bank the log
    // declares, and the bank was checked to be there.
    e.digest(HashAlg::Sha256)
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .map(Sha256Digest)
        .ok_or(ReferenceError::BadEvent(UefiLogError::BankNotInLog(
            HashAlg::Sha256,
        )))
}

fn push_unique(list: &mut Vec<Sha256Digest>, d: Sha256Digest) -> bool {
    if list.contains(&d) {
        false
    } else {
        list.push(d);
        true
    }
}

/// A measured Secure Boot database variable, by policy field.
struct Database {
    rule: &'static str,
    guid: Guid,
    name: &'static str,
}

const DATABASES: [Database; 4] = [
    Database {
        rule: "pk",
        guid: Guid::EFI_GLOBAL_VARIABLE,
        name: "PK",
    },
    Database {
        rule: "kek",
        guid: Guid::EFI_GLOBAL_VARIABLE,
        name: "KEK",
    },
    Database {
        rule: "db",
        guid: Guid::EFI_IMAGE_SECURITY_DATABASE_GUID,
        name: "db",
    },
    Database {
        rule: "dbx",
        guid: Guid::EFI_IMAGE_SECURITY_DATABASE_GUID,
        name: "dbx",
    },
];

/// The boot policy a known-good boot's firmware event log supports, and
/// for every rule (written or left out) an explanation.
///
/// `cmdline` is the kernel command line the node booted with
/// (`/proc/cmdline` on the node): Linux's EFI stub measures only its
/// digest, so the log alone cannot give the text. It is checked against
/// that digest and refused if it does not match. Without it the command
/// line is taken from grub's PCR 8 text when the log has only that, and
/// left out otherwise.
pub fn boot_policy_from_log(
    log: &EventLog,
    cmdline: Option<&str>,
) -> Result<(BootPolicy, Vec<Explanation>), ReferenceError> {
    if !log.banks().contains(&HashAlg::Sha256) {
        let banks: Vec<&str> = log.banks().iter().map(|b| b.name()).collect();
        return Err(ReferenceError::NoSha256Bank {
            banks: banks.join(", "),
        });
    }
    let mut policy = BootPolicy::default();
    let mut why = Vec::new();
    secure_boot(log, &mut policy, &mut why)?;
    databases(log, &mut policy, &mut why)?;
    boot_applications(log, &mut policy, &mut why)?;
    kernel_cmdlines(log, cmdline, &mut policy, &mut why)?;
    initrds(log, &mut policy, &mut why)?;
    Ok((policy, why))
}

/// The PCR 7 EV_EFI_VARIABLE_DRIVER_CONFIG events, decoded.
fn pcr7_variables(
    log: &EventLog,
) -> Result<Vec<(usize, aver_boot_log::uefi::EfiVariable)>, ReferenceError> {
    let mut out = Vec::new();
    for e in log.events() {
        if e.pcr != 7 || e.event_type != EventType::EV_EFI_VARIABLE_DRIVER_CONFIG {
            continue;
        }
        if let EventData::Variable(v) = e.decode()? {
            out.push((e.index, v));
        }
    }
    Ok(out)
}

fn secure_boot(
    log: &EventLog,
    policy: &mut BootPolicy,
    why: &mut Vec<Explanation>,
) -> Result<(), ReferenceError> {
    let mut found: Option<(usize, bool)> = None;
    for (index, v) in pcr7_variables(log)? {
        if !v.is_secure_boot() {
            continue;
        }
        let on = v
            .secure_boot_enabled()
            .ok_or_else(|| ReferenceError::BadSecureBoot {
                index,
                value: hex::encode(&v.data),
            })?;
        match found {
            Some((first, was)) if was != on => {
                return Err(ReferenceError::Conflicting {
                    what: "SecureBoot".into(),
                    first,
                    second: index,
                })
            }
            Some(_) => {}
            None => found = Some((index, on)),
        }
    }
    match found {
        Some((index, on)) => {
            let state = if on {
                SecureBoot::Enabled
            } else {
                SecureBoot::Disabled
            };
            policy.secure_boot = Some(state);
            why.push(Explanation::new(
                "secureBoot",
                if on { "enabled" } else { "disabled" },
                format!(
                    "the SecureBoot variable firmware measured into PCR 7 (event {index}) {}",
                    if on {
                        "was 1: firmware verified boot applications against db and dbx"
                    } else {
                        "was 0 or empty: firmware ran boot applications unverified, only their measured digests protect the boot"
                    }
                ),
            ));
        }
        None => why.push(Explanation::new(
            "secureBoot",
            "not written",
            "the log has no SecureBoot variable event in PCR 7",
        )),
    }
    Ok(())
}

fn databases(
    log: &EventLog,
    policy: &mut BootPolicy,
    why: &mut Vec<Explanation>,
) -> Result<(), ReferenceError> {
    let vars = pcr7_variables(log)?;
    for db in &DATABASES {
        let mut entries: Option<Vec<Sha256Digest>> = None;
        let mut lines = Vec::new();
        for (index, v) in &vars {
            if v.guid != db.guid || v.name != db.name {
                continue;
            }
            let list = v
                .signature_lists()
                .map_err(|source| ReferenceError::BadSignatureList {
                    index: *index,
                    variable: db.name.to_owned(),
                    source,
                })?;
            let values = entries.get_or_insert_with(Vec::new);
            if list.is_empty() {
                lines.push(Explanation::new(
                    db.rule,
                    "[]",
                    empty_database_why(db, *index),
                ));
            }
            for entry in list {
                let d = Sha256Digest(entry.sha256());
                if push_unique(values, d) {
                    let what = match entry.kind {
                        aver_boot_log::uefi::SignatureKind::X509 => {
                            "SHA-256 of an X.509 certificate".to_owned()
                        }
                        aver_boot_log::uefi::SignatureKind::Sha256 => {
                            "a SHA-256 hash entry".to_owned()
                        }
                        aver_boot_log::uefi::SignatureKind::Other(g) => {
                            format!("SHA-256 of an entry of type {g}")
                        }
                    };
                    lines.push(Explanation::new(
                        db.rule,
                        d.to_string(),
                        format!(
                            "{what} (owner {}) in {} as firmware measured it into PCR 7 (event {index}){}",
                            entry.owner,
                            db.name,
                            if db.rule == "dbx" {
                                ": a future dbx must still hold it"
                            } else {
                                ": allowed, and every measured entry must be listed"
                            }
                        ),
                    ));
                }
            }
        }
        match entries {
            Some(values) => {
                let field = match db.rule {
                    "pk" => &mut policy.pk,
                    "kek" => &mut policy.kek,
                    "db" => &mut policy.db,
                    _ => &mut policy.dbx,
                };
                *field = Some(values);
                why.extend(lines);
            }
            None => why.push(Explanation::new(
                db.rule,
                "not written",
                format!("the log has no {} variable event in PCR 7", db.name),
            )),
        }
    }
    Ok(())
}

fn empty_database_why(db: &Database, index: usize) -> String {
    match db.rule {
        "dbx" => format!(
            "dbx was measured empty in PCR 7 (event {index}): no revocation is required"
        ),
        _ => format!(
            "{} was measured empty in PCR 7 (event {index}): no entry is allowed, so a node with any {} entry enrolled is refused",
            db.name, db.name
        ),
    }
}

fn boot_applications(
    log: &EventLog,
    policy: &mut BootPolicy,
    why: &mut Vec<Explanation>,
) -> Result<(), ReferenceError> {
    let mut apps = Vec::new();
    for e in log.events() {
        if e.pcr != 4 || e.event_type != EventType::EV_EFI_BOOT_SERVICES_APPLICATION {
            continue;
        }
        let d = sha256_of(e)?;
        if push_unique(&mut apps, d) {
            let from = match e.decode() {
                Ok(EventData::ImageLoad(i)) => format!(" loaded from {}", i.device_path_text()),
                _ => String::new(),
            };
            why.push(Explanation::new(
                "bootApplications",
                d.to_string(),
                format!(
                    "the Authenticode digest of the boot application{from} that firmware measured into PCR 4 (event {})",
                    e.index
                ),
            ));
        }
    }
    if apps.is_empty() {
        why.push(Explanation::new(
            "bootApplications",
            "not written",
            "the log has no EV_EFI_BOOT_SERVICES_APPLICATION event in PCR 4",
        ));
    } else {
        policy.boot_applications = Some(apps);
    }
    Ok(())
}

fn initrds(
    log: &EventLog,
    policy: &mut BootPolicy,
    why: &mut Vec<Explanation>,
) -> Result<(), ReferenceError> {
    let mut digests = Vec::new();
    for e in tagged(log, LINUX_INITRD_TAG)? {
        let d = sha256_of(e)?;
        if push_unique(&mut digests, d) {
            why.push(Explanation::new(
                "initrdDigests",
                d.to_string(),
                format!(
                    "the initrd the kernel's EFI stub loaded and measured into PCR 9 (event {}): the SHA-256 of the initrd file",
                    e.index
                ),
            ));
        }
    }
    if digests.is_empty() {
        why.push(Explanation::new(
            "initrdDigests",
            "not written",
            "the log has no Linux initrd event in PCR 9 (a kernel without initrd, or one loaded by a boot loader that does not measure it)",
        ));
    } else {
        policy.initrd_digests = Some(digests);
    }
    Ok(())
}

/// The PCR 9 EV_EVENT_TAG events with this tag.
fn tagged(log: &EventLog, tag: u32) -> Result<Vec<&aver_boot_log::uefi::Event>, ReferenceError> {
    let mut out = Vec::new();
    for e in log.events() {
        if e.pcr != 9 || e.event_type != EventType::EV_EVENT_TAG {
            continue;
        }
        if let EventData::Tagged { id, .. } = e.decode()? {
            if id == tag {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// grub's `kernel_cmdline: …` texts in PCR 8, with their event index.
fn grub_cmdlines(log: &EventLog) -> Vec<(usize, String)> {
    log.events()
        .iter()
        .filter(|e| e.pcr == 8 && e.event_type == EventType::EV_IPL)
        .filter_map(|e| {
            let text = e.decode().ok()?.ipl_text()?;
            let rest = text.strip_prefix(GRUB_KERNEL_CMDLINE_PREFIX)?;
            Some((e.index, rest.to_owned()))
        })
        .collect()
}

fn mismatch_hint(given: &str, measured: &[u8; 32]) -> String {
    if cmdline_matches(&format!("{given}{QEMU_INITRD_SUFFIX}"), measured) {
        return format!(
            "it matches with {QEMU_INITRD_SUFFIX:?} appended, as QEMU's direct kernel boot passes it: give the command line exactly as /proc/cmdline shows it"
        );
    }
    if let Some(stripped) = given.strip_suffix(QEMU_INITRD_SUFFIX) {
        if cmdline_matches(stripped, measured) {
            return format!("it matches without the trailing {QEMU_INITRD_SUFFIX:?}");
        }
    }
    if given != given.trim() && cmdline_matches(given.trim(), measured) {
        return "it matches without the leading or trailing white space".to_owned();
    }
    "give the command line exactly as the node booted with it (/proc/cmdline on that node)"
        .to_owned()
}

fn kernel_cmdlines(
    log: &EventLog,
    given: Option<&str>,
    policy: &mut BootPolicy,
    why: &mut Vec<Explanation>,
) -> Result<(), ReferenceError> {
    let stub = tagged(log, LINUX_LOAD_OPTIONS_TAG)?;
    let grub = grub_cmdlines(log);
    let mut cmdlines: Vec<String> = Vec::new();
    let mut lines = Vec::new();

    if let Some(given) = given {
        if !stub.is_empty() {
            let mut indices = Vec::new();
            for e in &stub {
                let measured = sha256_of(e)?;
                if !cmdline_matches(given, measured.as_bytes()) {
                    return Err(ReferenceError::CmdlineMismatch {
                        index: e.index,
                        measured: measured.to_hex(),
                        hint: mismatch_hint(given, measured.as_bytes()),
                    });
                }
                indices.push(e.index.to_string());
            }
            cmdlines.push(given.to_owned());
            lines.push(Explanation::new(
                "kernelCmdlines",
                format!("{given:?}"),
                format!(
                    "the command line given for this boot; its UTF-16LE SHA-256 is what the kernel's EFI stub measured into PCR 9 (event {})",
                    indices.join(", ")
                ),
            ));
        } else if !grub.iter().any(|(_, text)| text == given) {
            return match grub.first() {
                Some((index, text)) => Err(ReferenceError::CmdlineNotGrubs {
                    index: *index,
                    measured: text.clone(),
                }),
                None => Err(ReferenceError::CmdlineNotMeasured),
            };
        }
    }

    if !stub.is_empty() && given.is_none() {
        // grub's text (with the kernel path) is not what the stub measured
        // (grub passes BOOT_IMAGE=…), so writing only grub's would refuse
        // this very boot: leave the rule out.
        let indices: Vec<String> = stub.iter().map(|e| e.index.to_string()).collect();
        why.push(Explanation::new(
            "kernelCmdlines",
            "not written",
            format!(
                "the kernel's EFI stub measured the command line into PCR 9 (event {}) as a digest only; give the command line the node booted with (/proc/cmdline) to write it",
                indices.join(", ")
            ),
        ));
        return Ok(());
    }

    for (index, text) in grub {
        if cmdlines.contains(&text) {
            continue;
        }
        lines.push(Explanation::new(
            "kernelCmdlines",
            format!("{text:?}"),
            format!("the kernel command line grub measured into PCR 8 (event {index}), as its text says"),
        ));
        cmdlines.push(text);
    }
    if cmdlines.is_empty() {
        why.push(Explanation::new(
            "kernelCmdlines",
            "not written",
            "the log measures no kernel command line (no EFI stub event in PCR 9, no grub kernel_cmdline in PCR 8)",
        ));
    } else {
        policy.kernel_cmdlines = Some(cmdlines);
        why.extend(lines);
    }
    Ok(())
}

/// The runtime allow-list of a node image's root file system: every
/// regular file under `dir` with its SHA-256, keyed by its absolute path on
/// the node, sorted by path.
pub fn runtime_policy_from_rootfs(dir: &Path) -> Result<RuntimePolicy, ReferenceError> {
    let list = Allowlist::from_rootfs(dir)?;
    if list.is_empty() {
        return Err(ReferenceError::EmptyRootfs {
            dir: dir.display().to_string(),
        });
    }
    if list.len() > MAX_RUNTIME_FILES {
        return Err(ReferenceError::TooManyFiles {
            dir: dir.display().to_string(),
            count: list.len(),
            max: MAX_RUNTIME_FILES,
        });
    }
    let files = list
        .entries()
        .map(|(path, digests)| AllowedFile {
            path: path.to_owned(),
            digests: digests.iter().copied().map(Sha256Digest).collect(),
        })
        .collect();
    Ok(RuntimePolicy { files })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../boot-log/testdata/ovmf-q35-swtpm.bin");
    const APPEND: &str =
        "console=ttyS0 ima_policy=tcb ima_hash=sha256 ima_template=ima-ng rootfstype=ramfs quiet";
    const INITRD: &str = "ad62d663fbfee516ff28688173352d909b769fbf7069fa94f38ca49e539e4cc7";

    fn log() -> EventLog {
        EventLog::parse(FIXTURE).expect("fixture parses")
    }

    fn proc_cmdline() -> String {
        format!("{APPEND}{QEMU_INITRD_SUFFIX}")
    }

    #[test]
    fn fixture_yields_every_rule_with_the_cmdline() {
        let cmdline = proc_cmdline();
        let (policy, why) = boot_policy_from_log(&log(), Some(&cmdline)).unwrap();
        assert_eq!(policy.secure_boot, Some(SecureBoot::Disabled));
        assert_eq!(policy.pk, Some(vec![]));
        assert_eq!(policy.kek, Some(vec![]));
        assert_eq!(policy.db, Some(vec![]));
        assert_eq!(policy.dbx, Some(vec![]));
        let apps = policy.boot_applications.as_ref().unwrap();
        assert_eq!(apps.len(), 1);
        assert_eq!(
            apps[0].to_hex(),
            "814dcd047d96b18137c1872db81c0390cc46373997c0484b3ab34b90615bf587"
        );
        assert_eq!(
            policy.initrd_digests,
            Some(vec![
                Sha256Digest::parse(&format!("sha256:{INITRD}")).unwrap()
            ])
        );
        assert_eq!(policy.kernel_cmdlines, Some(vec![cmdline.clone()]));

        let initrd = why.iter().find(|e| e.rule == "initrdDigests").unwrap();
        assert_eq!(initrd.value, format!("sha256:{INITRD}"));
        assert!(initrd.why.contains("PCR 9 (event 23)"), "{}", initrd.why);
        let cmd = why.iter().find(|e| e.rule == "kernelCmdlines").unwrap();
        assert!(cmd.why.contains("event 22"), "{}", cmd.why);
        for rule in [
            "secureBoot",
            "pk",
            "kek",
            "db",
            "dbx",
            "bootApplications",
            "kernelCmdlines",
            "initrdDigests",
        ] {
            assert!(
                why.iter().any(|e| e.rule == rule),
                "no explanation of {rule}"
            );
        }
        assert!(why.iter().all(|e| e.value != "not written"), "{why:?}");
    }

    #[test]
    fn the_policy_validates_inside_an_attestation_policy() {
        let (boot, _) = boot_policy_from_log(&log(), Some(&proc_cmdline())).unwrap();
        let mut policy =
            aver_crds::AttestationPolicy::from_yaml(include_str!("../testdata/policy-swtpm.yaml"))
                .unwrap();
        policy.boot = Some(boot.clone());
        policy.validate().unwrap();
        let back = aver_crds::AttestationPolicy::from_yaml(&policy.to_yaml()).unwrap();
        assert_eq!(back.boot, Some(boot));
    }

    #[test]
    fn the_verifier_accepts_the_boot_the_policy_came_from() {
        use crate::evidence::{Base64Bytes, Evidence};
        let (boot, _) = boot_policy_from_log(&log(), Some(&proc_cmdline())).unwrap();
        let mut evidence =
            Evidence::from_json(include_bytes!("../testdata/evidence-swtpm.json")).unwrap();
        evidence.boot_log = Some(Base64Bytes(FIXTURE.to_vec()));
        let bank = log().replay(HashAlg::Sha256).unwrap();
        let quoted: std::collections::BTreeMap<u8, [u8; 32]> = (0..=9)
            .map(|pcr| {
                (
                    pcr,
                    bank.get(pcr).map_or([0; 32], |v| v.try_into().unwrap()),
                )
            })
            .collect();
        let report = crate::platform::verify_platform(&evidence, &quoted, Some(&boot), None)
            .unwrap()
            .unwrap();
        assert!(report.boot.is_some());
        // Without the command line the rest still verifies.
        let (partial, _) = boot_policy_from_log(&log(), None).unwrap();
        crate::platform::verify_platform(&evidence, &quoted, Some(&partial), None).unwrap();
    }

    #[test]
    fn without_the_cmdline_the_rule_is_left_out_and_said_so() {
        let (policy, why) = boot_policy_from_log(&log(), None).unwrap();
        assert_eq!(policy.kernel_cmdlines, None);
        assert!(policy.initrd_digests.is_some());
        let cmd = why.iter().find(|e| e.rule == "kernelCmdlines").unwrap();
        assert_eq!(cmd.value, "not written");
        assert!(cmd.why.contains("/proc/cmdline"), "{}", cmd.why);
    }

    #[test]
    fn a_wrong_cmdline_is_refused() {
        let err = boot_policy_from_log(&log(), Some("console=ttyS0 quiet")).unwrap_err();
        assert!(
            matches!(err, ReferenceError::CmdlineMismatch { index: 22, .. }),
            "{err}"
        );
        // The -append text without QEMU's suffix: refused, with the hint.
        let err = boot_policy_from_log(&log(), Some(APPEND)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("initrd=initrd"), "{text}");
        assert!(text.contains("event 22"), "{text}");
    }

    #[test]
    fn a_cmdline_without_the_utf16_nul_is_accepted() {
        let c = proc_cmdline();
        let with = efi_stub_cmdline_digest(&c);
        assert_eq!(
            hex::encode(with),
            "13ecd9b3833e27ef3ed58681e941b40b9ff578ed520bdd21f178d55631a4f8ed"
        );
        let without = utf16_digest(&c, false);
        assert!(cmdline_matches(&c, &without));
        assert!(!cmdline_matches(APPEND, &with));
    }

    #[test]
    fn a_sha1_only_log_is_refused() {
        let log = legacy_log(&[(0, EventType::EV_S_CRTM_VERSION, &[0, 0])]);
        let err = boot_policy_from_log(&log, None).unwrap_err();
        assert!(matches!(err, ReferenceError::NoSha256Bank { .. }), "{err}");
        assert!(err.to_string().contains("sha1"));
    }

    /// A SHA-1 legacy log of these (PCR, type, data) records.
    fn legacy_log(records: &[(u32, EventType, &[u8])]) -> EventLog {
        let mut bytes = Vec::new();
        for (pcr, t, data) in records {
            bytes.extend(pcr.to_le_bytes());
            bytes.extend(t.0.to_le_bytes());
            bytes.extend([0x11; 20]);
            bytes.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
            bytes.extend(*data);
        }
        EventLog::parse(&bytes).unwrap()
    }

    #[test]
    fn a_cmdline_is_refused_when_nothing_measures_one() {
        let log = legacy_log(&[(0, EventType::EV_S_CRTM_VERSION, &[0, 0])]);
        let mut policy = BootPolicy::default();
        let mut why = Vec::new();
        let err = kernel_cmdlines(&log, Some("quiet"), &mut policy, &mut why).unwrap_err();
        assert!(matches!(err, ReferenceError::CmdlineNotMeasured), "{err}");
        kernel_cmdlines(&log, None, &mut policy, &mut why).unwrap();
        assert_eq!(policy.kernel_cmdlines, None);
        assert_eq!(why.last().unwrap().value, "not written");
    }

    #[test]
    fn grubs_cmdline_comes_from_the_log() {
        let log = legacy_log(&[
            (0, EventType::EV_S_CRTM_VERSION, &[0, 0]),
            (
                8,
                EventType::EV_IPL,
                b"grub_cmd: linux /vmlinuz root=/dev/vda\0",
            ),
            (
                8,
                EventType::EV_IPL,
                b"kernel_cmdline: /vmlinuz root=/dev/vda\0",
            ),
        ]);
        let mut policy = BootPolicy::default();
        let mut why = Vec::new();
        kernel_cmdlines(&log, None, &mut policy, &mut why).unwrap();
        assert_eq!(
            policy.kernel_cmdlines,
            Some(vec!["/vmlinuz root=/dev/vda".to_owned()])
        );
        assert!(why[0].why.contains("PCR 8 (event 2)"), "{:?}", why[0]);
        // A given text must be grub's when only grub measured one.
        let mut policy = BootPolicy::default();
        kernel_cmdlines(&log, Some("/vmlinuz root=/dev/vda"), &mut policy, &mut why).unwrap();
        assert_eq!(policy.kernel_cmdlines.as_ref().map(Vec::len), Some(1));
        let err =
            kernel_cmdlines(&log, Some("BOOT_IMAGE=/vmlinuz"), &mut policy, &mut why).unwrap_err();
        assert!(
            matches!(err, ReferenceError::CmdlineNotGrubs { index: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn runtime_policy_lists_every_file_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/sh"), b"shell").unwrap();
        std::fs::write(dir.path().join("init"), b"init").unwrap();
        let policy = runtime_policy_from_rootfs(dir.path()).unwrap();
        let paths: Vec<&str> = policy.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/init", "/usr/bin/sh"]);
        let expected: [u8; 32] = Sha256::digest(b"shell").into();
        assert_eq!(policy.files[1].digests, vec![Sha256Digest(expected)]);

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            runtime_policy_from_rootfs(empty.path()),
            Err(ReferenceError::EmptyRootfs { .. })
        ));
        assert!(matches!(
            runtime_policy_from_rootfs(&dir.path().join("missing")),
            Err(ReferenceError::Rootfs(_))
        ));
    }
}
