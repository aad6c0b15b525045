//! The agent's side of a federation: connect, say hello, serve tasks, reconnect.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedtune_protocol::{
    AgentMessage, AggregatorMessage, Decline, ErrorCode, ErrorMessage, Hello, Limits, PROTOCOL_VERSION, Task, Update,
    Welcome,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::cancel::Cancel;
use crate::last_update::{LastUpdate, TaskKey};
use crate::metrics::{AgentMetrics, TaskOutcome};
use crate::refusal::Refusal;
use crate::task::{count, lock, train_until_abandoned, update_for};
use crate::trainer::{Trainer, TrainerError};
use fedtune_protocol::wire::{WireError, read_frame, write_frame};

/// How an agent reaches its aggregator.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Aggregator address.
    pub aggregator: SocketAddr,
    /// Name in the aggregator's certificate (e.g. `localhost`).
    pub server_name: String,
    /// Name the agent calls itself in its hello (identity comes from its certificate).
    pub name: String,
    /// Largest task payload accepted, in bytes.
    pub max_payload_bytes: u64,
    /// Decline every task that does not run under secure aggregation.
    pub require_secure_aggregation: bool,
    /// Reconnection policy.
    pub reconnect: Reconnect,
    /// Counters for `/metrics`, when the agent serves them.
    pub metrics: Option<Arc<AgentMetrics>>,
}

/// Exponential backoff between connection attempts.
///
/// The wait starts again from `initial` once a session was served, and is skipped when
/// a served session ended in a stateless reset: the aggregator restarted and is listening.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    /// First wait.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Consecutive failed attempts before giving up (`None`: never give up).
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            max_attempts: Some(20),
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The aggregator said the federation is over.
    Shutdown(String),
    /// The local stop signal fired.
    Stopped,
}

/// Why the agent gave up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The aggregator could not be reached or kept dropping the connection.
    #[error("gave up after {attempts} failed connection attempts; last error: {last}")]
    Unreachable {
        /// Consecutive attempts.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The aggregator refused the session.
    #[error("the aggregator refused the session: {0}")]
    Refused(ErrorMessage),
    /// The TLS handshake failed in a way no retry can fix: the aggregator refused this
    /// agent's certificate (another CA's, revoked, expired), or this agent cannot verify
    /// the aggregator's.
    #[error(transparent)]
    Handshake(#[from] Refusal),
    /// No connection can be attempted as configured (e.g. a server name that is not a
    /// valid DNS name).
    #[error("cannot connect to the aggregator: {0}")]
    Connect(quinn::ConnectError),
}

/// Serves the aggregator until it says shutdown or `stop` becomes `true`, reconnecting
/// with backoff when the connection drops or the aggregator says it was interrupted.
///
/// # Errors
/// [`AgentError`] when the aggregator refuses the session or this agent's certificate,
/// this agent cannot verify the aggregator's certificate, or the aggregator stays
/// unreachable.
pub async fn run<T: Trainer>(
    endpoint: quinn::Endpoint,
    options: AgentOptions,
    trainer: T,
    mut stop: watch::Receiver<bool>,
) -> Result<Exit, AgentError> {
    let trainer = Arc::new(Mutex::new(trainer));
    // Kept across connections: a restarted aggregator asks again for what it lost.
    let last: Shared<Option<LastUpdate>> = Arc::default();
    // The last whole model of a task with frozen tensors, so later tasks can send only
    // the trainable values.
    let base: Shared<Option<Base>> = Arc::default();
    let mut backoff = options.reconnect.initial;
    let mut failures = 0u32;
    loop {
        let attempt = serve_connection(&endpoint, &options, &trainer, &last, &base, &mut stop).await;
        let lost = match attempt {
            Ok(exit) => return Ok(exit),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Lost(lost)) => lost,
        };
        if lost.served {
            failures = 0;
            backoff = options.reconnect.initial;
        }
        failures += 1;
        if options.reconnect.max_attempts.is_some_and(|max| failures >= max) {
            warn!(
                "giving up on {}: {failures} attempts in a row failed, the last with {}",
                options.aggregator, lost.why
            );
            return Err(AgentError::Unreachable {
                attempts: failures,
                last: lost.why,
            });
        }
        if lost.listening {
            info!("{}: reconnecting to {} at once", lost.why, options.aggregator);
            continue;
        }
        warn!(
            "connection to {} failed ({}); retrying in {backoff:?}",
            options.aggregator, lost.why
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return Ok(Exit::Stopped),
        }
        backoff = (backoff * 2).min(options.reconnect.max);
    }
}

/// Why a connection ended without an [`Exit`].
enum Failure {
    /// No retry can help.
    Fatal(AgentError),
    /// Worth another attempt.
    Lost(Lost),
}

/// A connection attempt that failed, or a session that ended, in a way that may heal.
struct Lost {
    /// What happened, in words.
    why: String,
    /// A session had been served on the connection (the backoff starts over).
    served: bool,
    /// The aggregator is known to be listening again: a served session ended in a
    /// stateless reset, sent by a restarted aggregator that no longer knows the connection.
    listening: bool,
}

impl Lost {
    fn attempt(why: impl std::fmt::Display) -> Self {
        Self {
            why: why.to_string(),
            served: false,
            listening: false,
        }
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Lost(Lost::attempt(e))
    }
}

/// The failure `error` ended a connection with: fatal when it is a TLS refusal no retry
/// can fix (see [`Refusal::of`] for `handshake_done`).
fn connection_failure(error: &quinn::ConnectionError, handshake_done: bool) -> Failure {
    match Refusal::of(error, handshake_done) {
        Some(refusal) => Failure::Fatal(refusal.into()),
        None => Failure::Lost(Lost::attempt(error)),
    }
}

/// Connects and says hello; the connection and the aggregator's welcome.
async fn open_session<T: Trainer>(
    endpoint: &quinn::Endpoint,
    options: &AgentOptions,
    trainer: &Arc<Mutex<T>>,
) -> Result<(quinn::Connection, Welcome), Failure> {
    let connecting = endpoint
        .connect(options.aggregator, &options.server_name)
        .map_err(|e| match e {
            quinn::ConnectError::CidsExhausted => Failure::Lost(Lost::attempt(e)),
            e => Failure::Fatal(AgentError::Connect(e)),
        })?;
    let connection = connecting.await.map_err(|e| connection_failure(&e, false))?;
    match hello(&connection, options, trainer).await {
        Ok(welcome) => Ok((connection, welcome)),
        // In TLS 1.3 the aggregator checks this agent's certificate after the agent has
        // finished its handshake: a refusal shows up here, as the way the connection
        // ended, whichever step of the hello noticed it first.
        Err(failure) => Err(match connection.close_reason() {
            Some(reason) => match Refusal::of(&reason, true) {
                Some(refusal) => Failure::Fatal(refusal.into()),
                None => failure,
            },
            None => failure,
        }),
    }
}

async fn hello<T: Trainer>(
    connection: &quinn::Connection,
    options: &AgentOptions,
    trainer: &Arc<Mutex<T>>,
) -> Result<Welcome, Failure> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let capabilities = lock(trainer).capabilities();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        name: options.name.clone(),
        capabilities,
    };
    write_frame(&mut send, &AgentMessage::Hello(hello), &[]).await?;
    send.finish()?;
    match read_frame(&mut recv, Limits::control()).await?.0 {
        AggregatorMessage::Welcome(welcome) => Ok(welcome),
        AggregatorMessage::Error(error) => Err(Failure::Fatal(AgentError::Refused(error))),
        other => Err(Failure::Lost(Lost::attempt(format!(
            "expected Welcome, got {}",
            other.name()
        )))),
    }
}

/// How the aggregator ended a session.
enum Goodbye {
    /// The federation is over.
    Over(String),
    /// The aggregator stops before the end and will be served again.
    Interrupted(String),
}

async fn serve_connection<T: Trainer>(
    endpoint: &quinn::Endpoint,
    options: &AgentOptions,
    trainer: &Arc<Mutex<T>>,
    last: &Shared<Option<LastUpdate>>,
    base: &Shared<Option<Base>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Exit, Failure> {
    let (connection, welcome) = open_session(endpoint, options, trainer).await?;
    info!(agent = %welcome.agent_id, session = welcome.session_id, "connected to {}", options.aggregator);
    let metrics = options.metrics.clone();
    let _connected = Connected::new(metrics.clone());

    let limits = Limits {
        max_payload: options.max_payload_bytes,
        ..Limits::default()
    };
    let (goodbye_tx, mut goodbye_rx) = mpsc::channel::<Goodbye>(1);
    loop {
        tokio::select! {
            stream = connection.accept_bi() => {
                let (send, recv) = match stream {
                    Ok(stream) => stream,
                    Err(e) => return Err(Failure::Lost(Lost {
                        listening: matches!(e, quinn::ConnectionError::Reset),
                        served: true,
                        why: format!("connection lost: {e}"),
                    })),
                };
                let exchange = Exchange {
                    limits,
                    require_secure: options.require_secure_aggregation,
                    trainer: trainer.clone(),
                    kept: Kept { last: last.clone(), base: base.clone() },
                    goodbye: goodbye_tx.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(async move {
                    let served = serve_stream(send, recv, exchange);
                    if let Err(e) = served.await {
                        debug!("exchange ended: {e}");
                    }
                });
            }
            Some(goodbye) = goodbye_rx.recv() => {
                connection.close(0u32.into(), b"bye");
                return match goodbye {
                    Goodbye::Over(reason) => {
                        info!("aggregator shut the federation down: {reason}");
                        Ok(Exit::Shutdown(reason))
                    }
                    Goodbye::Interrupted(reason) => {
                        info!("aggregator interrupted: {reason}; waiting for it to be served again");
                        Err(Failure::Lost(Lost {
                            why: format!("the aggregator was interrupted ({reason})"),
                            served: true,
                            listening: false,
                        }))
                    }
                };
            }
            _ = stop.changed() => {
                connection.close(0u32.into(), b"agent stopping");
                return Ok(Exit::Stopped);
            }
        }
    }
}

/// Sets the connected gauge for as long as a connection is served.
struct Connected(Option<Arc<AgentMetrics>>);

impl Connected {
    fn new(metrics: Option<Arc<AgentMetrics>>) -> Self {
        if let Some(m) = &metrics {
            m.set_connected(true);
        }
        Self(metrics)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.set_connected(false);
        }
    }
}

/// State shared by the tasks of an agent.
type Shared<T> = Arc<Mutex<T>>;

/// The frozen values later tasks leave out: their checksum, and the values in order
/// ([`fedtune_protocol::freeze::Trainable::gather_frozen`]).
type Base = (u32, Vec<f32>);

/// What an agent keeps between exchanges.
struct Kept {
    /// The last trained update, for a task sent again.
    last: Shared<Option<LastUpdate>>,
    /// The last whole model of a task with frozen tensors.
    base: Shared<Option<Base>>,
}

/// What one exchange (a stream the aggregator opened) works with: the connection's limits
/// and policy, and the agent-wide state every exchange shares.
struct Exchange<T> {
    limits: Limits,
    require_secure: bool,
    trainer: Arc<Mutex<T>>,
    kept: Kept,
    /// Where an exchange that received `Shutdown` or `Interrupted` says so to the
    /// connection loop.
    goodbye: mpsc::Sender<Goodbye>,
    metrics: Option<Arc<AgentMetrics>>,
}

async fn serve_stream<T: Trainer>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    exchange: Exchange<T>,
) -> Result<(), WireError> {
    let Exchange {
        limits,
        require_secure,
        trainer,
        kept: Kept { last, base },
        goodbye,
        metrics: shared_metrics,
    } = exchange;
    let metrics = shared_metrics.as_deref();
    let (message, payload) = match read_frame(&mut recv, limits).await {
        Ok(frame) => frame,
        Err(WireError::Protocol(e)) => {
            warn!("malformed frame from the aggregator: {e}");
            let error = AgentMessage::Error(ErrorMessage::new(e.code(), e.to_string()));
            write_frame(&mut send, &error, &[]).await?;
            send.finish()?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match message {
        AggregatorMessage::Task(task) => {
            let (trial, round) = (task.trial, task.round);
            if let Some(m) = metrics {
                m.received(payload.len());
            }
            let payload = match whole_model(&task, payload, &base) {
                Ok(whole) => whole,
                Err(error) => {
                    count(metrics, TaskOutcome::Failed);
                    write_frame(&mut send, &AgentMessage::Error(error), &[]).await?;
                    return Ok(send.finish()?);
                }
            };
            if let Some(params) = task.secure {
                return crate::secure::serve(&mut send, &mut recv, task, params, payload, trainer, shared_metrics)
                    .await;
            }
            if require_secure {
                count(metrics, TaskOutcome::Declined);
                let reason = "this agent only sends its update under secure aggregation".to_string();
                warn!(trial, round, "declining task: {reason}");
                let decline = AgentMessage::Decline(Decline { trial, round, reason });
                write_frame(&mut send, &decline, &[]).await?;
                return Ok(send.finish()?);
            }
            let started = std::time::Instant::now();
            let key = TaskKey::of(&task, &payload);
            let kept = lock(&last).take();
            if let Some(kept) = kept.filter(|k| k.answers(&key)) {
                info!(
                    trial,
                    round, "answering a task sent again with the update already trained for it"
                );
                let replayed = Update {
                    replayed: true,
                    ..kept.update.clone()
                };
                write_frame(&mut send, &AgentMessage::Update(replayed), &kept.delta).await?;
                count(metrics, TaskOutcome::Resent);
                if let Some(m) = metrics {
                    m.sent(kept.delta.len());
                }
                read_ack(&mut recv, trial, round, started).await?;
                *lock(&last) = Some(kept);
                return Ok(send.finish()?);
            }
            let cancel = Cancel::until(started + Duration::from_millis(task.deadline_ms));
            let outcome =
                train_until_abandoned(send.stopped(), trainer, task, payload, cancel, shared_metrics.clone()).await;
            let (task, outcome) = match outcome {
                Ok(done) => done,
                Err(panic) => {
                    count(metrics, TaskOutcome::Failed);
                    let error = ErrorMessage::new(ErrorCode::Internal, format!("training crashed: {panic}"));
                    write_frame(&mut send, &AgentMessage::Error(error), &[]).await?;
                    return Ok(send.finish()?);
                }
            };
            match outcome {
                Ok(fit) => {
                    let update = update_for(&task, &fit);
                    let sent = write_frame(&mut send, &AgentMessage::Update(update.clone()), &fit.delta).await;
                    // Kept whether or not it got through: the aggregator may die while the
                    // update is on the wire, or before it commits the round.
                    if let Some(m) = metrics {
                        m.sent(fit.delta.len());
                    }
                    *lock(&last) = Some(LastUpdate::new(key, update, fit));
                    sent?;
                    count(metrics, TaskOutcome::Trained);
                    read_ack(&mut recv, trial, round, started).await?;
                }
                Err(TrainerError::Abandoned(why)) => {
                    // The aggregator has stopped waiting; say so in case it still listens.
                    warn!(trial, round, "task abandoned: {why}");
                    count(metrics, TaskOutcome::Declined);
                    let reason = format!("task abandoned: {why}");
                    let decline = AgentMessage::Decline(Decline { trial, round, reason });
                    let _ = write_frame(&mut send, &decline, &[]).await;
                }
                Err(e) => {
                    warn!(trial, round, "declining task: {e}");
                    count(metrics, TaskOutcome::Declined);
                    let reason = e.to_string();
                    let decline = AgentMessage::Decline(Decline { trial, round, reason });
                    write_frame(&mut send, &decline, &[]).await?;
                }
            }
        }
        AggregatorMessage::Evaluate(request) => {
            let reply = match check_layout(&request.model, request.manifest_hash, payload.len()) {
                Some(error) => AgentMessage::Error(error),
                None => {
                    let result = tokio::task::spawn_blocking(move || lock(&trainer).evaluate(&request, &payload)).await;
                    match result {
                        Ok(Ok(evaluation)) => AgentMessage::Evaluation(evaluation),
                        Ok(Err(e)) => AgentMessage::Error(ErrorMessage::new(ErrorCode::InvalidTask, e.to_string())),
                        Err(panic) => AgentMessage::Error(ErrorMessage::new(ErrorCode::Internal, panic.to_string())),
                    }
                }
            };
            let outcome = match reply {
                AgentMessage::Evaluation(_) => TaskOutcome::Evaluated,
                _ => TaskOutcome::Failed,
            };
            count(metrics, outcome);
            write_frame(&mut send, &reply, &[]).await?;
        }
        AggregatorMessage::Shutdown(s) => {
            let _ = goodbye.send(Goodbye::Over(s.reason)).await;
            return Ok(());
        }
        AggregatorMessage::Interrupted(i) => {
            let _ = goodbye.send(Goodbye::Interrupted(i.reason)).await;
            return Ok(());
        }
        AggregatorMessage::Error(e) => warn!("aggregator error: {e}"),
        other @ (AggregatorMessage::Welcome(_)
        | AggregatorMessage::Ack(_)
        | AggregatorMessage::SecAggRoster(_)
        | AggregatorMessage::SecAggShares(_)
        | AggregatorMessage::SecAggUnmask(_)) => {
            let error = ErrorMessage::new(
                ErrorCode::Unexpected,
                format!("unexpected {} outside an exchange", other.name()),
            );
            write_frame(&mut send, &AgentMessage::Error(error), &[]).await?;
        }
    }
    send.finish()?;
    Ok(())
}

/// Reads the aggregator's answer to an update.
async fn read_ack(
    recv: &mut quinn::RecvStream,
    trial: u64,
    round: u64,
    started: std::time::Instant,
) -> Result<(), WireError> {
    match read_frame(recv, Limits::control()).await?.0 {
        AggregatorMessage::Ack(_) => debug!(
            trial,
            round,
            seconds = started.elapsed().as_secs_f64(),
            "update accepted"
        ),
        AggregatorMessage::Error(e) => warn!(trial, round, "update refused: {e}"),
        other => warn!(trial, round, "unexpected reply to an update: {}", other.name()),
    }
    Ok(())
}

/// The whole global model of `task`: its payload, checked against the manifest, or the
/// trainable values it carries put together with the frozen ones kept from an earlier
/// task ([`Task::base`]). The frozen values of a whole model of a task with frozen
/// tensors (frozen by pattern, or a LoRA model's base) are kept for the next, whatever
/// its layout: a trial of a study with adapters of another rank on the same base finds
/// them too.
fn whole_model(task: &Task, payload: Vec<f32>, base: &Shared<Option<Base>>) -> Result<Vec<f32>, ErrorMessage> {
    let Some(checksum) = task.base else {
        if let Some(error) = check_layout(&task.model, task.manifest_hash, payload.len()) {
            return Err(error);
        }
        if let Ok(trainable) = task.trainable()
            && !trainable.is_all()
        {
            *lock(base) = Some((trainable.frozen_checksum(&payload), trainable.gather_frozen(&payload)));
        }
        return Ok(payload);
    };
    let trainable = task
        .trainable()
        .map_err(|e| ErrorMessage::new(ErrorCode::InvalidTask, e.to_string()))?;
    if let Some(error) = check_layout(&task.model, task.manifest_hash, trainable.total()) {
        return Err(error);
    }
    if payload.len() != trainable.numel() {
        return Err(ErrorMessage::new(
            ErrorCode::ManifestMismatch,
            format!(
                "task payload has {} values, the model's trainable tensors hold {}",
                payload.len(),
                trainable.numel()
            ),
        ));
    }
    let whole = match lock(base).as_ref() {
        Some((kept, frozen)) if *kept == checksum => trainable.assemble(&payload, frozen),
        _ => None,
    };
    whole.ok_or_else(|| {
        ErrorMessage::new(
            ErrorCode::MissingBase,
            "this agent does not hold the frozen values the task leaves out; send the whole model",
        )
    })
}

fn check_layout(
    model: &fedtune_protocol::ModelSpec,
    hash: fedtune_protocol::ManifestHash,
    payload_len: usize,
) -> Option<ErrorMessage> {
    if let Err(e) = model.validate() {
        return Some(ErrorMessage::new(ErrorCode::InvalidTask, e.to_string()));
    }
    let manifest = model.manifest();
    if manifest.hash() != hash || manifest.numel() != payload_len {
        return Some(ErrorMessage::new(
            ErrorCode::ManifestMismatch,
            format!(
                "task payload has {payload_len} parameters for manifest {hash}, the model has {} (manifest {})",
                manifest.numel(),
                manifest.hash()
            ),
        ));
    }
    None
}

/// A client endpoint for reaching `aggregator`, bound to the matching wildcard (or, for
/// loopback, local) address, with `config` as its default.
///
/// # Errors
/// [`crate::tls::TlsError`] when the socket cannot be bound.
pub fn client_endpoint(
    config: quinn::ClientConfig,
    aggregator: SocketAddr,
    loopback: bool,
) -> Result<quinn::Endpoint, crate::tls::TlsError> {
    let bind: SocketAddr = match (aggregator.is_ipv4(), loopback) {
        (true, true) => ([127, 0, 0, 1], 0).into(),
        (true, false) => ([0, 0, 0, 0], 0).into(),
        (false, true) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
        (false, false) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let mut endpoint = crate::tls::client_endpoint(bind, loopback)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
