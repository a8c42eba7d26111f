//! Third-party AMQP devices for the AMQP tests: the pika script
//! `plugins/amqp/tests/amqp_device.py` and amqp-tools' `amqp-publish`, run
//! against the real RabbitMQ on 127.0.0.1:5672.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::common::within;

/// The shared broker, as the tests' devices reach it.
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A name no other test (or test run) uses: `{prefix}-{pid}-{nanos}`.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/amqp/tests/amqp_device.py")
}

/// Runs a command to completion off the runtime, bounded by the test timeout.
pub async fn run(program: &str, args: Vec<String>, stdin: Option<Vec<u8>>) -> Output {
    let what = format!("{program} {}", args.join(" "));
    let program = program.to_owned();
    let out = within(
        &what,
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(&program);
            cmd.args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                use std::io::Write;
                pipe.write_all(&data).unwrap();
            }
            child.wait_with_output().unwrap()
        }),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Publishes one message with amqp-tools' `amqp-publish`, body from stdin.
pub async fn amqp_publish(exchange: &str, routing_key: &str, body: &[u8], extra: &[&str]) {
    let mut args = vec![
        "-u".to_owned(),
        URL.to_owned(),
        "-e".to_owned(),
        exchange.to_owned(),
        "-r".to_owned(),
        routing_key.to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run("amqp-publish", args, Some(body.to_vec())).await;
}

/// Runs the pika device script in a mode that exits by itself.
pub async fn pika(args: &[&str]) -> Output {
    let mut all = vec![script().display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run("python3", all, None).await
}

/// Deletes an exchange and queues (the test's own).
pub async fn cleanup(exchange: &str, queues: &[&str]) {
    let mut args = vec!["cleanup", "--url", URL, "--exchange", exchange];
    for q in queues {
        args.push("--delete-queue");
        args.push(q);
    }
    pika(&args).await;
}

/// One message as the pika consumer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub content_type: String,
    /// `k=v` pairs, sorted by key.
    pub headers: Vec<(String, String)>,
    pub correlation_id: String,
    pub reply_to: String,
    pub delivery_mode: u8,
}

impl Message {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn text(s: &str) -> String {
    String::from_utf8(unhex(s)).unwrap()
}

fn parse(line: &str) -> Message {
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(f.len(), 7, "bad device line {line:?}");
    Message {
        routing_key: text(f[0]),
        body: unhex(f[1]),
        content_type: text(f[2]),
        headers: text(f[3])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        correlation_id: text(f[4]),
        reply_to: text(f[5]),
        delivery_mode: text(f[6]).parse().unwrap(),
    }
}

/// A running pika consumer.
pub struct Consumer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Consumer {
    /// Starts `amqp_device.py consume` with `args` and waits until its
    /// queue is bound.
    pub async fn start(args: &[&str]) -> Consumer {
        let mut child = Command::new("python3")
            .arg(script())
            .arg("consume")
            .args(["--url", URL])
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut c = Consumer { child, lines };
        let first = within("pika consumer ready", c.lines.recv()).await;
        assert_eq!(first.as_deref(), Some("ready"));
        c
    }

    /// The next message.
    pub async fn next(&mut self) -> Message {
        let line = within("message at the pika consumer", self.lines.recv())
            .await
            .expect("pika consumer exited early");
        parse(&line)
    }

    /// Waits for the consumer to exit after its count, and checks it
    /// printed nothing more.
    pub async fn finish(mut self) {
        let extra = within("pika consumer exit", self.lines.recv()).await;
        assert_eq!(extra, None, "unexpected extra message");
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
