//! The transport contract both daemons build their QUIC endpoints from: ALPN, liveness
//! timers, packet sizes and flow-control windows. Numbers only (no quinn here); the
//! agent's `tls` and the aggregator's `identity` turn them into quinn configurations.

use std::time::Duration;

/// ALPN protocol identifier spoken between agents and the aggregator.
pub const ALPN: &[u8] = b"fedtune/1";

/// A connection silent for this long is closed; QUIC uses the smaller of the two
/// sides' values. With [`KEEP_ALIVE_INTERVAL`] on both sides a live peer is never
/// silent that long (four keep-alives may be lost in a row), so an agent notices a dead
/// aggregator — and the aggregator a dead agent — within these 5 s and reconnects
/// (RFC 9308 suggests 30 s for the open Internet; fedtune's peers keep their link busy on
/// purpose, so it prefers noticing a crash quickly).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval of keep-alive packets on an otherwise idle connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Bidirectional streams a peer may have open at once (one per exchange).
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 64;

/// Smallest UDP payload QUIC allows (RFC 9000 §14), the initial packet size.
pub const MIN_UDP_PAYLOAD: u16 = 1200;

/// Upper bound of path MTU discovery on the Internet (quinn's default).
pub const DISCOVERY_UPPER_BOUND: u16 = 1452;

/// Packet size on loopback: the largest UDP payload that fits a 65,535-byte IPv6 packet
/// with QUIC's headroom, so a model crosses 127.0.0.1 in few packets.
pub const LOOPBACK_UDP_PAYLOAD: u16 = 65_488;

/// Largest UDP payload Linux accepts in one send (65,535 − 8 − 20).
pub const LINUX_MAX_UDP_SEND: usize = 65_507;

/// Kernel receive and send buffer requested for each endpoint's UDP socket.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Flow-control windows, per side. They differ on purpose, because a receive window
/// bounds what *that* side receives: an agent receives one global model per task, so its
/// windows let a whole model arrive without waiting; the aggregator receives updates from
/// every agent at once, so its windows bound the memory quinn holds for updates waiting
/// for an averaging slot (`federation.max_buffered_updates`), however large the cohort.
pub mod windows {
    /// Bytes one stream into an agent may have unread.
    pub const AGENT_STREAM: u64 = 16 << 20;
    /// Bytes all streams into an agent may have unread.
    pub const AGENT_CONNECTION: u64 = 64 << 20;
    /// Bytes one stream into the aggregator may have unread (still fills a 40 ms round
    /// trip at 100 MB/s).
    pub const AGGREGATOR_STREAM: u64 = 4 << 20;
    /// Bytes all streams of one agent's connection into the aggregator may have unread.
    pub const AGGREGATOR_CONNECTION: u64 = 8 << 20;
    /// Unacknowledged bytes either side keeps buffered per connection.
    pub const SEND: u64 = 64 << 20;
}
