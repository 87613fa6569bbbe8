//! Accepting connections without spinning when the process runs out.

use std::future::Future;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// Backoff for a failing `accept`: when the process is out of file
/// descriptors (or the kernel out of buffers) every retry fails at once, so
/// retrying immediately spins a core and floods the log.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

/// What to do after an accept error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAcceptError {
    /// A per-connection failure (the peer reset before accept): go on.
    Retry,
    /// Out of a resource: wait this long before accepting again; `log`
    /// says whether this failure should be logged (the first of a streak,
    /// then every 64th).
    Wait {
        /// Pause before the next accept: 10 ms, doubling with each failure of
        /// the streak, at most 1 s.
        delay: Duration,
        /// Log this failure: true for the first of a streak, then every 64th.
        log: bool,
    },
}

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// Decides after a failed `accept`: running out of descriptors or buffers
    /// waits, longer with each failure in a row; any other error retries at once.
    pub fn on_error(&mut self, error: &std::io::Error) -> AfterAcceptError {
        if !is_resource_exhaustion(error) {
            return AfterAcceptError::Retry;
        }
        let log = self.failures.is_multiple_of(64);
        let doublings = self.failures.min(7);
        self.failures = self.failures.saturating_add(1);
        let delay = FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY);
        AfterAcceptError::Wait { delay, log }
    }

    /// Failures in the current streak, then resets it (after a success).
    pub fn on_success(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or the system ran out;
/// retrying at once cannot succeed.
fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(
        error.raw_os_error(),
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM)
    )
}

/// The accept side of a listener: [`Self::next`] returns the next
/// connection, retrying accept errors with [`AcceptBackoff`] and logging
/// them sparingly.
#[derive(Debug)]
pub struct Accepting {
    what: &'static str,
    backoff: AcceptBackoff,
    errors: Option<Counter>,
}

impl Accepting {
    /// `what` names the listener in logs ("metrics listener", "agent socket").
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            backoff: AcceptBackoff::default(),
            errors: None,
        }
    }

    /// Counts every failed accept in `counter` too.
    pub fn count_errors(mut self, counter: Counter) -> Self {
        self.errors = Some(counter);
        self
    }

    /// The next connection `accept` gives (e.g. `|| listener.accept()`).
    ///
    /// Cancel-safe when `accept`'s future is (tokio's listeners are): it can
    /// be raced against a shutdown signal, which also cuts a backoff short.
    pub async fn next<T, F, Fut>(&mut self, mut accept: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(connection) => {
                    let streak = self.backoff.on_success();
                    if streak > 1 {
                        tracing::info!(
                            listener = self.what,
                            failures = streak,
                            "accepting again after accept failures"
                        );
                    }
                    return connection;
                }
                Err(error) => {
                    if let Some(errors) = &self.errors {
                        errors.inc();
                    }
                    match self.backoff.on_error(&error) {
                        AfterAcceptError::Retry => {
                            tracing::debug!(listener = self.what, %error, "accept failed");
                        }
                        AfterAcceptError::Wait { delay, log } => {
                            if log {
                                tracing::warn!(
                                    listener = self.what,
                                    %error,
                                    retry_in = ?delay,
                                    "accept failed: backing off"
                                );
                            }
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhaustion_backs_off_and_logs_sparingly() {
        let mut backoff = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        let mut delays = Vec::new();
        let mut logged = 0;
        for _ in 0..200 {
            match backoff.on_error(&emfile) {
                AfterAcceptError::Wait { delay, log } => {
                    delays.push(delay);
                    logged += usize::from(log);
                }
                AfterAcceptError::Retry => panic!("EMFILE must back off"),
            }
        }
        assert_eq!(delays[0], FIRST_DELAY);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        assert_eq!(logged, 4, "the first of 200 failures, then every 64th");
        assert_eq!(backoff.on_success(), 200);
        assert!(matches!(
            backoff.on_error(&emfile),
            AfterAcceptError::Wait { delay, log: true } if delay == FIRST_DELAY
        ));
    }

    #[test]
    fn a_reset_before_accept_is_retried_at_once() {
        let mut backoff = AcceptBackoff::default();
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.on_error(&aborted), AfterAcceptError::Retry);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_are_counted_and_waited_out() {
        let errors = Counter::default();
        let mut accepting = Accepting::new("test").count_errors(errors.clone());
        let mut results = vec![
            Ok(7),
            Err(std::io::Error::from_raw_os_error(24)),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionAborted)),
            Err(std::io::Error::from_raw_os_error(24)),
        ];
        let started = tokio::time::Instant::now();
        let accepted = accepting
            .next(|| {
                let next = results.pop().expect("not called after success");
                async move { next }
            })
            .await;
        assert_eq!(accepted, 7);
        assert_eq!(errors.get(), 3);
        // Two EMFILE: 10 ms, then 20 ms; the reset is retried at once.
        assert_eq!(started.elapsed(), Duration::from_millis(30));
    }
}
