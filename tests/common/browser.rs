//! Helpers of the dashboard's browser tests: the Playwright driver, plain HTTP, the
//! `dashboard` command.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Processes;

/// Runs the browser driver; returns the JSON object it printed.
pub fn browser(args: &[&str]) -> serde_json::Value {
    let dir = super::repo().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run `bash .ci/test`, which installs Playwright and Chromium"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run `bash .ci/test`, which installs Debian's chromium"
    );
    let out = Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .args(args)
        .output()
        .expect("node (Node.js) runs the browser test: run `bash .ci/test`");
    assert!(
        out.status.success(),
        "the browser driver failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        result["page_errors"],
        serde_json::json!([]),
        "script errors in the page"
    );
    result
}

/// Where a screenshot goes.
pub fn screenshot(name: &str, scratch: &Path) -> PathBuf {
    match std::env::var_os("FEDTUNE_SCREENSHOTS") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            PathBuf::from(dir).join(name)
        }
        None => scratch.join(name),
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1; returns the status code and the body.
pub fn get(port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // axum answers small bodies whole, large ones chunked: undo the chunking.
    let body = if response.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// `fedtune-aggregator dashboard` over `db` on a free port; returns it and the port.
pub fn dashboard(db: &Path) -> (Processes, u16) {
    let mut dashboard = Command::new(super::binary("fedtune-aggregator"))
        .args(["dashboard", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(dashboard.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (Processes(vec![dashboard]), port)
}
