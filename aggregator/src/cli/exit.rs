//! How the binary ends and what it says on the way: logs on stderr (coloured only on a
//! terminal, never with `NO_COLOR`), and an error as one line of words — its message and
//! the causes it does not already say — with no backtrace, whatever `RUST_BACKTRACE`
//! says: an `Err` is the user's to act on; backtraces are for panics, which are bugs.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Logs to stderr at `RUST_LOG` (default `info`), with ANSI colours only when stderr is
/// a terminal and `NO_COLOR` is unset (<https://no-color.org>).
pub fn init_logging() {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// The exit code for `result`, after printing an error on stderr. A closed stdout (the
/// reader went away, as with `| head -1`) ends the command quietly and successfully.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    if is_broken_pipe(&error) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {}", message(&error));
    ExitCode::FAILURE
}

/// The error's message followed by each cause it does not already contain: an error
/// that quotes its source (`x.pem: No such file or directory`) is not repeated as
/// "caused by: No such file or directory".
pub fn message(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            })
            == Some(std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Quoting {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let e = anyhow::Error::new(Quoting {
            path: "pki/x.pem",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
        })
        .context("[pki] cert");
        assert_eq!(message(&e), "[pki] cert: pki/x.pem: No such file or directory");
    }

    #[test]
    fn a_broken_pipe_is_recognised_through_wrappers() {
        let io = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::new(io()).context("writing")));
        assert!(is_broken_pipe(&anyhow::Error::new(serde_json::Error::io(io()))));
        assert!(!is_broken_pipe(&anyhow::anyhow!("broken pipe, in words only")));
    }
}
