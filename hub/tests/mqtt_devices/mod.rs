//! The stock Mosquitto clients as MQTT devices for the MQTT tests:
//! `mosquitto_sub` running in the background (its received messages as a
//! stream) and one-shot `mosquitto_pub`, plus a private `mosquitto` broker.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::common::{within, within_for};

/// A message as `mosquitto_sub` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Topic.
    pub topic: String,
    /// Payload (text).
    pub payload: String,
    /// QoS it was delivered with.
    pub qos: u8,
    /// Whether the retain flag was set.
    pub retain: bool,
}

const SUBACK: &str = "\u{1}suback";

/// A running `mosquitto_sub`; killed on drop.
pub struct Sub {
    child: Child,
    rx: mpsc::UnboundedReceiver<String>,
}

impl Sub {
    /// Starts `mosquitto_sub` on 127.0.0.1:`port` for `filter` at QoS 1 and
    /// waits until the broker acknowledged the subscription.
    pub async fn start(port: u16, filter: &str, extra: &[&str]) -> Sub {
        let mut sub = Sub::spawn(port, filter, extra);
        sub.wait_subscribed().await;
        sub
    }

    /// Starts `mosquitto_sub` without waiting for its SUBACK: a resumed
    /// session's queued messages come before it, and [`Sub::next`] gets
    /// them.
    pub fn spawn(port: u16, filter: &str, extra: &[&str]) -> Sub {
        // Line-buffered, or its debug lines wait in a pipe buffer.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", filter])
            .args(["-q", "1", "-d", "-F", "%r %q %t %p"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .expect("mosquitto_sub runs (mosquitto-clients installed?)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let out = if line.starts_with("Client ") {
                    if line.contains("received SUBACK") {
                        SUBACK.to_owned()
                    } else {
                        continue;
                    }
                } else if line.starts_with("Subscribed (") {
                    continue;
                } else {
                    line
                };
                if tx.send(out).is_err() {
                    break;
                }
            }
        });
        Sub { child, rx }
    }

    /// Waits for the next SUBACK (after a start or a reconnect).
    pub async fn wait_subscribed(&mut self) {
        within("mosquitto_sub SUBACK", async {
            loop {
                match self.rx.recv().await {
                    Some(l) if l == SUBACK => return,
                    Some(_) => {}
                    None => panic!("mosquitto_sub exited before subscribing"),
                }
            }
        })
        .await
    }

    /// The next message (skipping reconnect notices), within the default timeout.
    pub async fn next(&mut self) -> Msg {
        self.next_within(crate::common::TIMEOUT).await
    }

    /// The next message within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Msg {
        within_for(limit, "message at mosquitto_sub", async {
            loop {
                match self.rx.recv().await {
                    Some(l) if l == SUBACK => {}
                    Some(l) => return parse(&l),
                    None => panic!("mosquitto_sub exited"),
                }
            }
        })
        .await
    }

    /// Messages until (and excluding) the first on `topic`.
    pub async fn until_topic(&mut self, topic: &str) -> Vec<Msg> {
        self.take_until(topic).await.0
    }

    /// Messages before the first on `topic`, and that one.
    pub async fn take_until(&mut self, topic: &str) -> (Vec<Msg>, Msg) {
        let mut seen = Vec::new();
        loop {
            let m = self.next().await;
            if m.topic == topic {
                return (seen, m);
            }
            seen.push(m);
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(line: &str) -> Msg {
    let mut parts = line.splitn(4, ' ');
    let retain = parts.next() == Some("1");
    let qos = parts.next().and_then(|q| q.parse().ok()).unwrap_or(9);
    let topic = parts.next().unwrap_or_default().to_owned();
    let payload = parts.next().unwrap_or_default().to_owned();
    Msg {
        topic,
        payload,
        qos,
        retain,
    }
}

/// Runs `mosquitto_pub` once against 127.0.0.1:`port` and checks it succeeded.
pub async fn publish(port: u16, topic: &str, payload: &str, extra: &[&str]) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-m",
        payload,
    ])
    .args(extra);
    let out = within(
        "mosquitto_pub",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("join")
    .expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "mosquitto_pub {topic} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private Mosquitto on its own port, for tests that stop and restart a
/// broker without touching the shared one. Killed on drop.
pub struct PrivateMosquitto {
    child: Option<Child>,
    conf: std::path::PathBuf,
    pub port: u16,
}

impl PrivateMosquitto {
    /// Starts `mosquitto` on 127.0.0.1:`port` with persistence in `dir`.
    pub async fn start(dir: &Path, port: u16) -> PrivateMosquitto {
        Self::start_with(dir, port, "").await
    }

    /// Same, with more lines for its config file (such as TLS settings).
    pub async fn start_with(dir: &Path, port: u16, extra: &str) -> PrivateMosquitto {
        // Mosquitto started as root drops to its own user, which must be
        // able to write its persistence file here.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
                .expect("chmod tempdir");
        }
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {dir}/\nmax_queued_messages 100000\n\
                 log_dest file {dir}/mosquitto.log\n{extra}\n",
                dir = dir.display()
            ),
        )
        .expect("write mosquitto.conf");
        let mut m = PrivateMosquitto {
            child: None,
            conf,
            port,
        };
        m.restart().await;
        m
    }

    /// Starts it (again) and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs");
        self.child = Some(child);
        let port = self.port;
        crate::common::wait_until("private mosquitto up", crate::common::TIMEOUT, || {
            crate::common::service_up(port)
        })
        .await;
    }

    /// Stops it with SIGTERM (it saves its sessions) and waits for the exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            within(
                "private mosquitto exit",
                tokio::task::spawn_blocking(move || child.wait()),
            )
            .await
            .expect("join")
            .expect("wait");
        }
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A topic prefix no other test (or engineer) uses on a shared broker.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("t{}-{nanos:x}/{name}", std::process::id())
}
