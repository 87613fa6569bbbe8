//! Keys verified recently enough to be trusted without new evidence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aver_crds::Sha256Digest;

/// An attested TLS key and until when it may be trusted without new evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// SHA-256 of the attested SubjectPublicKeyInfo; a pinned handshake
    /// accepts only this key.
    pub spki_sha256: Sha256Digest,
    /// The certificate (DER) the key was attested with.
    pub certificate_der: Vec<u8>,
    /// When the evidence's maximum age runs out; from then on the key must
    /// be attested again.
    pub expires: Instant,
}

impl Pin {
    /// A pin that expires `max_age` from now (the policy's `maxEvidenceAge`,
    /// counted from when the evidence verified).
    pub fn new(spki_sha256: Sha256Digest, certificate_der: Vec<u8>, max_age: Duration) -> Self {
        Self {
            spki_sha256,
            certificate_der,
            expires: Instant::now() + max_age,
        }
    }

    /// Whether the key may still be trusted without new evidence.
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.expires
    }
}

/// Pins by endpoint authority (`host:port`), shared between clones.
#[derive(Debug, Clone, Default)]
pub struct PinStore {
    inner: Arc<Mutex<HashMap<String, Pin>>>,
}

impl PinStore {
    /// Pins `authority` (`host:port`) to `pin`, replacing any earlier pin.
    pub fn insert(&self, authority: String, pin: Pin) {
        self.lock().insert(authority, pin);
    }

    /// The pin for `authority` if it has not expired; an expired pin is
    /// dropped so the next connection attests again.
    pub fn get_fresh(&self, authority: &str) -> Option<Pin> {
        let mut pins = self.lock();
        match pins.get(authority) {
            Some(pin) if pin.is_fresh() => Some(pin.clone()),
            Some(_) => {
                pins.remove(authority);
                None
            }
            None => None,
        }
    }

    /// Endpoints pinned, expired pins not yet dropped included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no endpoint is pinned (expired pins not yet dropped count).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pin>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_pins_are_dropped() {
        let store = PinStore::default();
        store.insert(
            "a:1".into(),
            Pin::new(Sha256Digest([1; 32]), vec![], Duration::from_secs(60)),
        );
        store.insert(
            "b:1".into(),
            Pin::new(Sha256Digest([2; 32]), vec![], Duration::ZERO),
        );
        assert_eq!(
            store.get_fresh("a:1").map(|p| p.spki_sha256),
            Some(Sha256Digest([1; 32]))
        );
        assert_eq!(store.get_fresh("b:1"), None);
        assert_eq!(store.len(), 1);
        assert_eq!(store.get_fresh("c:1"), None);
    }
}
