//! The tokio driver of a [`Federation`]: moves frames between QUIC streams and the state
//! machine, and sleeps until its next timeout.
//!
//! Nothing here decides anything about a round. [`drive`] feeds the machine the
//! registry's connects and disconnects, the answers read on each exchange and the
//! server-side evaluations (run on a blocking thread), and carries out the actions it
//! polls. Time comes from tokio's clock, so a test can run a whole federation on a
//! paused clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fedtune_protocol::{AggregatorMessage, Interrupted, Limits, Shutdown};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{Instrument, info, info_span};

use crate::config::{AggregatorConfig, FederationConfig};
use crate::registry::{AgentHandle, Registry, accept_loop};
use crate::wire::reply_error;
use fedtune_federation::{
    Action, Answer, EvaluationError, Evaluator, Event, ExchangeId, Federation, GlobalEvaluation, RoundRecord,
    RunReport, SetupError,
};
use fedtune_protocol::wire::{read_frame_gated, write_frame_shared, write_message};
use fedtune_store::{ResumeError, StoreError};

/// Why a federation could not run.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// Not enough agents connected in time.
    #[error("only {connected} of the {needed} required agents connected within {waited:?}")]
    NotEnoughAgents {
        /// Agents connected when the wait ended.
        connected: usize,
        /// `federation.min_agents`.
        needed: usize,
        /// How long the aggregator waited.
        waited: Duration,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The federation could not be set up from its configuration.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A stored run could not be opened or resumed.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// A round could not be committed to the store (the run stopped there).
    #[error("the store failed: {0}")]
    Store(StoreError),
}

/// Progress callback, called after each round.
pub type OnRound = Box<dyn FnMut(&RoundRecord) + Send>;
/// Progress callback while waiting for agents, with (connected, needed).
pub type OnWaiting = Box<dyn FnMut(usize, usize) + Send>;

/// Callbacks into the run: server-side evaluation and progress reporting.
#[derive(Default)]
pub struct Hooks {
    /// Evaluates the global model after each round and at the end.
    pub evaluator: Option<Arc<dyn Evaluator>>,
    /// Called after each round.
    pub on_round: Option<OnRound>,
    /// Called while waiting for agents, with (connected, needed).
    pub on_waiting: Option<OnWaiting>,
    /// Counts rounds, updates, bytes and connected agents for `/metrics`.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Whether a driven federation goes on after a committed round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Run the next round.
    Continue,
    /// Stop here (a pruned trial).
    Stop,
}

/// Serves `endpoint` and runs the federation `config` describes until the last round or
/// until `shutdown` becomes `true`; then tells every agent to stop and closes the
/// endpoint.
///
/// # Errors
/// [`FederationError`] when the configuration is invalid or too few agents connect.
pub async fn run(
    endpoint: quinn::Endpoint,
    config: AggregatorConfig,
    hooks: Hooks,
    shutdown: watch::Receiver<bool>,
) -> Result<RunReport, FederationError> {
    config.validate()?;
    let federation = Federation::new(Arc::new(config.settings()), 0)?;
    serve_federation(endpoint, federation, hooks, shutdown, |_, _| Flow::Continue, |_| {}).await
}

/// Serves `endpoint` for `federation` (new or resumed): waits for agents, drives it to
/// the end, then tells every agent to stop and closes the endpoint. `on_commit` sees
/// each committed round with the machine's state after it, before `hooks.on_round`.
pub(crate) async fn serve_federation(
    endpoint: quinn::Endpoint,
    federation: Federation,
    mut hooks: Hooks,
    mut shutdown: watch::Receiver<bool>,
    mut on_commit: impl FnMut(&RoundRecord, &Federation) -> Flow,
    on_done: impl FnOnce(&Result<RunReport, FederationError>),
) -> Result<RunReport, FederationError> {
    let config = federation.config().clone();
    let fed = &config.federation;
    let registry = accept_agents(&endpoint, fed);
    if let Some(metrics) = &hooks.metrics {
        metrics.watch_agents(&registry);
    }

    let result = async {
        let federation = federation.with_global_evaluation(hooks.evaluator.is_some());
        if !wait_for_agents(
            &registry,
            fed.min_agents,
            fed.wait_for_agents(),
            &mut hooks,
            &mut shutdown,
        )
        .await?
        {
            return Ok(RunReport::empty(true));
        }
        let buffers = Arc::new(Semaphore::new(fed.max_buffered_updates));
        let mut on_round = hooks.on_round.take();
        let metrics = hooks.metrics.clone();
        let context = DriveContext {
            registry: &registry,
            buffers,
            evaluator: hooks.evaluator.clone(),
            max_payload: fed.max_payload_bytes,
        };
        let report = drive(federation, context, &mut shutdown, |record, federation| {
            let flow = on_commit(record, federation);
            if let Some(metrics) = &metrics {
                metrics.observe_round(record);
            }
            if let Some(on_round) = on_round.as_mut() {
                on_round(record);
            }
            flow
        })
        .instrument(info_span!("run", study = %fed.study))
        .await;
        Ok(report)
    }
    .await;
    // Before the agents go: a store records the run's end first, so a crash from here on
    // does not leave it waiting at restart for agents that were told to stop.
    on_done(&result);
    let goodbye = Goodbye::after(&result, |report| report.interrupted, "the federation");
    stop_agents(&registry, &endpoint, goodbye).await;
    result
}

/// What [`drive`] moves frames with.
pub(crate) struct DriveContext<'a> {
    /// The connected agents.
    pub registry: &'a Registry,
    /// Bounds the updates held in memory, shared by every federation of the aggregator.
    pub buffers: Arc<Semaphore>,
    /// Server-side evaluation, when the machine asks for it.
    pub evaluator: Option<Arc<dyn Evaluator>>,
    /// Largest update payload accepted, in bytes.
    pub max_payload: u64,
}

/// An event read by an exchange task, with the update buffer it holds until the state
/// machine has handled it.
type Inbound = (Event, Option<OwnedSemaphorePermit>);

/// What an exchange task is told after the opening message.
enum Command {
    Ask { message: AggregatorMessage, answer: Answer },
    Close { message: Option<AggregatorMessage> },
}

struct ExchangeHandle {
    commands: mpsc::UnboundedSender<Command>,
    abort: AbortHandle,
}

/// The current time, from tokio's clock (so a paused test clock applies).
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Drives `federation` until it finishes or `shutdown` becomes `true`. After each
/// committed round `on_round` (given the machine, for its state) says whether to go on.
pub(crate) async fn drive(
    mut federation: Federation,
    context: DriveContext<'_>,
    shutdown: &mut watch::Receiver<bool>,
    mut on_round: impl FnMut(&RoundRecord, &Federation) -> Flow,
) -> RunReport {
    let (events, mut inbox) = mpsc::unbounded_channel::<Inbound>();
    let mut agents: BTreeMap<String, AgentHandle> = BTreeMap::new();
    let mut exchanges: BTreeMap<ExchangeId, ExchangeHandle> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    let mut evaluations: JoinSet<(u64, Result<GlobalEvaluation, EvaluationError>)> = JoinSet::new();
    let mut roster = context.registry.subscribe();
    let mut shutdown_open = true;
    // The registry is read only when it changed, not on every event.
    let mut roster_changed = true;
    let limits = Limits {
        max_payload: context.max_payload,
        ..Limits::default()
    };
    loop {
        if roster_changed {
            roster.mark_unchanged();
            sync_agents(&mut federation, context.registry, &mut agents);
            roster_changed = false;
        }
        if *shutdown.borrow() {
            federation.interrupt(now());
        }
        while let Some(action) = federation.poll_action() {
            match action {
                Action::Open {
                    exchange,
                    agent,
                    message,
                    payload,
                    answer,
                } => {
                    let Some(handle) = agents.get(&agent) else {
                        let error = "the agent is not connected".to_owned();
                        let _ = events.send((Event::ExchangeFailed { exchange, error }, None));
                        continue;
                    };
                    let (commands, queue) = mpsc::unbounded_channel();
                    let opening = Opening {
                        message,
                        payload,
                        answer,
                    };
                    let io = ExchangeIo {
                        id: exchange,
                        connection: handle.connection.clone(),
                        limits,
                        buffers: context.buffers.clone(),
                        events: events.clone(),
                    };
                    let abort = tasks.spawn(run_exchange(io, opening, queue));
                    exchanges.insert(exchange, ExchangeHandle { commands, abort });
                }
                Action::Ask {
                    exchange,
                    message,
                    answer,
                } => {
                    if let Some(handle) = exchanges.get(&exchange) {
                        let _ = handle.commands.send(Command::Ask { message, answer });
                    }
                }
                Action::Close { exchange, message } => {
                    if let Some(handle) = exchanges.remove(&exchange) {
                        let _ = handle.commands.send(Command::Close { message });
                    }
                }
                Action::Abandon { exchange } => {
                    if let Some(handle) = exchanges.remove(&exchange) {
                        handle.abort.abort();
                    }
                }
                Action::EvaluateGlobal { round, params } => match context.evaluator.clone() {
                    Some(evaluator) => {
                        let model = federation.model().clone();
                        evaluations.spawn_blocking(move || (round, evaluator.evaluate(&model, &params)));
                    }
                    None => {
                        let result = Err(EvaluationError::Failed("no evaluator".into()));
                        federation.handle_event(now(), Event::GlobalEvaluated { round, result });
                    }
                },
                Action::RoundCommitted(record) => {
                    record_bases(&federation, context.registry, &agents);
                    if on_round(&record, &federation) == Flow::Stop {
                        federation.interrupt(now());
                    }
                }
                Action::Finished(report) => {
                    for handle in exchanges.into_values() {
                        handle.abort.abort();
                    }
                    // Exchanges that were closed finish writing their last word.
                    drop(events);
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while tasks.join_next().await.is_some() {}
                    })
                    .await;
                    return *report;
                }
            }
        }
        let deadline = federation.poll_timeout();
        tokio::select! {
            Some((event, permit)) = inbox.recv() => {
                federation.handle_event(now(), event);
                drop(permit);
            }
            Some(joined) = evaluations.join_next() => {
                let (round, result) = match joined {
                    Ok(done) => done,
                    Err(e) => (federation.records().len() as u64, Err(EvaluationError::Failed(format!("the evaluator panicked: {e}")))),
                };
                federation.handle_event(now(), Event::GlobalEvaluated { round, result });
            }
            _ = sleep_until(deadline) => federation.handle_timeout(now()),
            _ = roster.changed() => roster_changed = true,
            changed = shutdown.changed(), if shutdown_open => {
                if changed.is_err() {
                    shutdown_open = false;
                }
            }
            Some(_) = tasks.join_next() => {}
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Tells the registry which sessions hold the run's frozen values, so that the next run
/// over the same connections (a study's next trial) need not send them again.
fn record_bases(federation: &Federation, registry: &Registry, known: &BTreeMap<String, AgentHandle>) {
    let Some((checksum, holders)) = federation.base_holders() else {
        return;
    };
    for (agent, handle) in known {
        if holders.contains(agent) {
            registry.record_base(agent, handle.session_id, checksum);
        } else {
            // It was seeded from the registry when it connected, and dropped since.
            registry.forget_base(agent, checksum);
        }
    }
}

/// Feeds the machine who connected and who left since the last look.
fn sync_agents(federation: &mut Federation, registry: &Registry, known: &mut BTreeMap<String, AgentHandle>) {
    let current: BTreeMap<String, AgentHandle> = registry.snapshot().into_iter().map(|a| (a.id.clone(), a)).collect();
    let gone: Vec<String> = known
        .iter()
        .filter(|(id, handle)| current.get(*id).is_none_or(|c| c.session_id != handle.session_id))
        .map(|(id, _)| id.clone())
        .collect();
    for agent in gone {
        known.remove(&agent);
        federation.handle_event(now(), Event::AgentGone { agent });
    }
    for (id, handle) in current {
        if !known.contains_key(&id) {
            let capabilities = handle.capabilities.clone();
            let handle_session = handle.session_id;
            known.insert(id.clone(), handle);
            let holds_base = registry.base_of(&id, handle_session);
            federation.handle_event(
                now(),
                Event::AgentConnected {
                    agent: id,
                    capabilities,
                    holds_base,
                },
            );
        }
    }
}

struct Opening {
    message: AggregatorMessage,
    payload: Bytes,
    answer: Answer,
}

struct ExchangeIo {
    id: ExchangeId,
    connection: quinn::Connection,
    limits: Limits,
    buffers: Arc<Semaphore>,
    events: mpsc::UnboundedSender<Inbound>,
}

/// One exchange: opens the stream, sends the opening message, then reads an answer,
/// hands it to the machine and waits to be told what comes next.
async fn run_exchange(io: ExchangeIo, opening: Opening, mut commands: mpsc::UnboundedReceiver<Command>) {
    let fail = |error: String| {
        let _ = io.events.send((Event::ExchangeFailed { exchange: io.id, error }, None));
    };
    let (mut send, mut recv) = match io.connection.open_bi().await {
        Ok(streams) => streams,
        Err(e) => return fail(e.to_string()),
    };
    // An evaluation request is the whole exchange from the aggregator's side.
    let finish = matches!(opening.message, AggregatorMessage::Evaluate(_));
    if let Err(e) = write_frame_shared(&mut send, &opening.message, opening.payload).await {
        return fail(e.to_string());
    }
    if finish {
        let _ = send.finish();
    }
    let mut answer = opening.answer;
    loop {
        let limits = match answer {
            Answer::Update { bytes } => Limits {
                max_payload: io.limits.max_payload.min(bytes),
                ..io.limits
            },
            Answer::Control => Limits::control(),
        };
        // Only `max_buffered_updates` updates sit in memory at once; the others wait in
        // QUIC flow control until a buffer frees up.
        let buffers = io.buffers.clone();
        let permit = async || match answer {
            Answer::Update { .. } => buffers.acquire_owned().await.ok(),
            Answer::Control => None,
        };
        match read_frame_gated(&mut recv, limits, permit).await {
            Ok((message, payload, permit)) => {
                let event = Event::Received {
                    exchange: io.id,
                    message: Box::new(message),
                    payload,
                };
                if io.events.send((event, permit)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if let Some(error) = e.reply() {
                    reply_error(&mut send, error).await;
                }
                return fail(e.to_string());
            }
        }
        match commands.recv().await {
            Some(Command::Ask { message, answer: next }) => {
                if let Err(e) = write_message(&mut send, &message).await {
                    return fail(e.to_string());
                }
                answer = next;
            }
            Some(Command::Close { message }) => {
                if let Some(message) = message {
                    let _ = write_message(&mut send, &message).await;
                }
                let _ = send.finish();
                // Wait (briefly) until the agent has the last word before the stream
                // is dropped.
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                return;
            }
            None => return,
        }
    }
}

/// Starts accepting agents on `endpoint` into a new registry.
pub(crate) fn accept_agents(endpoint: &quinn::Endpoint, fed: &FederationConfig) -> Arc<Registry> {
    let registry = Arc::new(Registry::default());
    tokio::spawn(accept_loop(
        endpoint.clone(),
        registry.clone(),
        fed.max_agents,
        fed.max_payload_bytes,
    ));
    registry
}

/// Waits for `needed` agents; `Ok(false)` when shutdown was requested meanwhile.
pub(crate) async fn wait_for_agents(
    registry: &Registry,
    needed: usize,
    limit: Duration,
    hooks: &mut Hooks,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, FederationError> {
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    let mut roster = registry.subscribe();
    let mut last_report = None;
    loop {
        let connected = registry.len();
        if connected >= needed {
            return Ok(true);
        }
        if last_report != Some(connected) {
            info!("waiting for agents: {connected}/{needed} connected (giving up after {limit:?})");
            if let Some(on_waiting) = hooks.on_waiting.as_mut() {
                on_waiting(connected, needed);
            }
            last_report = Some(connected);
        }
        tokio::select! {
            _ = roster.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(FederationError::NotEnoughAgents {
                    connected: registry.len(), needed, waited: started.elapsed(),
                });
            }
            _ = shutdown.changed() => return Ok(false),
        }
    }
}

/// What agents are told when the aggregator stops serving them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Goodbye {
    /// The federation or study is over (or failed): agents exit.
    Over(String),
    /// It stopped before its end (a stop signal) and goes on when the aggregator is served
    /// again: agents wait and reconnect.
    Interrupted(String),
}

impl Goodbye {
    /// The goodbye after serving `what` ("the federation", "the study") ended with `result`;
    /// `interrupted` says whether a report is of one stopped before its end.
    pub(crate) fn after<T, E: std::fmt::Display>(
        result: &Result<T, E>,
        interrupted: impl FnOnce(&T) -> bool,
        what: &str,
    ) -> Self {
        match result {
            Ok(report) if interrupted(report) => Goodbye::Interrupted(format!("{what} was interrupted before its end")),
            Ok(_) => Goodbye::Over(format!("{what} finished")),
            Err(e) => Goodbye::Over(format!("{what} failed: {e}")),
        }
    }

    fn message(&self) -> AggregatorMessage {
        match self {
            Goodbye::Over(reason) => AggregatorMessage::Shutdown(Shutdown { reason: reason.clone() }),
            Goodbye::Interrupted(reason) => AggregatorMessage::Interrupted(Interrupted { reason: reason.clone() }),
        }
    }
}

/// Tells every agent why the aggregator stops, then closes the endpoint.
pub(crate) async fn stop_agents(registry: &Registry, endpoint: &quinn::Endpoint, goodbye: Goodbye) {
    let agents = registry.snapshot();
    match &goodbye {
        Goodbye::Over(reason) => info!("{reason}: telling {} connected agents to exit", agents.len()),
        Goodbye::Interrupted(reason) => info!(
            "{reason}: telling {} connected agents to wait for the aggregator to be served again",
            agents.len()
        ),
    }
    let message = goodbye.message();
    let mut goodbyes = JoinSet::new();
    for agent in agents {
        let message = message.clone();
        goodbyes.spawn(async move {
            if let Ok((mut send, _recv)) = agent.connection.open_bi().await {
                let _ = write_message(&mut send, &message).await;
                let _ = send.finish();
                // Give the agent a moment to read it and close from its side.
                let _ = tokio::time::timeout(Duration::from_secs(2), agent.connection.closed()).await;
            }
            agent.connection.close(0u32.into(), b"shutdown");
        });
    }
    while goodbyes.join_next().await.is_some() {}
    endpoint.close(0u32.into(), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}
