//! Replaying a log into PCR values, to compare with a quote.

use super::alg::HashAlg;
use super::data::EventData;
use super::error::UefiLogError;
use super::event::EventType;
use super::parse::EventLog;
use super::PCR_COUNT;

/// The PCR values a log replays to, for one bank.
///
/// Only PCRs the log touched (an extend, or PCR 0's StartupLocality) have
/// a value: the rest are whatever the TPM's reset value is, and the log
/// says nothing about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBank {
    alg: HashAlg,
    values: Vec<Option<Vec<u8>>>,
}

impl PcrBank {
    /// The bank's algorithm.
    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// The replayed value of a PCR, `None` if the log did not touch it.
    pub fn get(&self, pcr: u8) -> Option<&[u8]> {
        self.values.get(usize::from(pcr))?.as_deref()
    }

    /// The touched PCRs and their values, in PCR order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((u8::try_from(i).ok()?, v.as_deref()?)))
    }
}

impl EventLog {
    /// Replays the log for one bank: every event but EV_NO_ACTION extends
    /// its PCR with its logged digest; a StartupLocality event (which must
    /// come before any PCR 0 extend) sets PCR 0's initial value to 31 zero
    /// bytes and the locality, as the TPM does for an H-CRTM.
    pub fn replay(&self, alg: HashAlg) -> Result<PcrBank, UefiLogError> {
        if !self.banks().contains(&alg) {
            return Err(UefiLogError::BankNotInLog(alg));
        }
        let zero = vec![0u8; alg.digest_len()];
        let mut values: Vec<Option<Vec<u8>>> = vec![None; PCR_COUNT];
        for e in self.events() {
            if e.event_type == EventType::EV_NO_ACTION {
                if e.pcr == 0 && e.data.starts_with(b"StartupLocality\0") {
                    let Ok(EventData::StartupLocality(loc)) = e.decode() else {
                        return Err(UefiLogError::BadEventData {
                            index: e.index,
                            event_type: e.event_type,
                            reason: "StartupLocality is not one byte",
                        });
                    };
                    if !matches!(loc, 0 | 3 | 4) {
                        return Err(UefiLogError::BadLocality {
                            index: e.index,
                            locality: loc,
                        });
                    }
                    let slot = values.get_mut(0).ok_or(UefiLogError::Empty)?;
                    if slot.is_some() {
                        return Err(UefiLogError::LocalityAfterExtend { index: e.index });
                    }
                    let mut init = zero.clone();
                    if let Some(last) = init.last_mut() {
                        *last = loc;
                    }
                    *slot = Some(init);
                }
                continue;
            }
            // The parser guarantees every record of a log has a digest for
            // each of its banks; a record without one would be a bug there.
            let digest = e.digest(alg).ok_or(UefiLogError::BankNotInLog(alg))?;
            let slot = values
                .get_mut(usize::from(e.pcr))
                .ok_or(UefiLogError::PcrOutOfRange {
                    index: e.index,
                    offset: 0,
                    pcr: u32::from(e.pcr),
                })?;
            let old = slot.as_deref().unwrap_or(&zero);
            *slot = Some(alg.extend(old, digest));
        }
        Ok(PcrBank { alg, values })
    }
}
