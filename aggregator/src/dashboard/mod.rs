//! The web dashboard: runs, studies and their rounds and trials as the store holds them,
//! live while a run goes on, and the Prometheus `/metrics` of the serving aggregator.
//!
//! Pages are HTML rendered on the server with the charts inlined as SVG ([`svg`]): the
//! binary serves everything (no CDN, no npm build, nothing to fetch on a device without
//! internet), pages work without JavaScript, and a chart of a thousand rounds is a few
//! hundred kilobytes of markup the browser paints at once. A short script
//! (`static/dashboard.js`) makes them live: it polls `/api/version/{id}` and, when the
//! store moved on, swaps in the page's new content; it also sorts and filters tables.
//!
//! Routes:
//! - `/` runs and studies with their status;
//! - `/runs/{id}` a run (or with `?trial=N` a study's trial): accuracy, loss and fairness
//!   by round, a round's timeline (`?round=N`), the agents, the rounds;
//! - `/studies/{id}` a study: trials, optimisation history, intermediate values,
//!   parallel coordinates, parameter importance, the Pareto front;
//! - `/api/runs`, `/api/runs/{id}/rounds[?trial=N]`, `/api/studies/{id}/trials`: JSON;
//! - `/metrics`: Prometheus text (when served by `serve`).
//!
//! With a token every route needs `Authorization: Bearer TOKEN`, a `fedtune_token`
//! cookie, or `?token=TOKEN` (which sets the cookie, so links keep working; `HttpOnly`,
//! `SameSite=Strict`, and `Secure` over HTTPS).
//!
//! Beyond loopback the dashboard needs a token and serves HTTPS ([`https`]), unless the
//! operator accepts plain HTTP ([`Options::insecure`]); on loopback it serves plain HTTP
//! unless given a TLS configuration.

pub(crate) mod charts;
pub mod https;
mod pages;
pub mod reader;
pub mod svg;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{CertificateFiles, DashboardConfig};
use crate::identity::IdentityError;
use crate::metrics::{self, Metrics};
use fedtune_store::{RunId, RunKind, StoreError};
pub use reader::Reader;

const SCRIPT: &str = include_str!("static/dashboard.js");
const STYLE: &str = include_str!("static/dashboard.css");
const COOKIE: &str = "fedtune_token";

/// What the dashboard serves besides the store, and how.
#[derive(Clone, Default)]
pub struct Options {
    /// The bearer token requests must carry, if any.
    pub token: Option<String>,
    /// The serving aggregator's metrics, for `/metrics`.
    pub metrics: Option<Arc<Metrics>>,
    /// Serve HTTPS with this configuration ([`https::server_config`]), on any address;
    /// `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Plain HTTP beyond loopback is what the operator wants (`[dashboard] insecure`):
    /// without it, [`start`] refuses to serve the token in clear to other hosts.
    pub insecure: bool,
}

impl Options {
    /// What a `[dashboard]` section asks for: its token, and HTTPS with the certificate
    /// [`DashboardConfig::https`] picks (`fallback`: the federation's own, under
    /// `serve`), read here. No metrics.
    ///
    /// # Errors
    /// [`StartError::Certificate`] when the certificate or its key cannot be read or used.
    pub fn from_config(config: &DashboardConfig, fallback: Option<CertificateFiles>) -> Result<Self, StartError> {
        let tls = match config.https(fallback) {
            Some(files) => Some(
                https::load(&files.cert, &files.key).map_err(|source| StartError::Certificate {
                    cert: files.cert.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        Ok(Self {
            token: config.token.clone(),
            metrics: None,
            tls,
            insecure: config.insecure,
        })
    }

    /// `https` or `http`, as the dashboard's address is written.
    #[must_use]
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The address could not be bound.
    #[error("cannot listen on {addr} for the dashboard: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A dashboard reachable from other hosts without a token.
    #[error("the dashboard would listen on {0}, reachable from other hosts, without a token: give it one")]
    NoToken(SocketAddr),
    /// A dashboard reachable from other hosts over plain HTTP, which the operator did not
    /// ask for.
    #[error(
        "the dashboard would listen on {0}, reachable from other hosts, over plain HTTP: its token and \
         cookie would cross the network in clear. Give it a certificate ([dashboard] cert and key; \
         --cert and --key), or say insecure = true (--insecure) if something else encrypts the way"
    )]
    Plaintext(SocketAddr),
    /// The HTTPS certificate or its key cannot be read or used.
    #[error("the dashboard's HTTPS certificate {}: {source}", cert.display())]
    Certificate {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// Why.
        source: IdentityError,
    },
}

/// Opens `db` read-only, binds `listen` and serves the dashboard there in a task until
/// `shutdown`; returns the bound address (so port 0 picks one).
///
/// # Errors
/// [`StartError`] when the store cannot be opened, the address cannot be bound, or a
/// non-loopback address has no token, or no TLS and no [`Options::insecure`].
pub async fn start(
    listen: SocketAddr,
    db: &std::path::Path,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, StartError> {
    if !listen.ip().is_loopback() {
        if options.token.is_none() {
            return Err(StartError::NoToken(listen));
        }
        if options.tls.is_none() && !options.insecure {
            return Err(StartError::Plaintext(listen));
        }
    }
    let path = db.to_owned();
    let reader = tokio::task::spawn_blocking(move || Reader::open(&path))
        .await
        .map_err(|e| StoreError::Database(format!("the store could not be opened: {e}")))??;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind { addr: listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: listen, source })?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, reader, options, shutdown).await {
            tracing::error!("the dashboard stopped: {e}");
        }
    });
    Ok(addr)
}

#[derive(Clone)]
struct App {
    reader: Reader,
    options: Options,
}

/// Serves the dashboard on `listener` until `shutdown` becomes `true`: over HTTPS when
/// `options` has a TLS configuration, else plain HTTP.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: TcpListener,
    reader: Reader,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let tls = options.tls.clone();
    let app = App { reader, options };
    let router = Router::new()
        .route("/", get(runs_page))
        .route("/runs/{id}", get(run_page))
        .route("/studies/{id}", get(study_page))
        .route("/api/version/{id}", get(version))
        .route("/api/runs", get(runs_json))
        .route("/api/runs/{id}/rounds", get(rounds_json))
        .route("/api/studies/{id}/trials", get(trials_json))
        .route("/metrics", get(metrics_text))
        .route(
            "/static/dashboard.js",
            get(|| async { static_file(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/static/dashboard.css",
            get(|| async { static_file(STYLE, "text/css; charset=utf-8") }),
        )
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app);
    match tls {
        Some(config) => {
            axum::serve(https::TlsListener::new(listener, config), router)
                .with_graceful_shutdown(stopped(shutdown))
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped(shutdown))
                .await
        }
    }
}

/// Resolves once `shutdown` becomes `true`.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            // Nobody can ask us to stop any more: serve until the process ends.
            std::future::pending::<()>().await;
        }
    }
}

/// Lets a request through when no token is set or it carries the token.
async fn authorize(State(app): State<App>, request: Request, next: Next) -> Response {
    let Some(token) = app.options.token.as_deref() else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = cookie_token(headers);
    let query = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_owned)
    });
    let presented = [bearer.map(str::to_owned), cookie, query.clone()];
    if !presented.iter().flatten().any(|p| same_secret(p, token)) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this dashboard needs its token: Authorization: Bearer TOKEN, or ?token=TOKEN once\n",
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    if query.is_some()
        && let Ok(value) = HeaderValue::from_str(&token_cookie(token, app.options.tls.is_some()))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The cookie that carries the token after `?token=`: out of scripts' reach, never sent
/// by another site's request, and over HTTPS never sent in clear.
fn token_cookie(token: &str, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn static_file(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
}

/// A store error as an HTTP answer.
fn failure(e: &StoreError) -> Response {
    let status = match e {
        StoreError::NoSuchRun(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Html(pages::error_page(&e.to_string()))).into_response()
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Query parameters of the pages.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    /// A study's trial, on a run page.
    trial: Option<u64>,
    /// The round whose timeline is shown.
    round: Option<u64>,
    /// Only the page's content (the live script swaps it in).
    #[serde(default, deserialize_with = "flag")]
    fragment: bool,
    /// Every trial in a study's table, not only the most recent.
    #[serde(default, deserialize_with = "flag")]
    all: bool,
}

/// A query flag as people and scripts write them: `1`, `true`, `yes`, `on` or empty
/// (`?all`) for on; `0`, `false`, `no`, `off` for off.
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(serde::de::Error::custom(format!(
            "`{text}` is not a flag (use 1 or 0, true or false)"
        ))),
    }
}

fn page(title: &str, live: (RunId, &str), body: String, fragment: bool, location: &str) -> Response {
    if fragment {
        return Html(body).into_response();
    }
    Html(pages::layout(title, Some(live), location, &body)).into_response()
}

async fn runs_page(State(app): State<App>) -> Response {
    match app.reader.read(|store| store.runs()).await {
        Ok(runs) => Html(pages::layout(
            "fedtune: runs",
            None,
            app.reader.location(),
            &pages::runs(&runs),
        ))
        .into_response(),
        Err(e) => failure(&e),
    }
}

async fn run_page(State(app): State<App>, Path(id): Path<RunId>, Query(q): Query<PageQuery>) -> Response {
    let trial = q.trial;
    let read = app
        .reader
        .read(move |store| {
            let run = store.run(id)?;
            let trial = match (run.kind, trial) {
                (RunKind::Study, None) => return Ok(None),
                (_, trial) => trial.unwrap_or(0),
            };
            let rounds = store.rounds(id, Some(trial))?;
            // The trial's FedEx policy lives in its latest checkpoint.
            let (policy, version, stored) = match run.kind {
                RunKind::Study => {
                    let trials = store.trials(id)?;
                    let version = pages::version(&run, Some(&trials));
                    let stored = trials.into_iter().find(|t| t.trial.number == trial);
                    (
                        store.latest_checkpoint(id, trial)?.and_then(|s| s.tuner),
                        version,
                        stored,
                    )
                }
                RunKind::Run => (None, pages::version(&run, None), None),
            };
            let view = pages::RunView {
                run,
                trial,
                rounds,
                policy,
                stored,
            };
            Ok(Some((view, version)))
        })
        .await;
    match read {
        Ok(Some((view, version))) => {
            let title = format!("fedtune: {}", view.run.name);
            let body = pages::run(&view, q.round);
            page(&title, (id, &version), body, q.fragment, app.reader.location())
        }
        // A study's page is the study's, not a run's.
        Ok(None) => Redirect::to(&format!("/studies/{id}")).into_response(),
        Err(e) => failure(&e),
    }
}

async fn study_page(State(app): State<App>, Path(id): Path<RunId>, Query(q): Query<PageQuery>) -> Response {
    let read = app
        .reader
        .read(move |store| {
            let run = store.run(id)?;
            let header = store.study_header(id)?;
            let trials = store.trials(id)?;
            Ok((run, header, trials))
        })
        .await;
    match read {
        Ok((run, _, _)) if run.kind == RunKind::Run => Redirect::to(&format!("/runs/{id}")).into_response(),
        Ok((run, header, trials)) => {
            let version = pages::version(&run, Some(&trials));
            let title = format!("fedtune: study {}", run.name);
            let body = pages::study(&run, header.as_ref(), &trials, q.all);
            page(&title, (id, &version), body, q.fragment, app.reader.location())
        }
        Err(e) => failure(&e),
    }
}

/// A short text that changes whenever the run's page would: the live script's poll.
async fn version(State(app): State<App>, Path(id): Path<RunId>) -> Response {
    let read = app
        .reader
        .read(move |store| {
            let run = store.run(id)?;
            Ok(match run.kind {
                RunKind::Run => pages::version(&run, None),
                RunKind::Study => pages::version(&run, Some(&store.trials(id)?)),
            })
        })
        .await;
    match read {
        Ok(version) => ([(header::CACHE_CONTROL, "no-store")], version).into_response(),
        Err(e) => failure(&e),
    }
}

async fn runs_json(State(app): State<App>) -> Response {
    match app.reader.read(|store| store.runs()).await {
        Ok(runs) => json(&runs),
        Err(e) => failure(&e),
    }
}

async fn rounds_json(State(app): State<App>, Path(id): Path<RunId>, Query(q): Query<PageQuery>) -> Response {
    let trial = q.trial;
    match app.reader.read(move |store| store.rounds(id, trial)).await {
        Ok(rounds) => json(&rounds),
        Err(e) => failure(&e),
    }
}

async fn trials_json(State(app): State<App>, Path(id): Path<RunId>) -> Response {
    match app.reader.read(move |store| store.trials(id)).await {
        Ok(trials) => json(&trials),
        Err(e) => failure(&e),
    }
}

async fn metrics_text(State(app): State<App>) -> Response {
    match &app.options.metrics {
        Some(metrics) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics.encode()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no metrics here: /metrics is served by `fedtune-aggregator serve`, not over a store alone\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_cookie_is_secure_over_https() {
        let plain = token_cookie("secret", false);
        assert_eq!(plain, "fedtune_token=secret; Path=/; HttpOnly; SameSite=Strict");
        let https = token_cookie("secret", true);
        assert!(https.ends_with("; HttpOnly; SameSite=Strict; Secure"), "{https}");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdef", "0123456789abcdeg"));
        assert!(!same_secret("0123456789abcdef", "0123456789abcde"));
    }

    #[test]
    fn the_token_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fedtune_token=secret; b=2"),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("secret"));
        headers.insert(header::COOKIE, HeaderValue::from_static("fedtune_tokenx=secret"));
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn page_flags_read_as_the_live_script_and_people_write_them() {
        let parse = |q: &str| serde_urlencoded::from_str::<PageQuery>(q);
        for on in ["fragment=1", "fragment=true", "fragment", "fragment=on"] {
            assert!(parse(on).unwrap().fragment, "{on}");
        }
        for off in ["fragment=0", "fragment=false", ""] {
            assert!(!parse(off).unwrap().fragment, "{off}");
        }
        let err = parse("all=maybe").unwrap_err().to_string();
        assert!(err.contains("`maybe` is not a flag"), "{err}");
        let both = parse("trial=3&all=1").unwrap();
        assert_eq!((both.trial, both.all), (Some(3), true));
    }
}
