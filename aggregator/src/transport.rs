//! The aggregator's QUIC transport settings and endpoint: flow-control windows, packet
//! sizes, liveness timers (from [`fedtune_protocol::transport`]) and UDP socket buffers.

use std::sync::Arc;
use std::time::Duration;

use fedtune_protocol::transport::{
    self, LINUX_MAX_UDP_SEND, LOOPBACK_UDP_PAYLOAD, MIN_UDP_PAYLOAD as QUIC_MIN_UDP_PAYLOAD, SOCKET_BUFFER_BYTES,
};

use crate::identity::IdentityError;

/// quinn's ceiling for any UDP payload size (65,535 − 8 UDP header bytes).
const QUIC_MAX_UDP_PAYLOAD: u16 = 65_527;
/// Datagrams quinn puts in one GSO batch at most (`MAX_TRANSMIT_SEGMENTS` in quinn 0.11).
const QUINN_MAX_GSO_SEGMENTS: usize = 10;

/// Transport settings shared by the aggregator's and agents' QUIC connections.
///
/// The flow-control windows are sized for multi-megabyte tensors: one stream may have
/// `stream_receive_window` bytes in flight, a connection `receive_window` in total, which is
/// also the most a peer can make this side buffer per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportTuning {
    /// A connection silent for this long is closed (see
    /// [`fedtune_protocol::transport::IDLE_TIMEOUT`]).
    pub max_idle_timeout: Duration,
    /// Interval of keep-alive packets; must be shorter than `max_idle_timeout`.
    pub keep_alive_interval: Duration,
    /// Bytes one stream may have unread before the sender must wait.
    pub stream_receive_window: u64,
    /// Bytes all streams of a connection may have unread before the sender must wait.
    pub receive_window: u64,
    /// Bytes of unacknowledged data this side keeps buffered per connection.
    pub send_window: u64,
    /// UDP payload size used before path MTU discovery; at least 1200.
    pub initial_mtu: u16,
    /// Bidirectional streams the peer may have open at once.
    pub max_concurrent_bidi_streams: u32,
    /// Largest UDP payload this endpoint accepts, advertised to the peer; applied by
    /// [`TransportTuning::endpoint_config`]. The peer never sends larger packets, whatever
    /// its `initial_mtu`.
    pub max_udp_payload_size: u16,
    /// Upper bound of path MTU discovery, or `None` to keep the packet size fixed at
    /// `initial_mtu` (capped by the peer's `max_udp_payload_size`).
    pub mtu_discovery_upper_bound: Option<u16>,
    /// Kernel receive and send buffer to request for the endpoint's UDP socket, or `None` for
    /// the OS default (often 208 KiB, which drops packets in bursts: QUIC then retransmits and
    /// slows down). Linux caps the request at `net.core.rmem_max` / `wmem_max`. Applied by
    /// [`TransportTuning::endpoint`].
    pub socket_buffer_size: Option<usize>,
}

impl Default for TransportTuning {
    /// Internet defaults from [`fedtune_protocol::transport`]: 5 s idle timeout with 1 s
    /// keep-alives, 1200-byte initial packets, MTU discovery up to 1452 (quinn's defaults),
    /// 4 MiB per stream, 8 MiB per connection, 4 MiB socket buffers. The receive
    /// windows bound what quinn buffers for agents whose updates wait for an averaging slot
    /// (`federation.max_buffered_updates`), so the aggregator's memory stays near its own
    /// buffers however large the cohort; 4 MiB still fills a 40 ms round trip at 100 MB/s.
    fn default() -> Self {
        Self {
            max_idle_timeout: transport::IDLE_TIMEOUT,
            keep_alive_interval: transport::KEEP_ALIVE_INTERVAL,
            stream_receive_window: transport::windows::AGGREGATOR_STREAM,
            receive_window: transport::windows::AGGREGATOR_CONNECTION,
            send_window: transport::windows::SEND,
            initial_mtu: QUIC_MIN_UDP_PAYLOAD,
            max_concurrent_bidi_streams: transport::MAX_CONCURRENT_BIDI_STREAMS,
            max_udp_payload_size: 1472,
            mtu_discovery_upper_bound: Some(1452),
            socket_buffer_size: Some(SOCKET_BUFFER_BYTES),
        }
    }
}

impl TransportTuning {
    /// Settings for simulations and benchmarks on 127.0.0.1 / ::1: fixed
    /// [`LOOPBACK_UDP_PAYLOAD`]-byte packets and no MTU discovery.
    ///
    /// Large packets take effect only if *both* endpoints accept them, i.e. both are built
    /// with [`TransportTuning::endpoint`] (or [`TransportTuning::endpoint_config`]) of a
    /// loopback tuning; otherwise the packet size falls back to the peer's limit.
    /// [`TransportTuning::transport_config`] turns segmentation offload off and scales the
    /// initial congestion window for packets this large (see there).
    ///
    /// quinn sizes an endpoint's receive buffer as `max_udp_payload_size` × 64 GRO segments ×
    /// 32: ≈ 128 MiB of virtual memory at this size (≈ 3 MiB by default), almost all of it
    /// never touched; resident memory stays about the same.
    pub fn loopback() -> Self {
        Self {
            initial_mtu: LOOPBACK_UDP_PAYLOAD,
            max_udp_payload_size: LOOPBACK_UDP_PAYLOAD,
            mtu_discovery_upper_bound: None,
            // Microsecond round trips: a small window costs no throughput and caps what
            // quinn buffers for updates waiting to be averaged.
            stream_receive_window: 1 << 20,
            receive_window: 2 << 20,
            ..Self::default()
        }
    }

    /// Checks every value is in the range QUIC and quinn accept.
    ///
    /// # Errors
    /// [`IdentityError::InvalidTransport`] naming the first bad field.
    pub fn validate(&self) -> Result<(), IdentityError> {
        let invalid = |field, reason: String| Err(IdentityError::InvalidTransport { field, reason });
        if self.max_idle_timeout.is_zero() || quinn::IdleTimeout::try_from(self.max_idle_timeout).is_err() {
            return invalid(
                "max_idle_timeout",
                "must be positive and below 2^62 ms (zero would never time out a vanished peer)".into(),
            );
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.max_idle_timeout {
            return invalid(
                "keep_alive_interval",
                format!(
                    "must be positive and shorter than max_idle_timeout ({:?})",
                    self.max_idle_timeout
                ),
            );
        }
        for (field, value) in [
            ("stream_receive_window", self.stream_receive_window),
            ("receive_window", self.receive_window),
            ("send_window", self.send_window),
        ] {
            if value == 0 || value > quinn::VarInt::MAX.into_inner() {
                return invalid(field, format!("must be in 1..2^62, got {value}"));
            }
        }
        if self.stream_receive_window > self.receive_window {
            return invalid(
                "stream_receive_window",
                format!(
                    "({}) exceeds receive_window ({}), which would cap it anyway",
                    self.stream_receive_window, self.receive_window
                ),
            );
        }
        let udp_range = QUIC_MIN_UDP_PAYLOAD..=QUIC_MAX_UDP_PAYLOAD;
        for (field, value) in [
            ("initial_mtu", Some(self.initial_mtu)),
            ("max_udp_payload_size", Some(self.max_udp_payload_size)),
            ("mtu_discovery_upper_bound", self.mtu_discovery_upper_bound),
        ] {
            if let Some(value) = value
                && !udp_range.contains(&value)
            {
                return invalid(field, format!("must be in 1200..=65527, got {value}"));
            }
        }
        if self.socket_buffer_size == Some(0) {
            return invalid(
                "socket_buffer_size",
                "must be positive, or None for the OS default".into(),
            );
        }
        if self.max_concurrent_bidi_streams == 0 {
            return invalid(
                "max_concurrent_bidi_streams",
                "must be at least 1 (the protocol uses bidirectional streams)".into(),
            );
        }
        Ok(())
    }

    /// The quinn transport configuration for these settings.
    ///
    /// Two quinn settings follow from the packet size, because quinn's defaults break with
    /// large packets:
    /// - the initial congestion window is 10 × `initial_mtu` (quinn's default, 12,000 bytes,
    ///   is smaller than one 16 KiB packet, and then not even the first handshake packet is
    ///   ever sent);
    /// - segmentation offload (GSO) stays on only while 10 packets fit one UDP send (≤ 6,550
    ///   bytes each): quinn batches up to 10 packets per send, Linux refuses sends over 64 KiB,
    ///   the batch is lost and black-hole detection drops the MTU back to 1200.
    ///
    /// Out-of-range values are clamped; call [`TransportTuning::validate`] first to have them
    /// reported instead ([`server_config`] does).
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let varint = |v: u64| quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX);
        let initial_mtu = self.initial_mtu.clamp(QUIC_MIN_UDP_PAYLOAD, QUIC_MAX_UDP_PAYLOAD);
        let largest_mtu = initial_mtu.max(self.mtu_discovery_upper_bound.unwrap_or(0));
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window(10 * u64::from(initial_mtu));
        let mut config = quinn::TransportConfig::default();
        config
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(self.max_idle_timeout).unwrap_or_else(|_| quinn::VarInt::MAX.into()),
            ))
            .keep_alive_interval((!self.keep_alive_interval.is_zero()).then_some(self.keep_alive_interval))
            .stream_receive_window(varint(self.stream_receive_window))
            .receive_window(varint(self.receive_window))
            .send_window(self.send_window)
            .initial_mtu(initial_mtu)
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_concurrent_bidi_streams))
            .mtu_discovery_config(self.mtu_discovery_upper_bound.map(|bound| {
                let mut mtud = quinn::MtuDiscoveryConfig::default();
                mtud.upper_bound(bound);
                mtud
            }))
            .congestion_controller_factory(Arc::new(cubic))
            .enable_segmentation_offload(usize::from(largest_mtu) * QUINN_MAX_GSO_SEGMENTS <= LINUX_MAX_UDP_SEND);
        config
    }

    /// Binds a UDP socket at `addr` with these settings and makes it a quinn endpoint: a
    /// server if `server_config` is given (see [`server_config`]), otherwise a client-only
    /// endpoint. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`IdentityError::InvalidTransport`] for bad tuning; [`IdentityError::Socket`] if the
    /// address cannot be bound or there is no tokio runtime.
    pub fn endpoint(
        &self,
        addr: std::net::SocketAddr,
        server_config: Option<quinn::ServerConfig>,
    ) -> Result<quinn::Endpoint, IdentityError> {
        self.endpoint_with(addr, self.endpoint_config()?, server_config)
    }

    /// As [`TransportTuning::endpoint`], with `endpoint_config` (from
    /// [`TransportTuning::endpoint_config`], then adjusted, e.g. by
    /// [`crate::restart::RestartKeys::apply`]).
    ///
    /// # Errors
    /// As [`TransportTuning::endpoint`].
    pub fn endpoint_with(
        &self,
        addr: std::net::SocketAddr,
        endpoint_config: quinn::EndpointConfig,
        server_config: Option<quinn::ServerConfig>,
    ) -> Result<quinn::Endpoint, IdentityError> {
        self.validate()?;
        let socket_error = |source| IdentityError::Socket { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(socket_error)?;
        if let Some(bytes) = self.socket_buffer_size {
            set_socket_buffers(&socket, bytes);
        }
        let runtime = quinn::default_runtime().ok_or_else(|| {
            socket_error(std::io::Error::other(
                "no async runtime: create endpoints inside a tokio runtime",
            ))
        })?;
        quinn::Endpoint::new(endpoint_config, server_config, socket, runtime).map_err(socket_error)
    }

    /// The quinn endpoint configuration (it carries `max_udp_payload_size`). Build the
    /// endpoint with `quinn::Endpoint::new(tuning.endpoint_config()?, ..)`.
    ///
    /// # Errors
    /// [`IdentityError::InvalidTransport`] if `max_udp_payload_size` is outside 1200..=65527.
    pub fn endpoint_config(&self) -> Result<quinn::EndpointConfig, IdentityError> {
        let mut config = quinn::EndpointConfig::default();
        config
            .max_udp_payload_size(self.max_udp_payload_size)
            .map_err(|e| IdentityError::InvalidTransport {
                field: "max_udp_payload_size",
                reason: format!("{e} (must be in 1200..=65527)"),
            })?;
        Ok(config)
    }
}

/// Best effort: a smaller buffer than asked for only costs throughput, so problems are logged
/// rather than returned.
fn set_socket_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let state = match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(state) => state,
        Err(e) => {
            tracing::debug!(error = %e, "cannot inspect UDP socket; keeping OS buffer sizes");
            return;
        }
    };
    if let Err(e) = state.set_recv_buffer_size(socket.into(), bytes) {
        tracing::debug!(error = %e, bytes, "cannot set UDP receive buffer");
    }
    if let Err(e) = state.set_send_buffer_size(socket.into(), bytes) {
        tracing::debug!(error = %e, bytes, "cannot set UDP send buffer");
    }
    // Linux reports twice the usable size it granted.
    if let Ok(granted) = state.recv_buffer_size(socket.into())
        && granted < bytes
    {
        tracing::debug!(
            requested = bytes,
            granted,
            "UDP receive buffer capped by the OS (raise net.core.rmem_max for fewer drops)"
        );
    }
}
