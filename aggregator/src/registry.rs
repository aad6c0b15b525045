//! Connected agents: the accept loop, the hello handshake, and who is online.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedtune_protocol::{
    AgentMessage, AggregatorMessage, Capabilities, ErrorCode, ErrorMessage, Limits, PROTOCOL_VERSION, SessionLimits,
    Welcome,
};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::tls::peer_agent_id;
use crate::wire::{reply_error, reply_error_and_linger};
use fedtune_protocol::wire::{WireError, read_frame, write_message};

/// How long the QUIC and TLS handshake of a new connection may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream an agent opened may take to deliver its one frame.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams an agent may open on its own in a burst. Honest agents open none after their
/// hello (they answer on the aggregator's streams), so an agent past its allowance is
/// misbehaving and is disconnected. The allowance belongs to the agent's identity, not to
/// one connection: reconnecting does not refill it.
const STREAM_BURST: f64 = 8.0;
/// How fast that allowance refills, in streams per second.
const STREAM_REFILL_PER_SECOND: f64 = 0.2;
/// The QUIC close code of a connection the aggregator ended because the agent misbehaved.
pub const CLOSE_MISBEHAVING: u32 = 2;

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
struct Allowance {
    tokens: f64,
    burst: f64,
    per_second: f64,
    updated: Instant,
}

impl Allowance {
    fn new(burst: f64, per_second: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            burst,
            per_second,
            updated: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connected, authenticated agent.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// Identity from the agent's certificate.
    pub id: String,
    /// Session number, unique per aggregator run.
    pub session_id: u64,
    /// What the agent said it offers.
    pub capabilities: Capabilities,
    /// The QUIC connection.
    pub connection: quinn::Connection,
}

/// The agents currently connected, keyed by id.
#[derive(Debug)]
pub struct Registry {
    agents: Mutex<BTreeMap<String, AgentHandle>>,
    /// Each agent's allowance of unsolicited streams, kept after it disconnects (one
    /// entry per identity the CA issued that ever connected).
    allowances: Mutex<BTreeMap<String, Allowance>>,
    /// Bumped on every connect and disconnect.
    version: watch::Sender<u64>,
    next_session: AtomicU64,
    /// For each agent, the session that was sent a model whole and the checksum of that
    /// model's frozen values: a later run over the same connection (the next trial of a
    /// study) sends that session only the trainable values.
    bases: Mutex<BTreeMap<String, (u64, u32)>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            agents: Mutex::default(),
            allowances: Mutex::default(),
            version: watch::Sender::new(0),
            next_session: AtomicU64::new(0),
            bases: Mutex::default(),
        }
    }
}

impl Registry {
    /// Connected agents, ordered by id (so seeded sampling is reproducible).
    pub fn snapshot(&self) -> Vec<AgentHandle> {
        self.lock().values().cloned().collect()
    }

    /// Number of connected agents.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver that sees every change of the set of agents (none is missed between
    /// two looks, unlike a notification).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The checksum of the frozen values `agent`'s session `session` holds, if it was sent
    /// them whole (see [`Registry::record_base`]).
    pub fn base_of(&self, agent: &str, session: u64) -> Option<u32> {
        let bases = self.bases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        bases
            .get(agent)
            .filter(|(held_by, _)| *held_by == session)
            .map(|(_, checksum)| *checksum)
    }

    /// Records that `agent`'s session `session` holds the frozen values whose checksum is
    /// `checksum`; another session of the agent (a reconnection) holds nothing.
    pub fn record_base(&self, agent: &str, session: u64, checksum: u32) {
        let mut bases = self.bases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        bases.insert(agent.to_owned(), (session, checksum));
    }

    /// Forgets that `agent` holds the frozen values whose checksum is `checksum` (it
    /// failed a task of a run with them: it may have lost them).
    pub fn forget_base(&self, agent: &str, checksum: u32) {
        let mut bases = self.bases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if bases.get(agent).is_some_and(|(_, held)| *held == checksum) {
            bases.remove(agent);
        }
    }

    /// Spends one of `agent`'s unsolicited streams; `false` when it has none left.
    fn allow_stream(&self, agent: &str, now: Instant) -> bool {
        let mut allowances = self.allowances.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        allowances
            .entry(agent.to_owned())
            .or_insert_with(|| Allowance::new(STREAM_BURST, STREAM_REFILL_PER_SECOND, now))
            .take(now)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, AgentHandle>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/remove), so a poisoned lock is still usable.
        self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, handle: AgentHandle) {
        if let Some(old) = self.lock().insert(handle.id.clone(), handle) {
            old.connection
                .close(2u32.into(), b"replaced by a newer connection of the same agent");
        }
        self.bump();
    }

    fn remove(&self, id: &str, session_id: u64) {
        let mut agents = self.lock();
        if agents.get(id).is_some_and(|h| h.session_id == session_id) {
            agents.remove(id);
        }
        drop(agents);
        self.bump();
    }
}

/// Accepts connections until the endpoint closes. At most `max_agents` connections are
/// served at once; more are refused.
pub async fn accept_loop(endpoint: quinn::Endpoint, registry: Arc<Registry>, max_agents: usize, max_payload: u64) {
    let slots = Arc::new(Semaphore::new(max_agents));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "refusing connection: {max_agents} agents already connected");
            incoming.refuse();
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = serve_agent(incoming, &registry, max_payload).await {
                info!(%remote, "agent connection ended: {e}");
            }
            drop(slot);
        });
    }
}

/// Why a connection did not become (or stay) an agent session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The QUIC connection failed or ended.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The QUIC and TLS handshake did not finish in time.
    #[error("the handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer's certificate does not name a valid agent.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The agent did not say hello in time.
    #[error("agent {agent} did not say hello within {waited:?}")]
    HelloTimeout {
        /// The agent.
        agent: String,
        /// How long it had.
        waited: Duration,
    },
    /// The agent's hello was refused; it was told why.
    #[error("agent {agent}: {error}")]
    Refused {
        /// The agent.
        agent: String,
        /// What it was told.
        error: ErrorMessage,
    },
    /// The hello could not be read or the welcome not written.
    #[error("agent {agent}: {source}")]
    Wire {
        /// The agent.
        agent: String,
        /// What the stream said.
        source: WireError,
    },
}

async fn serve_agent(incoming: quinn::Incoming, registry: &Registry, max_payload: u64) -> Result<(), SessionError> {
    let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    let id = match peer_agent_id(&connection) {
        Ok(id) => id,
        Err(e) => {
            connection.close(1u32.into(), b"no valid agent certificate");
            return Err(e.into());
        }
    };
    let session_id = registry.next_session.fetch_add(1, Ordering::Relaxed) + 1;
    let capabilities = tokio::time::timeout(HELLO_TIMEOUT, handshake(&connection, &id, session_id, max_payload))
        .await
        .map_err(|_| SessionError::HelloTimeout {
            agent: id.clone(),
            waited: HELLO_TIMEOUT,
        })??;
    info!(agent = %id, session_id, ?capabilities, "agent connected");
    registry.insert(AgentHandle {
        id: id.clone(),
        session_id,
        capabilities,
        connection: connection.clone(),
    });

    // Streams the agent opens after the handshake are unsolicited: each is answered, within
    // a time limit and an allowance; an agent past its allowance is disconnected.
    let reason = loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                if !registry.allow_stream(&id, Instant::now()) {
                    let why = format!(
                        "more than {STREAM_BURST} unsolicited streams (one allowed per {:.0} s after that)",
                        1.0 / STREAM_REFILL_PER_SECOND
                    );
                    warn!(agent = %id, "disconnecting a misbehaving agent: {why}");
                    connection.close(CLOSE_MISBEHAVING.into(), why.as_bytes());
                    break quinn::ConnectionError::LocallyClosed;
                }
                tokio::spawn(answer_unsolicited(send, recv, id.clone(), max_payload));
            }
            Err(e) => break e,
        }
    };
    registry.remove(&id, session_id);
    info!(agent = %id, "agent disconnected: {reason}");
    Ok(())
}

/// Answers a stream the agent opened outside any exchange: an error saying why nothing
/// was expected, or a reset if its frame does not arrive within [`STREAM_TIMEOUT`].
async fn answer_unsolicited(mut send: quinn::SendStream, mut recv: quinn::RecvStream, id: String, max_payload: u64) {
    let limits = Limits {
        max_payload,
        ..Limits::default()
    };
    let read = tokio::time::timeout(STREAM_TIMEOUT, read_frame(&mut recv, limits)).await;
    let error = match read {
        Err(_) => {
            warn!(agent = %id, "an unsolicited stream sent no whole frame within {STREAM_TIMEOUT:?}: reset");
            let _ = recv.stop(0u32.into());
            let _ = send.reset(0u32.into());
            return;
        }
        Ok(Ok((AgentMessage::Update(u), _))) => ErrorMessage::new(
            ErrorCode::NotInRound,
            format!("no task was sent for trial {} round {} to agent {id}", u.trial, u.round),
        ),
        Ok(Ok((other, _))) => ErrorMessage::new(
            ErrorCode::Unexpected,
            format!("unexpected {} outside an exchange", other.name()),
        ),
        Ok(Err(e)) => match e.reply() {
            Some(error) => error,
            None => return debug!(agent = %id, "unsolicited stream failed: {e}"),
        },
    };
    warn!(agent = %id, "refused unsolicited message: {}", error.message);
    reply_error(&mut send, error).await;
    let _ = recv.stop(0u32.into());
}

async fn handshake(
    connection: &quinn::Connection,
    id: &str,
    session_id: u64,
    max_payload: u64,
) -> Result<Capabilities, SessionError> {
    let refused = |error: ErrorMessage| SessionError::Refused {
        agent: id.to_owned(),
        error,
    };
    let wire = |source: WireError| SessionError::Wire {
        agent: id.to_owned(),
        source,
    };
    let (mut send, mut recv) = connection.accept_bi().await?;
    let hello = match read_frame(&mut recv, Limits::control()).await {
        Ok((AgentMessage::Hello(hello), _)) => hello,
        Ok((other, _)) => {
            let error = ErrorMessage::new(ErrorCode::Unexpected, format!("expected Hello, got {}", other.name()));
            reply_error_and_linger(&mut send, error.clone()).await;
            return Err(refused(error));
        }
        Err(e) => {
            if let Some(error) = e.reply() {
                reply_error_and_linger(&mut send, error).await;
            }
            return Err(wire(e));
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let error = ErrorMessage::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "agent speaks protocol {}, this aggregator speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        );
        reply_error_and_linger(&mut send, error.clone()).await;
        return Err(refused(error));
    }
    let welcome = Welcome {
        session_id,
        agent_id: id.to_owned(),
        limits: SessionLimits {
            max_payload_bytes: max_payload,
        },
    };
    write_message(&mut send, &AggregatorMessage::Welcome(welcome))
        .await
        .map_err(wire)?;
    send.finish().map_err(|e| wire(e.into()))?;
    Ok(hello.capabilities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_is_a_burst_then_a_steady_rate() {
        let t0 = Instant::now();
        let mut allowance = Allowance::new(3.0, 0.5, t0);
        assert!((0..3).all(|_| allowance.take(t0)));
        assert!(!allowance.take(t0));
        assert!(!allowance.take(t0 + Duration::from_millis(1_900)));
        assert!(allowance.take(t0 + Duration::from_millis(2_000)));
        assert!(!allowance.take(t0 + Duration::from_millis(2_100)));
        // Idle time refills up to the burst, no further.
        let later = t0 + Duration::from_secs(3_600);
        assert!((0..3).all(|_| allowance.take(later)));
        assert!(!allowance.take(later));
    }
}
