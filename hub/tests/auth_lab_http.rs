//! The access-control lab (see `lab/mod.rs`) over HTTP: a hub whose HTTP
//! adapter has `[auth]` with the lab's files, asked with curl, row by row,
//! beside real Mosquitto. Two columns: `basic` (`curl -u user:password`)
//! and `bearer` (`Authorization: Bearer` for publishes, `?access_token=` on
//! the `/events` stream, as a browser's `EventSource` sends it). A publish
//! is allowed when curl gets `202` and an in-process subscriber of the hub
//! receives it; a subscription when `/events` answers `200` and the row's
//! message comes through before a sentinel. Also: `401` with
//! `WWW-Authenticate`, `403`, `GET`/`DELETE` checks, list tokens and
//! `metrics_auth`.
//!
//! HTTP has no client id: the hub takes the client's address (`ip:port`) as
//! the `%c` of ACL patterns. Rows with a client id of their own (`dev42`,
//! `a+b`) are n/a here; the sentinel's `pattern read lab/sentinel/%c` is
//! met by binding curl to a known local port (`--local-port`).
#![cfg(all(unix, feature = "http"))]

mod common;
mod lab;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{free_tcp_port, start_hub, within};
use lab::*;
use polyhub_sdk::{AdapterContext, Envelope, Subscription, Topic};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A bearer token per lab user (and `user117`, who has none: a token
/// nobody configured).
fn token_of(user: &str) -> String {
    format!("tok-{user}")
}

/// A token of the list form: no user, what anonymous clients get.
const LIST_TOKEN: &str = "tok-anonymous";

fn hub_config(dir: &Path, anonymous: bool, http_port: u16, extra: &str) -> String {
    format!(
        "[auth]\npassword_file = \"{pw}\"\nacl_file = \"{acl}\"\nallow_anonymous = {anonymous}\n\
         [[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\n\
         bind = \"127.0.0.1:{http_port}\"\n\
         tokens = {{ \"{t1}\" = \"user1\", \"{t2}\" = \"user2\", \"{t3}\" = \"user3\" }}\n{extra}\n",
        pw = dir.join("passwords").display(),
        acl = dir.join("acl").display(),
        t1 = token_of("user1"),
        t2 = token_of("user2"),
        t3 = token_of("user3"),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Credentials {
    Basic,
    Bearer,
}

/// A hub with the lab's `[auth]` and an HTTP adapter, and a privileged
/// in-process subscriber to `#` (in-process subscriptions are not checked).
struct HttpHub {
    hub: polyhub::Hub,
    port: u16,
    probe: AdapterContext,
    seen: Subscription,
}

impl HttpHub {
    async fn start(dir: &Path, anonymous: bool, extra: &str) -> HttpHub {
        let port = free_tcp_port();
        let hub = start_hub(&hub_config(dir, anonymous, port, extra)).await;
        let probe = hub.attach("lab-probe", "test");
        let seen = probe
            .subscribe([polyhub_sdk::TopicFilter::new("#").unwrap()])
            .unwrap();
        HttpHub {
            hub,
            port,
            probe,
            seen,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// curl's arguments for `user` with `how`; none for anonymous.
fn credentials(user: Option<&str>, how: Credentials) -> Vec<String> {
    match (user, how) {
        (None, _) => Vec::new(),
        (Some(u), Credentials::Basic) => vec!["-u".into(), format!("{u}:{}", password_of(u))],
        (Some(u), Credentials::Bearer) => vec![
            "-H".into(),
            format!("Authorization: Bearer {}", token_of(u)),
        ],
    }
}

/// `curl -s -o /dev/null -w %{http_code}` with `args`; the status code.
async fn curl_status(args: &[String]) -> u16 {
    let out = within(
        "curl",
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(args)
            .output(),
    )
    .await
    .expect("curl must be installed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `curl -s -i` with `args`: the status line, headers and body.
async fn curl_full(args: &[String]) -> String {
    let out = within(
        "curl",
        Command::new("curl")
            .args(["-s", "-i", "--max-time", "10"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status of an `/events` stream (`curl -N -i`), read from its first
/// line; the stream is closed then.
async fn sse_status(args: &[String]) -> u16 {
    let mut child = Command::new("curl")
        .args(["-s", "-N", "-i", "--max-time", "20"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("curl must be installed");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("the /events status line", lines.next_line())
        .await
        .unwrap()
        .unwrap_or_default();
    let _ = child.start_kill();
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line from /events: {line:?}"))
}

fn pct(s: &str) -> String {
    s.replace('%', "%25")
        .replace('#', "%23")
        .replace('+', "%2B")
}

/// One column: polyhub over HTTP with one kind of credentials.
struct HttpColumn {
    name: &'static str,
    how: Credentials,
    hub: HttpHub,
}

impl HttpColumn {
    async fn publish(&mut self, user: Option<&str>, topic: &str, n: usize) -> bool {
        let marker = format!("row-{n}-{}", self.name);
        let mut args = credentials(user, self.how);
        args.extend([
            "-X".into(),
            "POST".into(),
            "--data-binary".into(),
            marker.clone(),
            self.hub.url(&format!("/topics/{}", pct(topic))),
        ]);
        let status = curl_status(&args).await;
        // `202` comes once the hub routed the envelope: the probe has it
        // queued already, or never will.
        let mut arrived = false;
        while let Some(e) = self.hub.seen.try_recv() {
            arrived |= e.topic.as_str() == topic && e.payload == marker.as_bytes();
        }
        match status {
            202 => assert!(arrived, "row {n}: 202 but the message did not arrive"),
            401 | 403 => assert!(!arrived, "row {n}: {status} but the message arrived"),
            other => panic!("row {n}: unexpected status {other} for a publish"),
        }
        arrived
    }

    async fn subscribe(&mut self, user: Option<&str>, filter: &str, topic: &str, n: usize) -> bool {
        let local_port = free_tcp_port();
        let sentinel = format!("lab/sentinel/127.0.0.1:{local_port}");
        let mut url = self.hub.url(&format!(
            "/events?filter={}&filter={}",
            pct(filter),
            pct(&sentinel)
        ));
        let mut args: Vec<String> = vec![
            "-s".into(),
            "-N".into(),
            "-i".into(),
            "--max-time".into(),
            "20".into(),
            "--local-port".into(),
            local_port.to_string(),
        ];
        match (user, self.how) {
            (Some(u), Credentials::Bearer) => {
                url.push_str(&format!("&access_token={}", token_of(u)));
            }
            _ => args.extend(credentials(user, self.how)),
        }
        args.push(url);
        let mut child = Command::new("curl")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("curl must be installed");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let status_line = within("the /events status line", lines.next_line())
            .await
            .unwrap()
            .unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("row {n}: no status line from /events: {status_line:?}"));
        if status != 200 {
            assert!(
                matches!(status, 401 | 403),
                "row {n}: unexpected status {status} for /events"
            );
            return false;
        }
        // The headers came: the handler has subscribed.
        let marker = format!("row-{n}-{}", self.name);
        let done = format!("done-{n}-{}", self.name);
        for (t, payload) in [(topic, &marker), (sentinel.as_str(), &done)] {
            self.hub
                .probe
                .publish(Envelope::new(Topic::new(t).unwrap(), payload.clone()))
                .await
                .unwrap();
        }
        let mut delivered = false;
        within(&format!("row {n}: the sentinel on /events"), async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("row {n}: /events ended before the sentinel"));
                if line.starts_with("data:") {
                    if line.contains(&format!("\"payload\":\"{done}\"")) {
                        break;
                    }
                    delivered |= line.contains(&format!("\"payload\":\"{marker}\""));
                }
            }
        })
        .await;
        let _ = child.start_kill();
        delivered
    }
}

impl Protocol for HttpColumn {
    fn name(&self) -> &str {
        self.name
    }

    fn ask<'a>(&'a mut self, row: &'a Row, n: usize) -> Verdict<'a> {
        Box::pin(async move {
            // HTTP has no client id (the client's address stands for it):
            // a row's own client id cannot be given.
            if row.client.is_some() {
                return None;
            }
            Some(match row.ask {
                Ask::Publish(topic) => self.publish(row.user, topic, n).await,
                Ask::Subscribe(filter, topic) => self.subscribe(row.user, filter, topic, n).await,
            })
        })
    }
}

async fn http_columns(dir: PathBuf, anonymous: bool) -> Vec<Box<dyn Protocol>> {
    vec![
        Box::new(HttpColumn {
            name: "basic",
            how: Credentials::Basic,
            hub: HttpHub::start(&dir, anonymous, "").await,
        }),
        Box::new(HttpColumn {
            name: "bearer",
            how: Credentials::Bearer,
            hub: HttpHub::start(&dir, anonymous, "").await,
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_over_http_gets_mosquittos_verdicts_without_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab over HTTP", LAB_ACL, false, &rows, http_columns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_over_http_gets_mosquittos_verdicts_with_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab over HTTP", LAB_ACL, true, &rows, http_columns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_and_wildcard_rules_over_http_get_mosquittos_verdicts() {
    compare(
        "Extended ACL over HTTP",
        EXTENDED_ACL,
        true,
        &extended_rows(),
        http_columns,
    )
    .await;
}

/// Missing or wrong credentials get `401` with both challenges; a known
/// user the ACL refuses gets `403`; `GET` of a value needs `read` and
/// `DELETE` needs `write`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_401_with_www_authenticate_or_403() {
    let files = lab_files(LAB_ACL);
    let hub = HttpHub::start(files.path(), false, "").await;
    let t = hub.url("/topics/sensor/fanspeed/data");
    let post = |creds: Vec<String>| {
        let mut a = creds;
        a.extend([
            "-X".into(),
            "POST".into(),
            "-d".into(),
            "1".into(),
            t.clone(),
        ]);
        a
    };
    for creds in [
        vec![],
        vec!["-u".into(), "user1:wrong".into()],
        vec!["-u".into(), format!("user117:{}", password_of("user117"))],
        vec!["-H".into(), "Authorization: Bearer nope".into()],
        vec!["-H".into(), "Authorization: Digest x".into()],
    ] {
        let text = curl_full(&post(creds.clone())).await;
        assert!(text.starts_with("HTTP/1.1 401"), "{creds:?}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains("www-authenticate: basic realm=\"polyhub\""),
            "{text}"
        );
        assert!(
            lower.contains("www-authenticate: bearer realm=\"polyhub\""),
            "{text}"
        );
    }
    // user2 may not publish here (403), user1 may (202).
    let user2 = vec!["-u".into(), format!("user2:{}", password_of("user2"))];
    let user1 = vec!["-u".into(), format!("user1:{}", password_of("user1"))];
    let text = curl_full(&post(user2.clone())).await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert_eq!(curl_status(&post(user1.clone())).await, 202);
    // GET of the last value needs read: user2 may read sensor/+/data; the
    // `%u` pattern lets user1 write sensor/user1/+/data, not read it.
    let get = |creds: &Vec<String>, url: String| {
        let mut a = creds.clone();
        a.push(url);
        a
    };
    assert_eq!(curl_status(&get(&user2, t.clone())).await, 200);
    let own = hub.url("/topics/sensor/user1/temperature/data");
    assert_eq!(
        curl_status(&{
            let mut a = post(user1.clone());
            a.pop();
            a.push(own.clone());
            a
        })
        .await,
        202
    );
    assert_eq!(curl_status(&get(&user1, own.clone())).await, 403);
    // DELETE needs write: user2 may not clear fanspeed, user1 may.
    let delete = |creds: &Vec<String>| {
        let mut a = creds.clone();
        a.extend(["-X".into(), "DELETE".into(), t.clone()]);
        a
    };
    assert_eq!(curl_status(&delete(&user2)).await, 403);
    assert!(hub
        .probe
        .last_value(&Topic::new("sensor/fanspeed/data").unwrap())
        .is_some());
    assert_eq!(curl_status(&delete(&user1)).await, 204);
    assert!(hub
        .probe
        .last_value(&Topic::new("sensor/fanspeed/data").unwrap())
        .is_none());
    // The listing leaves out what the caller may not read.
    let list = curl_full(&get(&user1, hub.url("/topics"))).await;
    assert!(list.starts_with("HTTP/1.1 200"), "{list}");
    assert!(!list.contains("sensor/user1/temperature/data"), "{list}");
    // /events: a filter the caller can never read is 403.
    let sse = curl_full(&get(&user2, hub.url("/events?filter=other/%23"))).await;
    assert!(sse.starts_with("HTTP/1.1 403"), "{sse}");
    assert_eq!(
        sse_status(&get(&user2, hub.url("/events?filter=sensor/%2B/data"))).await,
        200
    );
    let snap = hub.hub.snapshot();
    let http = snap.adapters.iter().find(|a| a.name == "http").unwrap();
    assert!(
        http.metrics.denied("write") >= 2,
        "{:?}",
        http.metrics.denied
    );
    assert!(
        http.metrics.denied("read") >= 1,
        "{:?}",
        http.metrics.denied
    );
    assert!(
        http.metrics.denied("subscribe") >= 1,
        "{:?}",
        http.metrics.denied
    );
    assert!(
        http.metrics.denied("connect") >= 3,
        "{:?}",
        http.metrics.denied
    );
}

/// The list form of `tokens` gets what an anonymous client gets, even with
/// anonymous access off; `/health` and `/metrics` stay open unless
/// `metrics_auth = true`, which takes any valid credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tokens_act_as_anonymous_and_metrics_auth_needs_credentials() {
    let files = lab_files(EXTENDED_ACL);
    // `tokens` given twice would be a TOML error: a hub of its own with the list form.
    let port = free_tcp_port();
    let dir = files.path();
    let config = format!(
        "[auth]\npassword_file = \"{}\"\nacl_file = \"{}\"\nallow_anonymous = false\n\
         [[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\n\
         bind = \"127.0.0.1:{port}\"\ntokens = [\"{LIST_TOKEN}\"]\nmetrics_auth = true\n",
        dir.join("passwords").display(),
        dir.join("acl").display()
    );
    let hub = start_hub(&config).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let bearer = vec![
        "-H".to_owned(),
        format!("Authorization: Bearer {LIST_TOKEN}"),
    ];
    let with = |creds: &[String], extra: &[&str]| {
        let mut a: Vec<String> = creds.to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // Anonymous rules of the extended ACL: read public/#, nothing to write
    // there; the token gets exactly that.
    let news = url("/topics/public/news");
    assert_eq!(
        curl_status(&with(&[], &["-X", "POST", "-d", "x", &news])).await,
        401
    );
    assert_eq!(
        curl_status(&with(&bearer, &["-X", "POST", "-d", "x", &news])).await,
        403
    );
    let public = url(&format!(
        "/events?filter=public/%23&access_token={LIST_TOKEN}"
    ));
    assert_eq!(sse_status(&[public]).await, 200);
    let other = url(&format!(
        "/events?filter=other/%23&access_token={LIST_TOKEN}"
    ));
    assert_eq!(sse_status(&[other]).await, 403);
    let no_token = url("/events?filter=public/%23");
    assert_eq!(sse_status(&[no_token]).await, 401);
    // metrics_auth: no credentials, 401; a list token or a user, 200.
    for path in ["/metrics", "/health"] {
        let text = curl_full(&[url(path)]).await;
        assert!(text.starts_with("HTTP/1.1 401"), "{path}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("www-authenticate"),
            "{text}"
        );
        assert_eq!(curl_status(&with(&bearer, &[&url(path)])).await, 200);
        let user = vec!["-u".to_owned(), format!("user3:{}", password_of("user3"))];
        assert_eq!(curl_status(&with(&user, &[&url(path)])).await, 200);
        let wrong = vec!["-u".to_owned(), "user3:wrong".to_owned()];
        assert_eq!(curl_status(&with(&wrong, &[&url(path)])).await, 401);
    }
    drop(hub);
}

/// Without `[auth]`, `metrics_auth` has nothing to check credentials
/// against: the hub refuses to start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_auth_without_auth_or_tokens_fails_the_start() {
    let port = free_tcp_port();
    let config = format!(
        "[[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\n\
         bind = \"127.0.0.1:{port}\"\nmetrics_auth = true\n"
    );
    let Err(err) = within("hub start", polyhub::start_str(&config)).await else {
        panic!("the hub started");
    };
    assert!(format!("{err:#}").contains("metrics_auth"), "{err:#}");
}
