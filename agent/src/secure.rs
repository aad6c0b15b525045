//! The agent's side of a secure-aggregation round, on the task's stream.
//!
//! The agent starts training as soon as the task arrives and, while it trains, takes
//! part in the key exchange: it publishes its public keys, sends each peer its key
//! shares (encrypted so that only that peer can read them) and receives theirs. When
//! training is done it sends its update masked, so the aggregator sees only the sum,
//! and finally reveals the shares that let the aggregator remove the masks. The
//! cryptography is the sans-IO [`ClientRound`]; this module moves its messages.

use std::sync::{Arc, Mutex};

use fedtune_protocol::secagg::{ClientRound, RoundContext, SecureRound};
use fedtune_protocol::{AgentMessage, AggregatorMessage, Decline, ErrorCode, ErrorMessage, Limits, Task};
use tracing::{debug, warn};

use crate::cancel::Cancel;
use crate::metrics::{AgentMetrics, TaskOutcome};
use crate::task::{count, train_until_abandoned, update_for};
use crate::trainer::Trainer;
use fedtune_protocol::wire::{WireError, read_frame, write_frame};

/// Serves a task that runs under secure aggregation, to the end of its exchange.
///
/// # Errors
/// [`WireError`] when the stream fails; protocol refusals are answered on the stream.
pub(crate) async fn serve<T: Trainer>(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    task: Task,
    params: SecureRound,
    global: Vec<f32>,
    trainer: Arc<Mutex<T>>,
    shared_metrics: Option<Arc<AgentMetrics>>,
) -> Result<(), WireError> {
    let metrics = shared_metrics.as_deref();
    let (trial, round) = (task.trial, task.round);
    let context = RoundContext {
        study: task.study.clone(),
        trial,
        round,
    };
    let started = ClientRound::new(context, params, &mut rand::rng());
    let (mut client, keys) = match started {
        Ok(started) => started,
        Err(e) => return refuse(send, ErrorCode::InvalidTask, e.to_string()).await,
    };
    let cancel = Cancel::until(std::time::Instant::now() + std::time::Duration::from_millis(task.deadline_ms));
    // Whatever ends this exchange early also stops the training behind it.
    let _stop_on_exit = DropTaskOnExit(cancel.clone());
    let training = train_until_abandoned(send.stopped(), trainer, task, global, cancel, shared_metrics.clone());
    let training = tokio::spawn(training);

    write_frame(send, &AgentMessage::SecAggKeys(keys), &[]).await?;
    let roster = match read_frame(recv, Limits::control()).await?.0 {
        AggregatorMessage::SecAggRoster(roster) => roster,
        other => return ended(send, trial, round, "SecAggRoster", other).await,
    };
    let shares = client.share_keys(&roster, &mut rand::rng());
    let shares = match shares {
        Ok(shares) => shares,
        Err(e) => return refuse(send, ErrorCode::Malformed, e.to_string()).await,
    };
    write_frame(send, &AgentMessage::SecAggShares(shares), &[]).await?;
    let incoming = match read_frame(recv, Limits::control()).await?.0 {
        AggregatorMessage::SecAggShares(incoming) => incoming,
        other => return ended(send, trial, round, "SecAggShares", other).await,
    };
    if let Err(e) = client.receive_shares(&incoming) {
        return refuse(send, ErrorCode::Malformed, e.to_string()).await;
    }

    let (task, outcome) = match training.await {
        Ok(Ok(done)) => done,
        Ok(Err(panic)) => return refuse(send, ErrorCode::Internal, format!("training crashed: {panic}")).await,
        Err(e) => return refuse(send, ErrorCode::Internal, format!("training task failed: {e}")).await,
    };
    let mut fit = match outcome {
        Ok(fit) => fit,
        Err(e) => {
            // The aggregator removes this agent's masks from the others' sum.
            warn!(trial, round, "declining task: {e}");
            count(metrics, TaskOutcome::Declined);
            let reason = e.to_string();
            let decline = AgentMessage::Decline(Decline { trial, round, reason });
            write_frame(send, &decline, &[]).await?;
            return Ok(send.finish()?);
        }
    };
    // Masking expands one ChaCha20 stream per neighbour over the whole update: seconds of
    // CPU for large models and cohorts, so it runs off the async workers, which keep the
    // connection alive meanwhile, and no more at once than the machine has cores (a
    // simulation runs many agents in one process).
    let permit = masking_permits().acquire().await;
    let delta = std::mem::take(&mut fit.delta);
    let num_samples = fit.num_samples;
    let masking = tokio::task::spawn_blocking(move || {
        let mut delta = delta;
        // Distributed DP: the update is clipped and carries this agent's share of the
        // noise before masking, and counts once.
        let weight = match client.params().noise {
            Some(noise) => {
                if noise.apply(&mut delta, &mut rand::rng()) {
                    debug!(
                        trial,
                        round,
                        clip = noise.clip,
                        "update clipped for differential privacy"
                    );
                }
                1
            }
            None => num_samples,
        };
        let masked = client.mask(&delta, weight);
        (client, masked)
    });
    let (mut client, masked) = match masking.await {
        Ok(done) => done,
        Err(e) => return refuse(send, ErrorCode::Internal, format!("masking failed: {e}")).await,
    };
    drop(permit);
    let masked = match masked {
        Ok(masked) => masked,
        Err(e) => return refuse(send, ErrorCode::Internal, e.to_string()).await,
    };
    let update = update_for(&task, &fit);
    // The masked words travel bit for bit as the payload's 4-byte little-endian elements.
    write_frame(send, &AgentMessage::Update(update), bytemuck::cast_slice(&masked)).await?;
    count(metrics, TaskOutcome::Trained);
    if let Some(m) = metrics {
        m.sent(masked.len());
    }

    let survivors = match read_frame(recv, Limits::control()).await?.0 {
        AggregatorMessage::SecAggUnmask(survivors) => survivors,
        other => return ended(send, trial, round, "SecAggUnmask", other).await,
    };
    let reveals = match client.reveal(&survivors) {
        Ok(reveals) => reveals,
        Err(e) => return refuse(send, ErrorCode::Malformed, e.to_string()).await,
    };
    write_frame(send, &AgentMessage::SecAggReveal(reveals), &[]).await?;
    match read_frame(recv, Limits::control()).await?.0 {
        AggregatorMessage::Ack(_) => debug!(trial, round, "masked update accepted"),
        AggregatorMessage::Error(e) => warn!(trial, round, "secure round failed: {e}"),
        other => warn!(
            trial,
            round,
            "unexpected reply to the unmasking shares: {}",
            other.name()
        ),
    }
    Ok(send.finish()?)
}

/// One permit per core for the CPU-bound masking of this process's agents.
fn masking_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    })
}

/// Marks the task dropped when the exchange ends, however it ends.
struct DropTaskOnExit(Cancel);

impl Drop for DropTaskOnExit {
    fn drop(&mut self) {
        self.0.drop_task();
    }
}

/// Answers a message the protocol cannot go on from, and ends the exchange.
async fn refuse(send: &mut quinn::SendStream, code: ErrorCode, reason: String) -> Result<(), WireError> {
    warn!("secure aggregation: {reason}");
    write_frame(send, &AgentMessage::Error(ErrorMessage::new(code, reason)), &[]).await?;
    Ok(send.finish()?)
}

/// The aggregator ended the exchange (an error, or something out of order).
async fn ended(
    send: &mut quinn::SendStream,
    trial: u64,
    round: u64,
    expected: &str,
    got: AggregatorMessage,
) -> Result<(), WireError> {
    match got {
        AggregatorMessage::Error(e) => {
            warn!(
                trial,
                round, "the aggregator left this agent out of the secure round: {e}"
            );
            Ok(())
        }
        other => {
            refuse(
                send,
                ErrorCode::Unexpected,
                format!("expected {expected}, got {}", other.name()),
            )
            .await
        }
    }
}
