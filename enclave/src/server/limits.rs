//! What one client, or all of them together, may make the enclave do.
//!
//! The TPM is the scarce resource: a hardware TPM signs a few quotes a
//! second and takes hundreds of milliseconds for an activation. Quotes are
//! batched and bounded by the batcher; credential activations, which any
//! unauthenticated client can ask for, are admitted here — a few per peer
//! per minute, and a small queue for everyone — so that a flood is told
//! 429 at once instead of waiting in front of the quotes that keep the
//! endpoint verified. Connections are bounded too; accept errors (running
//! out of file descriptors) back off ([`aver_serve::Accepting`]) instead of
//! spinning.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds on connections and on the work requests may cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once; further ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// How long a connection may sit without a request (and how long a
    /// client may take to send a request's headers).
    pub idle_timeout: Duration,
    /// Whole-request deadline of the evidence and activation endpoints:
    /// body, queueing and TPM work included.
    pub request_deadline: Duration,
    /// Most credential activations admitted at once (running or waiting
    /// for the TPM).
    pub activation_queue: usize,
    /// Credential activations one peer address may ask for per minute
    /// (also the burst it may ask for at once).
    pub activations_per_peer_per_minute: NonZeroU32,
    /// How long open requests (streamed answers) may run on after a
    /// shutdown signal before their connections are closed.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            request_deadline: Duration::from_secs(10),
            activation_queue: 2,
            activations_per_peer_per_minute: NonZeroU32::new(6).unwrap_or(NonZeroU32::MIN),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Why an activation was not admitted; answered with 429 and Retry-After.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many credential activations from this address; retry in {} s", retry_after.as_secs())]
    PeerRate { retry_after: Duration },
    #[error("the TPM is busy with other credential activations; retry in {} s", retry_after.as_secs())]
    QueueFull { retry_after: Duration },
}

impl Refused {
    /// Whole seconds to put in Retry-After (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        let (Self::PeerRate { retry_after } | Self::QueueFull { retry_after }) = self;
        retry_after.as_secs().max(1)
    }

    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PeerRate { .. } => "peer-rate",
            Self::QueueFull { .. } => "queue-full",
        }
    }
}

/// Admission control for credential activations.
pub struct ActivationGate {
    queue: Arc<Semaphore>,
    peers: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl ActivationGate {
    pub fn new(limits: &Limits) -> Self {
        Self {
            queue: Arc::new(Semaphore::new(limits.activation_queue.max(1))),
            peers: DefaultKeyedRateLimiter::keyed(Quota::per_minute(
                limits.activations_per_peer_per_minute,
            )),
            clock: DefaultClock::default(),
        }
    }

    /// A place in the activation queue for `peer`, held until the TPM has
    /// answered (the permit travels with the job to the TPM thread).
    pub fn admit(&self, peer: IpAddr) -> Result<OwnedSemaphorePermit, Refused> {
        if let Err(not_until) = self.peers.check_key(&peer) {
            return Err(Refused::PeerRate {
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        }
        Arc::clone(&self.queue)
            .try_acquire_owned()
            .map_err(|_| Refused::QueueFull {
                retry_after: Duration::from_secs(1),
            })
    }

    /// Forgets peers whose allowance is full again, so that the table does
    /// not grow with every address ever seen.
    pub fn forget_idle_peers(&self) {
        self.peers.retain_recent();
        self.peers.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(queue: usize, per_minute: u32) -> Limits {
        Limits {
            activation_queue: queue,
            activations_per_peer_per_minute: NonZeroU32::new(per_minute).unwrap(),
            ..Limits::default()
        }
    }

    #[test]
    fn the_queue_admits_its_size_and_frees_on_drop() {
        let gate = ActivationGate::new(&limits(2, 100));
        let peers: Vec<IpAddr> = (1..=3u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let a = gate.admit(peers[0]).expect("first");
        let _b = gate.admit(peers[1]).expect("second");
        let refused = gate.admit(peers[2]).expect_err("queue is full");
        assert_eq!(refused.reason(), "queue-full");
        assert_eq!(refused.retry_after_secs(), 1);
        drop(a);
        let _place = gate.admit(peers[2]).expect("a place was freed");
    }

    #[test]
    fn one_peer_gets_its_burst_then_waits_others_do_not() {
        let gate = ActivationGate::new(&limits(100, 3));
        let noisy = IpAddr::from([192, 0, 2, 1]);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(gate.admit(noisy).expect("within the burst"));
        }
        let refused = gate.admit(noisy).expect_err("burst spent");
        assert_eq!(refused.reason(), "peer-rate");
        // 3 per minute: the next one is about 20 s away.
        assert!((15..=20).contains(&refused.retry_after_secs()), "{refused}");
        let _other = gate
            .admit(IpAddr::from([192, 0, 2, 2]))
            .expect("another peer is not limited by the first");
    }
}
