//! The dashboard over HTTPS: its rustls server configuration, and the listener that hands
//! axum connections whose TLS handshake is done.
//!
//! Beyond loopback the dashboard's token, and the `fedtune_token` cookie it sets, would
//! otherwise cross the network in clear. The certificate is the operator's
//! (`[dashboard] cert`) or, under `serve`, the federation's own server certificate.
//!
//! Handshakes run in tasks of their own, at most [`MAX_HANDSHAKES`] at once and each for
//! at most [`HANDSHAKE_TIMEOUT`]: a client that connects and sends nothing holds up no
//! one else, and a flood of them waits in the kernel's backlog.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::identity::{Identity, IdentityError, certificate_chain, load_identity, private_key};

/// TLS handshakes under way at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The dashboard's TLS server configuration: TLS 1.3 with the *ring* provider, ALPN
/// `http/1.1` (the server speaks HTTP/1 only), and no client certificates (the token
/// authenticates).
///
/// # Errors
/// [`IdentityError::Pem`] or [`IdentityError::MissingPem`] for unreadable PEM;
/// [`IdentityError::Tls`] when rustls refuses the certificate or the key (a key that does
/// not match the certificate, say).
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificate_chain(&identity.cert_pem, "dashboard certificate")?;
    let key = private_key(&identity.key_pem, "dashboard key")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// [`server_config`] from a certificate file and its key file.
///
/// # Errors
/// [`IdentityError::Io`] naming a file that cannot be read, else as [`server_config`].
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
    server_config(&load_identity(cert, key)?)
}

/// A TCP listener whose connections come out of a TLS handshake.
pub(super) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(super) fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

/// One client's handshake; `None` when it failed or took too long (the client is told
/// by the TLS alert, or by the closed connection).
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some((tls, peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, "dashboard TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "dashboard TLS handshake timed out");
            None
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => match accepted {
                    Ok((stream, peer)) => {
                        self.handshakes.spawn(handshake(self.acceptor.clone(), stream, peer));
                    }
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// What axum's own TCP listener does with an accept error: a connection that died before
/// it was accepted is nobody's concern; anything else (out of file descriptors, say) is
/// logged and waited out.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("the dashboard cannot accept connections: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
