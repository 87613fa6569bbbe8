//! The boot chain: the firmware event log replayed to the quoted PCRs 0–9,
//! then read against the policy's `boot` rules.

use std::collections::BTreeMap;

use aver_boot_log::uefi::{
    EfiVariable, Event, EventData, EventLog, EventType, Guid, HashAlg, SignatureKind, UefiLogError,
    LINUX_INITRD_TAG, LINUX_LOAD_OPTIONS_TAG,
};
use aver_crds::boot_policy::BOOT_LOG_PCRS;
use aver_crds::{BootPolicy, SecureBoot, Sha256Digest};
use sha2::{Digest as _, Sha256};

use super::{hex32, CheckedLog};
use crate::evidence::Evidence;

/// Why the boot chain was not accepted. Every refusal of an event names it
/// (index as `aver eventlog show` and `tpm2_eventlog` number it, PCR, type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    #[error("the policy checks the boot chain, but the evidence carries no firmware event log (the node serves none: a software TPM, or securityfs not mounted)")]
    NoLog,
    #[error("the firmware event log is malformed: {0}")]
    Malformed(#[from] UefiLogError),
    #[error("the policy checks the boot chain, but the quote does not cover PCR {0}")]
    NotQuoted(u8),
    #[error("PCR {pcr} is {quoted}, but the firmware event log replays to {replayed}: something extended PCR {pcr} that the log does not record, or the log was altered")]
    Replay {
        pcr: u8,
        quoted: String,
        replayed: String,
    },
    #[error("boot event {index} (PCR {pcr}, {event}): {reason}")]
    Refused {
        index: usize,
        pcr: u8,
        event: String,
        reason: String,
    },
    #[error("the firmware event log records no {what}, which the policy's {rule} needs")]
    Missing {
        what: &'static str,
        rule: &'static str,
    },
    #[error("the workload PCR {pcr} was also extended by the boot chain (boot event {index}: {event}), not only by the node's measuring agent: configure a workload PCR nothing else extends")]
    ForeignExtend {
        pcr: u8,
        index: usize,
        event: String,
    },
}

/// Replays the log to the quote and applies every rule of `policy`.
pub(super) fn verify(
    evidence: &Evidence,
    quoted: &BTreeMap<u8, [u8; 32]>,
    policy: &BootPolicy,
) -> Result<CheckedLog, BootError> {
    let bytes = evidence.boot_log.as_ref().ok_or(BootError::NoLog)?;
    let log = EventLog::parse(&bytes.0)?;
    let bank = log.replay(HashAlg::Sha256)?;
    for pcr in BOOT_LOG_PCRS {
        let quoted = quoted.get(&pcr).ok_or(BootError::NotQuoted(pcr))?;
        let replayed = bank.get(pcr).unwrap_or(&[0u8; 32]);
        if replayed != quoted.as_slice() {
            return Err(BootError::Replay {
                pcr,
                quoted: hex32(quoted),
                replayed: hex32(replayed),
            });
        }
    }
    let mut statements = vec![format!(
        "the firmware event log ({} events) replays to the quoted PCRs 0-9 (sha256 bank)",
        log.events().len()
    )];
    let mut check = Checker {
        log: &log,
        statements: &mut statements,
    };
    check.secure_boot(policy.secure_boot)?;
    for key in KEY_VARIABLES {
        check.key_variable(&key, (key.listed)(policy))?;
    }
    if let Some(allowed) = &policy.boot_applications {
        check.boot_applications(allowed)?;
    }
    if let Some(allowed) = &policy.kernel_cmdlines {
        check.kernel_cmdline(allowed)?;
    }
    if let Some(allowed) = &policy.initrd_digests {
        check.initrd(allowed)?;
    }
    Ok(CheckedLog {
        events: log.events().len(),
        statements,
    })
}

/// A boot event that extended `workload_pcr`, if the evidence's firmware
/// log has one: the node log cannot then replay to that PCR, and this says
/// why. An unparsable log says nothing here (the boot rules report it).
pub(crate) fn foreign_extend(evidence: &Evidence, workload_pcr: u8) -> Option<BootError> {
    let log = EventLog::parse(&evidence.boot_log.as_ref()?.0).ok()?;
    let event = log
        .events()
        .iter()
        .find(|e| e.pcr == workload_pcr && e.event_type != EventType::EV_NO_ACTION)?;
    Some(BootError::ForeignExtend {
        pcr: workload_pcr,
        index: event.index,
        event: event.describe(),
    })
}

/// The Secure Boot key databases PCR 7 measures, and their policy rules.
struct KeyVariable {
    name: &'static str,
    guid: Guid,
    rule: &'static str,
    /// What `BootError::Missing` says when the log lacks the variable.
    missing: &'static str,
    /// `dbx` lists what must be present; the others what may be.
    must_contain: bool,
    listed: fn(&BootPolicy) -> Option<&[Sha256Digest]>,
}

const KEY_VARIABLES: [KeyVariable; 4] = [
    KeyVariable {
        name: "PK",
        guid: Guid::EFI_GLOBAL_VARIABLE,
        rule: "boot.pk",
        missing: "PK variable in PCR 7",
        must_contain: false,
        listed: |p| p.pk.as_deref(),
    },
    KeyVariable {
        name: "KEK",
        guid: Guid::EFI_GLOBAL_VARIABLE,
        rule: "boot.kek",
        missing: "KEK variable in PCR 7",
        must_contain: false,
        listed: |p| p.kek.as_deref(),
    },
    KeyVariable {
        name: "db",
        guid: Guid::EFI_IMAGE_SECURITY_DATABASE_GUID,
        rule: "boot.db",
        missing: "db variable in PCR 7",
        must_contain: false,
        listed: |p| p.db.as_deref(),
    },
    KeyVariable {
        name: "dbx",
        guid: Guid::EFI_IMAGE_SECURITY_DATABASE_GUID,
        rule: "boot.dbx",
        missing: "dbx variable in PCR 7",
        must_contain: true,
        listed: |p| p.dbx.as_deref(),
    },
];

struct Checker<'a> {
    log: &'a EventLog,
    statements: &'a mut Vec<String>,
}

impl<'a> Checker<'a> {
    /// Events of one type in one PCR, in log order.
    fn events(&self, pcr: u8, event_type: EventType) -> impl Iterator<Item = &'a Event> + 'a {
        let log: &'a EventLog = self.log;
        log.events()
            .iter()
            .filter(move |e| e.pcr == pcr && e.event_type == event_type)
    }

    /// The PCR 7 configuration variables named `name` under `guid`.
    fn variables(
        &self,
        name: &str,
        guid: Guid,
    ) -> Result<Vec<(&'a Event, EfiVariable)>, BootError> {
        let mut found = Vec::new();
        for event in self.events(7, EventType::EV_EFI_VARIABLE_DRIVER_CONFIG) {
            if let EventData::Variable(var) = event.decode().map_err(|e| refused(event, e))? {
                if var.guid == guid && var.name == name {
                    found.push((event, var));
                }
            }
        }
        Ok(found)
    }

    fn secure_boot(&mut self, required: Option<SecureBoot>) -> Result<(), BootError> {
        let found = self.variables("SecureBoot", Guid::EFI_GLOBAL_VARIABLE)?;
        if found.is_empty() {
            if required.is_some() {
                return Err(BootError::Missing {
                    what: "SecureBoot variable in PCR 7",
                    rule: "boot.secureBoot",
                });
            }
            return Ok(());
        }
        for (event, var) in &found {
            let enabled = var
                .secure_boot_enabled()
                .ok_or_else(|| refused(event, "the SecureBoot variable holds neither 0 nor 1"))?;
            let state = if enabled { "enabled" } else { "disabled" };
            match required {
                Some(want) if (want == SecureBoot::Enabled) != enabled => {
                    return Err(refused(
                        event,
                        format!(
                            "Secure Boot is {state}, but boot.secureBoot requires it {}",
                            word(want)
                        ),
                    ));
                }
                Some(_) => self.statements.push(format!(
                    "Secure Boot is {state}, as boot.secureBoot requires"
                )),
                None => self.statements.push(format!(
                    "Secure Boot is {state} (boot.secureBoot does not check it)"
                )),
            }
        }
        Ok(())
    }

    fn key_variable(
        &mut self,
        key: &KeyVariable,
        rule: Option<&[Sha256Digest]>,
    ) -> Result<(), BootError> {
        let Some(listed) = rule else {
            return Ok(());
        };
        let found = self.variables(key.name, key.guid)?;
        if found.is_empty() {
            return Err(BootError::Missing {
                what: key.missing,
                rule: key.rule,
            });
        }
        for (event, var) in &found {
            let entries = var.signature_lists().map_err(|e| refused(event, e))?;
            let digests: Vec<[u8; 32]> = entries.iter().map(|e| e.sha256()).collect();
            if key.must_contain {
                if let Some(missing) = listed.iter().find(|d| !digests.contains(&d.0)) {
                    return Err(refused(
                        event,
                        format!(
                            "dbx does not hold the forbidden signature {missing} that {} requires: the revocation list is outdated",
                            key.rule
                        ),
                    ));
                }
                self.statements.push(format!(
                    "dbx holds all {} forbidden signatures {} requires ({} entries)",
                    listed.len(),
                    key.rule,
                    entries.len()
                ));
            } else {
                for entry in &entries {
                    let digest = Sha256Digest(entry.sha256());
                    if !listed.contains(&digest) {
                        return Err(refused(
                            event,
                            format!(
                                "{} entry {digest} ({}) is not allowed by {}",
                                key.name,
                                kind(&entry.kind),
                                key.rule
                            ),
                        ));
                    }
                }
                self.statements.push(format!(
                    "{} holds {} entr{}, each allowed by {}",
                    key.name,
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" },
                    key.rule
                ));
            }
        }
        Ok(())
    }

    fn boot_applications(&mut self, allowed: &[Sha256Digest]) -> Result<(), BootError> {
        let apps: Vec<&Event> = self
            .events(4, EventType::EV_EFI_BOOT_SERVICES_APPLICATION)
            .collect();
        if apps.is_empty() {
            return Err(BootError::Missing {
                what: "boot application in PCR 4",
                rule: "boot.bootApplications",
            });
        }
        for event in &apps {
            let digest = sha256_of(event)?;
            if !allowed.contains(&digest) {
                return Err(refused(
                    event,
                    format!(
                        "its Authenticode digest {digest} is not allowed by boot.bootApplications"
                    ),
                ));
            }
        }
        self.statements.push(format!(
            "{} boot application{} ran, each allowed by boot.bootApplications",
            apps.len(),
            if apps.len() == 1 { "" } else { "s" }
        ));
        Ok(())
    }

    fn kernel_cmdline(&mut self, allowed: &[String]) -> Result<(), BootError> {
        let mut seen = 0;
        for event in self.events(9, EventType::EV_EVENT_TAG) {
            let EventData::Tagged { id, .. } = event.decode().map_err(|e| refused(event, e))?
            else {
                continue;
            };
            if id != LINUX_LOAD_OPTIONS_TAG {
                continue;
            }
            seen += 1;
            let digest = sha256_of(event)?;
            let Some(cmdline) = allowed
                .iter()
                .find(|c| load_options_digests(c).contains(&digest.0))
            else {
                return Err(refused(
                    event,
                    "the kernel command line the EFI stub measured is none of boot.kernelCmdlines",
                ));
            };
            self.statements.push(format!(
                "the kernel command line is {cmdline:?}, as boot.kernelCmdlines allows"
            ));
        }
        for event in self.events(8, EventType::EV_IPL) {
            let text = event.decode().map_err(|e| refused(event, e))?.ipl_text();
            let Some(cmdline) = text
                .as_deref()
                .and_then(|t| t.strip_prefix("kernel_cmdline: "))
            else {
                continue;
            };
            seen += 1;
            if !allowed.iter().any(|c| c == cmdline) {
                return Err(refused(
                    event,
                    format!("the boot loader started the kernel with {cmdline:?}, none of boot.kernelCmdlines"),
                ));
            }
            self.statements.push(format!(
                "the boot loader started the kernel with {cmdline:?}, as boot.kernelCmdlines allows"
            ));
        }
        if seen == 0 {
            return Err(BootError::Missing {
                what: "kernel command line (measured by Linux's EFI stub from 6.1 or by grub)",
                rule: "boot.kernelCmdlines",
            });
        }
        Ok(())
    }

    fn initrd(&mut self, allowed: &[Sha256Digest]) -> Result<(), BootError> {
        let mut seen = 0;
        for event in self.events(9, EventType::EV_EVENT_TAG) {
            let EventData::Tagged { id, .. } = event.decode().map_err(|e| refused(event, e))?
            else {
                continue;
            };
            if id != LINUX_INITRD_TAG {
                continue;
            }
            seen += 1;
            let digest = sha256_of(event)?;
            if !allowed.contains(&digest) {
                return Err(refused(
                    event,
                    format!("the initrd {digest} is not allowed by boot.initrdDigests"),
                ));
            }
            self.statements.push(format!(
                "the initrd is {digest}, as boot.initrdDigests allows"
            ));
        }
        if seen == 0 {
            return Err(BootError::Missing {
                what: "initrd (measured by Linux's EFI stub into PCR 9)",
                rule: "boot.initrdDigests",
            });
        }
        Ok(())
    }
}

/// The digests the EFI stub's LoadOptions event may have for `cmdline`:
/// the UTF-16LE text with its NUL (what OVMF and shim pass) or without.
pub(crate) fn load_options_digests(cmdline: &str) -> [[u8; 32]; 2] {
    let utf16: Vec<u8> = cmdline.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let without: [u8; 32] = Sha256::digest(&utf16).into();
    let with: [u8; 32] = Sha256::new()
        .chain_update(&utf16)
        .chain_update([0, 0])
        .finalize()
        .into();
    [with, without]
}

fn sha256_of(event: &Event) -> Result<Sha256Digest, BootError> {
    event
        .digest(HashAlg::Sha256)
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .map(Sha256Digest)
        .ok_or_else(|| refused(event, "the event has no sha256 digest"))
}

fn refused(event: &Event, reason: impl ToString) -> BootError {
    BootError::Refused {
        index: event.index,
        pcr: event.pcr,
        event: event.event_type.to_string(),
        reason: reason.to_string(),
    }
}

fn word(state: SecureBoot) -> &'static str {
    match state {
        SecureBoot::Enabled => "enabled",
        SecureBoot::Disabled => "disabled",
    }
}

fn kind(kind: &SignatureKind) -> String {
    match kind {
        SignatureKind::X509 => "X.509 certificate".to_owned(),
        SignatureKind::Sha256 => "SHA-256 hash".to_owned(),
        SignatureKind::Other(guid) => format!("signature type {guid}"),
    }
}
