//! The dashboard over HTTPS: a rustls client that trusts the federation CA reaches its
//! pages with the token and is refused without it; the token's cookie is `Secure`; and
//! a dashboard reachable from other hosts is not served over plain HTTP unless asked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedtune_aggregator::config::DashboardConfig;
use fedtune_aggregator::dashboard::{self, Options, StartError};
use fedtune_aggregator::identity::{self, FederationPki};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const TOKEN: &str = "0123456789abcdef-token";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedtune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A federation whose server certificate names 127.0.0.1, written to `dir`, and an empty
/// store beside it.
fn federation(dir: &Path) -> (FederationPki, PathBuf) {
    let pki = identity::generate(&["agent-0".to_owned()], &["127.0.0.1".to_owned()]).unwrap();
    pki.write_to_dir(&dir.join("pki")).unwrap();
    let db = dir.join("fedtune.db");
    drop(fedtune_store::SqliteStore::open(&db).unwrap());
    (pki, db)
}

/// A TLS 1.3 client on the ring provider that trusts only the federation CA.
fn client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTPS GET of `path` (with `headers`); the whole response, head and body.
async fn get(tls: &tokio_rustls::TlsConnector, addr: SocketAddr, path: &str, headers: &str) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut stream = tls.connect(name, tcp).await.expect("TLS handshake with the dashboard");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    match stream.read_to_end(&mut response).await {
        Ok(_) => {}
        // A server that closes without close_notify after a whole response is still heard.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading the response: {e}"),
    }
    String::from_utf8_lossy(&response).into_owned()
}

fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_cookie(response: &str) -> Option<&str> {
    response.split("\r\n\r\n").next()?.lines().find_map(|l| {
        l.strip_prefix("set-cookie: ")
            .or_else(|| l.strip_prefix("Set-Cookie: "))
    })
}

#[tokio::test]
async fn a_dashboard_with_a_certificate_serves_https_and_wants_its_token() {
    let dir = scratch("dashboard-https");
    let (pki, db) = federation(&dir);
    // A certificate configured means HTTPS, loopback included.
    let config = DashboardConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        token: Some(TOKEN.into()),
        cert: Some(dir.join("pki/server.pem")),
        key: Some(dir.join("pki/server.key")),
        insecure: false,
    };
    config.validate().unwrap();
    let options = Options::from_config(&config, None).unwrap();
    assert_eq!(options.scheme(), "https");
    let (stop, shutdown) = watch::channel(false);
    let addr = dashboard::start(config.listen.unwrap(), &db, options, shutdown)
        .await
        .unwrap();
    let tls = client(&pki.ca_cert_pem);

    // With the token, once in the query: the page, and a cookie kept off plain HTTP.
    let response = get(&tls, addr, &format!("/?token={TOKEN}"), "").await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(response.contains("Runs and studies"), "{response}");
    let cookie = set_cookie(&response).unwrap_or_else(|| panic!("no cookie in {response}"));
    for attribute in ["fedtune_token=", "; Secure", "; HttpOnly", "; SameSite=Strict"] {
        assert!(cookie.contains(attribute), "{attribute} not in {cookie}");
    }
    // The cookie and the bearer header open the other routes.
    let cookie_header = format!("Cookie: fedtune_token={TOKEN}\r\n");
    let response = get(&tls, addr, "/api/runs", &cookie_header).await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(response.ends_with("[]"), "{response}");
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(status(&get(&tls, addr, "/api/runs", &bearer).await), 200);

    // Without it, or with another: 401 over the same HTTPS.
    let response = get(&tls, addr, "/", "").await;
    assert_eq!(status(&response), 401, "{response}");
    assert!(set_cookie(&response).is_none(), "{response}");
    let wrong = "Authorization: Bearer 0123456789abcdef-other\r\n";
    assert_eq!(status(&get(&tls, addr, "/api/runs", wrong).await), 401);

    // Plain HTTP on that port gets no page.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /?token={TOKEN} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    plain.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));

    // A client that does not trust the federation CA does not get through the handshake.
    let stranger = identity::generate(&["agent-0".to_owned()], &["127.0.0.1".to_owned()]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    assert!(client(&stranger.ca_cert_pem).connect(name, tcp).await.is_err());

    let _ = stop.send(true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn beyond_loopback_plain_http_is_refused_unless_asked_for() {
    let dir = scratch("dashboard-plaintext");
    let (_, db) = federation(&dir);
    let anywhere: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let (stop, shutdown) = watch::channel(false);
    let token = Some(TOKEN.to_owned());

    // The configuration is refused before anything is bound, saying what to do.
    let config = DashboardConfig {
        listen: Some(anywhere),
        token: token.clone(),
        ..DashboardConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("plain HTTP") && err.contains("--insecure"), "{err}");
    // And so is the library's start, whoever built the options.
    let options = Options {
        token: token.clone(),
        ..Options::default()
    };
    let err = dashboard::start(anywhere, &db, options, shutdown.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::Plaintext(_)), "{err}");
    assert!(err.to_string().contains("in clear"), "{err}");

    // The operator's `insecure` is heard.
    let options = Options {
        token,
        insecure: true,
        ..Options::default()
    };
    assert_eq!(options.scheme(), "http");
    dashboard::start(anywhere, &db, options, shutdown).await.unwrap();
    let _ = stop.send(true);
    let _ = std::fs::remove_dir_all(&dir);
}
