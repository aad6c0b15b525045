//! The machine's interface: the [`Event`]s it is given and the [`Action`]s it asks for,
//! each exchange named by an [`ExchangeId`].

use bytes::Bytes;
use fedtune_protocol::{AgentMessage, AggregatorMessage, Capabilities};

use super::{EvaluationError, GlobalEvaluation, RoundRecord, RunReport};

/// Names one exchange (one stream with one agent) for the life of a [`Federation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExchangeId(pub u64);

/// How an agent's answer on an exchange is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A control message without payload (keys, shares, evaluations).
    Control,
    /// An update with a model-sized payload; it takes one of the aggregator's update
    /// buffers while it is read and handled.
    Update {
        /// The payload an update of this round has (its values or masked words, 4
        /// bytes each): an agent cannot make the aggregator read, and allocate, more.
        bytes: u64,
    },
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Open a stream to `agent`, send `message` with `payload`, and read its answer.
    Open {
        /// The exchange this stream carries.
        exchange: ExchangeId,
        /// The agent.
        agent: String,
        /// The opening message (a task or an evaluation request).
        message: AggregatorMessage,
        /// The global parameters the message refers to, shared between agents.
        payload: Bytes,
        /// How the answer is read.
        answer: Answer,
    },
    /// Send `message` on an open exchange and read the next answer.
    Ask {
        /// The exchange.
        exchange: ExchangeId,
        /// The next step's message.
        message: AggregatorMessage,
        /// How the answer is read.
        answer: Answer,
    },
    /// Send `message` (an acknowledgement or an error) if any, and finish the stream.
    Close {
        /// The exchange.
        exchange: ExchangeId,
        /// The last word.
        message: Option<AggregatorMessage>,
    },
    /// Drop the exchange without a word: the agent's stream is reset (a straggler).
    Abandon {
        /// The exchange.
        exchange: ExchangeId,
    },
    /// Evaluate the global model after `round` on the server; answer with
    /// [`Event::GlobalEvaluated`].
    EvaluateGlobal {
        /// The round whose result is evaluated.
        round: u64,
        /// The parameters to evaluate.
        params: Vec<f32>,
    },
    /// A round was applied and recorded.
    RoundCommitted(Box<RoundRecord>),
    /// The run is over; nothing more will happen.
    Finished(Box<RunReport>),
}

/// Something that happened outside the machine.
#[derive(Debug)]
pub enum Event {
    /// An agent connected (or reconnected with a new session).
    AgentConnected {
        /// Its id, from its certificate.
        agent: String,
        /// What it offers.
        capabilities: Capabilities,
        /// The checksum of the frozen values this session was sent whole before (by an
        /// earlier trial of a study): when they are this run's, it is sent only the
        /// trainable values.
        holds_base: Option<u32>,
    },
    /// An agent's connection ended.
    AgentGone {
        /// Its id.
        agent: String,
    },
    /// An answer arrived on an exchange.
    Received {
        /// The exchange.
        exchange: ExchangeId,
        /// The message (boxed: an update is much larger than the other events).
        message: Box<AgentMessage>,
        /// Its payload (an update's delta or masked words, as read).
        payload: Vec<f32>,
    },
    /// An exchange's stream failed before an answer arrived.
    ExchangeFailed {
        /// The exchange.
        exchange: ExchangeId,
        /// What the transport said.
        error: String,
    },
    /// The answer to [`Action::EvaluateGlobal`].
    GlobalEvaluated {
        /// The round asked about.
        round: u64,
        /// The evaluation, or why there is none.
        result: Result<GlobalEvaluation, EvaluationError>,
    },
}
