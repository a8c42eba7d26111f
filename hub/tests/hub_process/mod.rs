//! The hub as a process (`polyhub run`, this package's binary), for the
//! tests that kill it and start it again. Only the hub package's tests can
//! use it (`CARGO_BIN_EXE_polyhub`), so it is not in `common`, which the
//! plugins' tests share.
#![allow(dead_code)]

use std::time::Duration;

use crate::common::{service_up, wait_until};

/// `polyhub run` on `file`, stderr to `log`.
pub fn spawn_hub(file: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .args(["run", "--config"])
        .arg(file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until a hub process's HTTP adapter on `port` accepts connections.
pub async fn wait_http(port: u16) {
    wait_until("the hub's HTTP port", Duration::from_secs(30), || {
        service_up(port)
    })
    .await;
}
