//! The agent socket's answers, decided by what the gate measured: only the
//! key-holder container of a confidential pod may register a key and ask
//! for quotes, and only once it has registered.

use crate::agent::{Agent, AgentError, Caller, QuoteResponse, TlsKeyRequest};

use super::Gate;

fn caller_container(caller: &Caller) -> Result<&str, AgentError> {
    caller.container_id.as_deref().ok_or_else(|| {
        AgentError::Forbidden(format!(
            "process {} is not in a container aver-node started",
            caller.pid
        ))
    })
}

#[async_trait::async_trait]
impl Agent for Gate {
    async fn register_tls_key(&self, caller: Caller, req: TlsKeyRequest) -> Result<(), AgentError> {
        let container = caller_container(&caller)?;
        self.register_key(container, req.spki_sha256, req.model_digest)
            .await
            .map_err(|reason| {
                tracing::warn!(pid = caller.pid, container, "refused TLS key: {reason}");
                AgentError::Forbidden(reason)
            })?;
        tracing::info!(container, spki = %req.spki_sha256, "TLS key recorded");
        Ok(())
    }

    async fn quote(
        &self,
        caller: Caller,
        qualifying: [u8; 32],
    ) -> Result<QuoteResponse, AgentError> {
        let container = caller_container(&caller)?;
        let (_, registered) = self.key_holder(container).map_err(AgentError::Forbidden)?;
        if !registered {
            return Err(AgentError::Forbidden(format!(
                "container {container} has not registered its TLS key; register it before asking for evidence"
            )));
        }
        let _in_flight = self.begin_quote(container)?;
        let quote = self
            .measurer()
            .quote(qualifying)
            .await
            .map_err(|e| AgentError::Internal(format!("quote failed: {e}")))?;
        Ok(QuoteResponse {
            attest: quote.attest,
            signature: quote.signature,
            pcrs: quote.pcrs,
            ak_public: quote.ak_public,
            node_log: quote.node_log,
            boot_log: quote.boot_log,
            ima_log: quote.ima_log,
            ak_certificate: quote.ak_certificate,
            ak_chain: quote.ak_chain,
        })
    }
}

/// At most one piece of work in flight per key (a container ID).
#[derive(Debug, Clone, Default)]
pub(super) struct OnePerKey(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

/// A key's one piece of work in flight; the place is freed when dropped.
pub(super) struct InFlight {
    set: OnePerKey,
    key: String,
}

impl OnePerKey {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The place of `key`, or `None` while it has one.
    pub(super) fn begin(&self, key: &str) -> Option<InFlight> {
        self.lock().insert(key.to_owned()).then(|| InFlight {
            set: self.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

impl Gate {
    /// Admits one quote for `container`, or says it already has one.
    fn begin_quote(&self, container: &str) -> Result<InFlight, AgentError> {
        self.quoting.begin(container).ok_or_else(|| {
            AgentError::Busy(format!(
                "container {container} already has a quote in flight; one at a time (batch challenges under one quote)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::OnePerKey;

    #[test]
    fn one_quote_in_flight_per_container() {
        let quoting = OnePerKey::default();
        let first = quoting.begin("enclave-a").expect("first quote");
        assert!(quoting.begin("enclave-a").is_none(), "a second one waits");
        let other = quoting.begin("enclave-b");
        assert!(other.is_some(), "another container is not held up");
        drop(first);
        assert!(quoting.begin("enclave-a").is_some(), "freed when done");
    }
}
