//! Helpers shared by the hub's integration tests: free ports from the OS,
//! bounded waits, and starting a hub from inline config.
#![allow(dead_code)]

use std::future::Future;
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

/// Default bound for any single await in a test.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most [`TIMEOUT`], panicking with `what` on expiry.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(TIMEOUT, what, fut).await
}

/// Awaits `fut` for at most `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// A TCP port the OS says is free right now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port the OS says is free right now.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 20 ms until it holds, for at most `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    within_for(limit, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Starts a hub from inline TOML (built-in adapters), bounded by [`TIMEOUT`].
pub async fn start_hub(toml: &str) -> polyhub::Hub {
    within("hub start", polyhub::start_str(toml))
        .await
        .unwrap_or_else(|e| panic!("hub failed to start: {e:#}"))
}

/// Whether a TCP service answers on 127.0.0.1:`port`.
pub fn service_up(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// libcoap's tool, under its plain name or Debian's `-notls` one.
pub fn libcoap(tool: &str) -> String {
    for name in [tool.to_owned(), format!("{tool}-notls")] {
        let found = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return name;
        }
    }
    panic!("{tool} not found: install libcoap3-bin (scripts/test.sh does)");
}

/// `polyhub passwd -b PASSWORD FILE USER`: adds or replaces `user` in a
/// password file (created when missing). Call it as
/// `polyhub_passwd(env!("CARGO_BIN_EXE_polyhub"), ..)`: this module is
/// shared with the plugins' tests, whose packages have no such binary.
pub fn polyhub_passwd(bin: &str, file: &std::path::Path, user: &str, password: &str) {
    let out = std::process::Command::new(bin)
        .args(["passwd", "-b", password])
        .arg(file)
        .arg(user)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
