//! The contract between fedtune agents and the aggregator.
//!
//! Sans-IO: nothing here touches a socket, a file or a clock. Both sides drive these
//! types from their own transport, and tests and fuzzers drive them directly.
//!
//! # Layout
//! - [`message`]: the messages of each direction (hello, task, update, …).
//! - [`frame`]: length-prefixed frames with size limits and a version check.
//! - [`tensor`]: parameter manifests, their hash, and the raw f32 wire layout.
//! - [`model`]: model specifications and their parameter layout and initialisation.
//! - [`freeze`]: freeze patterns and the trainable part of a parameter buffer.
//! - [`secagg`]: secure aggregation: agent and aggregator state machines that reveal only the sum.
//! - [`transport`]: the QUIC settings both daemons share (ALPN, liveness timers, windows).
//! - [`error`]: what can go wrong, as one error type.
//! - `wire` (feature `quinn`): the one driver that moves frames over quinn streams, the
//!   only I/O in the crate.

#![forbid(unsafe_code)]

pub mod error;
pub mod frame;
pub mod freeze;
pub mod message;
pub mod model;
pub mod secagg;
pub mod tensor;
pub mod transport;
#[cfg(feature = "quinn")]
pub mod wire;

pub use error::ProtocolError;
pub use frame::{FrameReader, Limits, PROTOCOL_VERSION};
pub use message::{
    Ack, AgentMessage, AggregatorMessage, Capabilities, ClientHyperparameters, Decline, ErrorCode, ErrorMessage,
    Evaluate, Evaluation, Hello, Interrupted, LrSchedule, Optimizer, SessionLimits, Shutdown, Task, TrainMetrics,
    Update, Welcome,
};
pub use model::{
    Architecture, BertSpec, CnnSpec, ConvBlock, CustomSpec, LoraSpec, MlpSpec, ModelSpec, NormStats, Pooling,
    TransformerSpec,
};
pub use tensor::{Manifest, ManifestHash, TensorSpec};
