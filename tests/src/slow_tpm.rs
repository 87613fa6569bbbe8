//! A TPM as slow as a hardware one: a TCP relay in front of a [`Swtpm`]'s
//! command port that holds chosen commands for a configured time.
//!
//! Hardware TPMs take 100–600 ms per TPM2_Quote and seconds for an RSA-2048
//! TPM2_CreatePrimary; swtpm answers in about a millisecond, which flatters
//! any benchmark or load test run on it. [`SlowTpm`] reads each command
//! whole (framed by the size in its header: tag u16, size u32, command code
//! u32, big-endian), forwards it, and relays the response whole after the
//! delay of its command code. Like a real TPM it runs the slow commands
//! one at a time: while a quote is being "signed", another delayed command
//! (on any connection) waits for it.
//!
//! The control port (the swtpm TCTI always uses `port + 1`) is passed
//! through unchanged. [`SlowTpm::tcti`] is usable wherever
//! [`Swtpm::tcti`] is.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::Swtpm;

/// TPM2_CC_Quote.
pub const TPM2_CC_QUOTE: u32 = 0x0000_0158;
/// TPM2_CC_CreatePrimary.
pub const TPM2_CC_CREATE_PRIMARY: u32 = 0x0000_0131;
/// TPM2_CC_ActivateCredential.
pub const TPM2_CC_ACTIVATE_CREDENTIAL: u32 = 0x0000_0147;
/// TPM2_CC_Create.
pub const TPM2_CC_CREATE: u32 = 0x0000_0153;
/// TPM2_CC_GetRandom.
pub const TPM2_CC_GET_RANDOM: u32 = 0x0000_017b;

/// A TPM command or response header: tag, size, code.
const HEADER_LEN: usize = 10;
/// Larger than any TPM command or response (TPM2_MAX_COMMAND_SIZE is 4 KiB
/// on most TPMs); a bigger size field means the stream is not TPM commands.
const MAX_FRAME: usize = 1 << 20;

/// How long the slow TPM takes for each kind of command (beyond swtpm's own
/// time).
#[derive(Debug, Clone, Default)]
pub struct Delays {
    /// TPM2_Quote (0x158).
    pub quote: Duration,
    /// TPM2_CreatePrimary (0x131).
    pub create_primary: Duration,
    /// TPM2_ActivateCredential (0x147).
    pub activate_credential: Duration,
    /// Any other command code, by code (e.g. [`TPM2_CC_CREATE`]).
    pub other: HashMap<u32, Duration>,
}

impl Delays {
    /// Only TPM2_Quote is slowed, by `quote`.
    pub fn quote(quote: Duration) -> Self {
        Self {
            quote,
            ..Self::default()
        }
    }

    /// Figures in the range of discrete hardware TPMs: 150 ms per quote,
    /// 1 s per RSA-2048 CreatePrimary, 100 ms per ActivateCredential.
    pub fn hardware() -> Self {
        Self {
            quote: Duration::from_millis(150),
            create_primary: Duration::from_secs(1),
            activate_credential: Duration::from_millis(100),
            other: HashMap::new(),
        }
    }

    /// The delay of command code `cc`.
    pub fn of(&self, cc: u32) -> Duration {
        match cc {
            TPM2_CC_QUOTE => self.quote,
            TPM2_CC_CREATE_PRIMARY => self.create_primary,
            TPM2_CC_ACTIVATE_CREDENTIAL => self.activate_credential,
            _ => self.other.get(&cc).copied().unwrap_or_default(),
        }
    }
}

/// State shared by the relay threads.
struct Shared {
    delays: Delays,
    upstream_port: u16,
    counts: Mutex<HashMap<u32, u64>>,
    /// Held while a command is delayed: slow commands run one at a time.
    device: Mutex<()>,
    /// The swtpm connection of the newest client, for [`SlowTpm::extend_pcr`]:
    /// swtpm serves one connection at a time, so a third party's command
    /// must go in between the client's commands on that connection.
    current: Mutex<Option<Arc<Mutex<TcpStream>>>>,
    stop: AtomicBool,
}

/// A relay in front of a [`Swtpm`] that delays commands by command code
/// and counts them. Stops accepting when dropped (open connections end when
/// their client or the swtpm closes them).
///
/// ```ignore
/// let swtpm = Swtpm::start()?;
/// let slow = SlowTpm::start(&swtpm, Delays::quote(Duration::from_millis(150)))?;
/// let tpm = aver_enclave::Tpm::open(&slow.tcti(), DEFAULT_AK_HANDLE)?;
/// assert_eq!(slow.count(TPM2_CC_CREATE_PRIMARY), 1);
/// ```
pub struct SlowTpm {
    port: u16,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

impl SlowTpm {
    /// Starts the relay in front of `swtpm`'s current ports (after a
    /// [`Swtpm::restart`], start a new relay).
    pub fn start(swtpm: &Swtpm, delays: Delays) -> anyhow::Result<Self> {
        let upstream_port = swtpm_port(&swtpm.tcti())?;
        let (command, control) =
            listener_pair().context("cannot find two free consecutive loopback ports")?;
        let port = command.local_addr()?.port();
        let shared = Arc::new(Shared {
            delays,
            upstream_port,
            counts: Mutex::new(HashMap::new()),
            device: Mutex::new(()),
            current: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let acceptors = vec![
            spawn_acceptor(command, shared.clone(), Kind::Command)?,
            spawn_acceptor(control, shared.clone(), Kind::Control)?,
        ];
        Ok(Self {
            port,
            shared,
            acceptors,
        })
    }

    /// The TCTI string, of the same form as [`Swtpm::tcti`]
    /// (`swtpm:host=127.0.0.1,port=…`; the control port is `port + 1`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// How many commands with code `cc` the TPM ran: counted when the
    /// response arrives, not counting answers of TPM_RC_RETRY, TPM_RC_YIELDED
    /// or TPM_RC_TESTING (the TSS sends those commands again, and a real
    /// TPM answers them without running the command or taking its time).
    pub fn count(&self, cc: u32) -> u64 {
        self.lock_counts().get(&cc).copied().unwrap_or(0)
    }

    /// All counts so far, by command code.
    pub fn counts(&self) -> HashMap<u32, u64> {
        self.lock_counts().clone()
    }

    /// The delays this relay applies.
    pub fn delays(&self) -> &Delays {
        &self.shared.delays
    }

    /// Extends SHA-256 PCR `pcr` with `data` (the TPM hashes nothing: `data`
    /// is the digest), as anyone else with access to the TPM could: a
    /// TPM2_PCR_Extend sent on the newest client's swtpm connection between
    /// two of its commands (or on a connection of its own when no client is
    /// connected). The client is not told.
    pub fn extend_pcr(&self, pcr: u32, data: [u8; 32]) -> anyhow::Result<()> {
        let command = pcr_extend_command(pcr, &data);
        // Held across the exchange: a relay whose client has gone clears
        // `current` under this lock before it closes that connection, so
        // the command goes either on a live connection or on our own.
        let current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let response = if let Some(upstream) = current.as_ref() {
            let mut upstream = upstream.lock().unwrap_or_else(|p| p.into_inner());
            upstream.write_all(&command)?;
            read_frame(&mut upstream)?
        } else {
            // Not held while waiting on swtpm: a client connecting now must
            // be able to register, or its relay and this wait would block
            // each other behind swtpm's one connection at a time.
            drop(current);
            self.extend_on_own_connection(&command)?
        };
        match response {
            Some((0, _)) => Ok(()),
            Some((rc, _)) => bail!("TPM2_PCR_Extend of PCR {pcr} failed: TPM_RC 0x{rc:x}"),
            None => bail!("swtpm closed the connection on TPM2_PCR_Extend"),
        }
    }

    /// Sends `command` on a connection of its own. Right after swtpm
    /// starts, it may reset a new connection while it still closes the
    /// readiness probe's: a reset or close before any answer means the
    /// command was not run, so it is sent again, a few times.
    fn extend_on_own_connection(&self, command: &[u8]) -> anyhow::Result<Option<(u32, Vec<u8>)>> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            let result = (|| {
                let mut own = TcpStream::connect((Ipv4Addr::LOCALHOST, self.shared.upstream_port))?;
                own.write_all(command)?;
                read_frame(&mut own)
            })();
            match result {
                Ok(None) if attempt < ATTEMPTS => {}
                Err(e) if attempt < ATTEMPTS && is_reset(&e) => {}
                other => return Ok(other?),
            }
            attempt += 1;
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for SlowTpm {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accepts so that they see the flag.
        for port in [self.port, self.port + 1] {
            let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
        }
        for handle in self.acceptors.drain(..) {
            let _ = handle.join();
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Command,
    Control,
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// The port of a `swtpm:host=…,port=N` TCTI string.
fn swtpm_port(tcti: &str) -> anyhow::Result<u16> {
    let Some(options) = tcti.strip_prefix("swtpm:") else {
        bail!("not a swtpm TCTI: {tcti}");
    };
    options
        .split(',')
        .find_map(|kv| kv.strip_prefix("port="))
        .context("the TCTI names no port")?
        .parse()
        .with_context(|| format!("bad port in {tcti}"))
}

/// Binds `p` and `p + 1` on loopback (the swtpm TCTI's command and control
/// ports), holding both so that no other process can take them.
fn listener_pair() -> io::Result<(TcpListener, TcpListener)> {
    for _ in 0..100 {
        let command = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let Some(ctrl) = command.local_addr()?.port().checked_add(1) else {
            continue;
        };
        if let Ok(control) = TcpListener::bind((Ipv4Addr::LOCALHOST, ctrl)) {
            return Ok((command, control));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no two consecutive free ports after 100 tries",
    ))
}

fn spawn_acceptor(
    listener: TcpListener,
    shared: Arc<Shared>,
    kind: Kind,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("slow-tpm-accept".into())
        .spawn(move || {
            for client in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let shared = shared.clone();
                let _ = thread::Builder::new()
                    .name("slow-tpm-conn".into())
                    .spawn(move || {
                        let _ = match kind {
                            Kind::Command => relay_commands(client, &shared),
                            Kind::Control => pass_through(client, shared.upstream_port + 1),
                        };
                    });
            }
        })
}

/// Relays whole commands and responses between a client and swtpm's
/// command port, holding each response for its command code's delay (the
/// client sees the same latency as with the delay before forwarding; the
/// difference is that a command the TPM did not run is not delayed).
fn relay_commands(mut client: TcpStream, shared: &Shared) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, shared.upstream_port))?;
    let _ = stream.set_nodelay(true);
    let shutdown = stream.try_clone()?;
    let upstream = Arc::new(Mutex::new(stream));
    *shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(upstream.clone());
    let result = (|| loop {
        let Some((cc, command)) = read_frame(&mut client)? else {
            return Ok(());
        };
        let (rc, response) = {
            let mut upstream = upstream.lock().unwrap_or_else(|p| p.into_inner());
            upstream.write_all(&command)?;
            read_frame(&mut upstream)?.ok_or(io::ErrorKind::UnexpectedEof)?
        };
        // A TPM that answers "retry" (or "yielded", "testing") has not run
        // the command and answers at once; the TSS sends it again.
        if !is_try_again(rc) {
            *shared
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(cc)
                .or_insert(0) += 1;
            let delay = shared.delays.of(cc);
            if !delay.is_zero() {
                // Only the delay holds the device: swtpm serves one
                // connection at a time, and a client queued behind another
                // must not block that other's commands here.
                let _device = shared.device.lock().unwrap_or_else(|p| p.into_inner());
                thread::sleep(delay);
            }
        }
        client.write_all(&response)?;
    })();
    // Before closing: an `extend_pcr` holding `current` finishes on this
    // connection first, and none starts on it afterwards.
    {
        let mut current = shared.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &upstream)) {
            *current = None;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = shutdown.shutdown(Shutdown::Both);
    result
}

/// TPM2_PCR_Extend(pcr, sha256: data) with an empty password session.
fn pcr_extend_command(pcr: u32, data: &[u8; 32]) -> Vec<u8> {
    const TPM_ST_SESSIONS: u16 = 0x8002;
    const TPM2_CC_PCR_EXTEND: u32 = 0x0000_0182;
    const TPM_RS_PW: u32 = 0x4000_0009;
    const TPM_ALG_SHA256: u16 = 0x000b;
    let mut body = Vec::new();
    body.extend_from_slice(&pcr.to_be_bytes());
    // Authorization area: one password session, empty nonce and password.
    let auth: Vec<u8> = [
        &TPM_RS_PW.to_be_bytes()[..],
        &0u16.to_be_bytes(),
        &[0u8],
        &0u16.to_be_bytes(),
    ]
    .concat();
    body.extend_from_slice(&(auth.len() as u32).to_be_bytes());
    body.extend_from_slice(&auth);
    // TPML_DIGEST_VALUES: one SHA-256 digest.
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    body.extend_from_slice(data);
    let mut command = Vec::with_capacity(HEADER_LEN + body.len());
    command.extend_from_slice(&TPM_ST_SESSIONS.to_be_bytes());
    command.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_be_bytes());
    command.extend_from_slice(&TPM2_CC_PCR_EXTEND.to_be_bytes());
    command.extend_from_slice(&body);
    command
}

/// TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING: warnings the TSS answers
/// by sending the same command again. (swtpm answers the first TPM2_Quote
/// with a freshly created AK with TPM_RC_RETRY.)
fn is_try_again(rc: u32) -> bool {
    matches!(rc, 0x0922 | 0x0908 | 0x090a)
}

/// Reads one TPM command or response: `None` on a clean end of stream
/// before its first byte. Returns the header's third field (command code,
/// or response code) and the whole frame.
fn read_frame(stream: &mut TcpStream) -> io::Result<Option<(u32, Vec<u8>)>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match stream.read(&mut header[filled..])? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let code = u32::from_be_bytes([header[6], header[7], header[8], header[9]]);
    if !(HEADER_LEN..=MAX_FRAME).contains(&size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TPM frame size {size} out of range"),
        ));
    }
    let mut frame = vec![0u8; size];
    frame[..HEADER_LEN].copy_from_slice(&header);
    stream.read_exact(&mut frame[HEADER_LEN..])?;
    Ok(Some((code, frame)))
}

/// Copies bytes both ways between a client and swtpm's control port.
fn pass_through(client: TcpStream, upstream_port: u16) -> io::Result<()> {
    let upstream = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream_port))?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let forward = thread::Builder::new()
        .name("slow-tpm-ctrl".into())
        .spawn(move || {
            let _ = io::copy(&mut c_read, &mut u_write);
            let _ = u_write.shutdown(Shutdown::Write);
        })?;
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = forward.join();
    Ok(())
}
