//! The Rust side's logs (the daemon, the federation) on stderr, as the binaries write
//! them: `RUST_LOG` filters them (`info` by default, `warn` for quinn and rustls).

/// Starts logging once per process; later calls (and a host that set its own
/// subscriber) change nothing.
pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,quinn=warn,rustls=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
