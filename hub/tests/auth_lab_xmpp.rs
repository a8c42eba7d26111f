//! The access-control lab (see `lab/mod.rs`) over XMPP: a hub whose XMPP
//! adapter has `[auth]` with the lab's files, asked by slixmpp devices
//! logged in to the private Prosody as `user1`…`user3` (accounts of
//! `scripts/setup/50-xmpp.sh`), row by row, beside real Mosquitto. The user
//! of a sender is the local part of its bare JID, which Prosody
//! authenticated; `user117` has no XMPP account, so it cannot log in.
//!
//! A publish is allowed when an in-process subscriber of the hub receives
//! it: the device sends the message, then `list`, and the hub handles
//! stanzas in order, so once the answer to `list` is back the publish has
//! been routed (or refused, with a reply naming the topic). A subscription
//! is allowed when `subscribe FILTER` is confirmed and a message on the
//! row's topic arrives before a sentinel on `lab/sentinel/<client id>`.
//!
//! n/a rows: XMPP has no anonymous sender (every stanza comes from a JID
//! the server authenticated), and the client id of `%c` is the sender's bare
//! JID (`user2@localhost`), so rows with a client id of their own (`dev42`,
//! `a+b`) cannot be asked.
#![cfg(all(unix, feature = "xmpp"))]

mod common;
mod lab;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{start_hub, within};
use lab::*;
use polyhub_sdk::{AdapterContext, Envelope, Subscription, Topic, TopicFilter};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const XMPP_PASSWORD: &str = "polyhub-pw";
const PROSODY_DIR: &str = "/tmp/polyhub-prosody";
const HUB_ACCOUNT: &str = "polyhub-lab";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The private Prosody's port (started by `scripts/prosody/instance.sh`).
fn prosody_port() -> u16 {
    let out = std::process::Command::new(repo().join("scripts/prosody/instance.sh"))
        .arg(PROSODY_DIR)
        .output()
        .expect("run scripts/prosody/instance.sh (is prosody installed? run scripts/test.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A tag no other test (or run) uses, for resources and payloads: tests
/// of this file run side by side with the same accounts.
fn tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// One event line of a device (`name\tkey=value…`, see device.py).
struct Ev {
    name: String,
    fields: Vec<(String, String)>,
}

impl Ev {
    fn parse(line: &str) -> Ev {
        let mut parts = line.split('\t');
        let name = parts.next().unwrap_or_default().to_owned();
        let fields = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("\\n", "\n").replace("\\\\", "\\")))
            .collect();
        Ev { name, fields }
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A slixmpp device (`xmpp_devices/device.py`).
struct Device {
    user: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Device {
    /// Logs in as `user@localhost/lab-TAG`; `None` if Prosody refuses.
    async fn login(user: &str, port: u16, tag: &str) -> Option<Device> {
        let mut child = Command::new("python3")
            .arg(repo().join("hub/tests/xmpp_devices/device.py"))
            .arg(format!("{user}@localhost/lab-{tag}"))
            .arg(XMPP_PASSWORD)
            .arg(port.to_string())
            .arg(format!("{PROSODY_DIR}/certs/ca.crt"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with slixmpp (run scripts/test.sh)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut d = Device {
            user: user.to_owned(),
            child,
            stdin,
            lines,
        };
        let ev = d
            .next(&format!("{user} online or refused"), |e| {
                e.name == "online" || e.name == "auth_failed"
            })
            .await;
        (ev.name == "online").then_some(d)
    }

    async fn next(&mut self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        let user = self.user.clone();
        within(&format!("{user}: {what}"), async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("{user} exited while waiting for {what}"));
                let ev = Ev::parse(&line);
                assert_ne!(ev.name, "command_error", "{user}: {line}");
                if pred(&ev) {
                    return ev;
                }
            }
        })
        .await
    }

    async fn send(&mut self, to: &str, subject: Option<&str>, body: &str) {
        let mut cmd = serde_json::json!({ "op": "send", "to": to, "body": body });
        if let Some(s) = subject {
            cmd["subject"] = s.into();
        }
        let line = format!("{cmd}\n");
        within("a device command", self.stdin.write_all(line.as_bytes()))
            .await
            .unwrap();
    }

    /// Sends a command body to the hub and returns the hub's answer that
    /// starts with `polyhub: ` (after any other message from it).
    async fn command(&mut self, hub: &str, body: &str) -> String {
        self.send(hub, None, body).await;
        self.reply(hub, body).await
    }

    async fn reply(&mut self, hub: &str, what: &str) -> String {
        let hub = hub.to_owned();
        let ev = self
            .next(&format!("the hub's answer to `{what}`"), move |e| {
                e.name == "message"
                    && e.get("from") == hub
                    && e.get("body").starts_with("polyhub: ")
            })
            .await;
        ev.get("body").to_owned()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The column: a hub with the lab's `[auth]` and an XMPP adapter, the
/// lab users' devices, and a privileged in-process subscriber to `#`.
struct XmppColumn {
    _hub: polyhub::Hub,
    hub_jid: String,
    tag: String,
    probe: AdapterContext,
    seen: Subscription,
    devices: Vec<(String, Option<Device>)>,
    port: u16,
}

impl XmppColumn {
    async fn start(dir: &Path, anonymous: bool) -> XmppColumn {
        let port = prosody_port();
        let tag = tag();
        let hub_jid = format!("{HUB_ACCOUNT}@localhost/lab-{tag}");
        let hub = start_hub(&format!(
            "[auth]\npassword_file = \"{pw}\"\nacl_file = \"{acl}\"\nallow_anonymous = {anonymous}\n\
             [[adapters]]\nname = \"xmpp\"\ntype = \"xmpp\"\n[adapters.config]\n\
             jid = \"{hub_jid}\"\npassword = \"{XMPP_PASSWORD}\"\nserver = \"127.0.0.1:{port}\"\n\
             tls = \"none\"\nreconnect_max_ms = 1000\n",
            pw = dir.join("passwords").display(),
            acl = dir.join("acl").display(),
        ))
        .await;
        let probe = hub.attach("lab-probe", "test");
        let seen = probe.subscribe([TopicFilter::new("#").unwrap()]).unwrap();
        XmppColumn {
            _hub: hub,
            hub_jid,
            tag,
            probe,
            seen,
            devices: Vec::new(),
            port,
        }
    }

    /// The logged-in device of `user` (`None`: Prosody refused the login).
    async fn device(&mut self, user: &str) -> Option<&mut Device> {
        if !self.devices.iter().any(|(u, _)| u == user) {
            let d = Device::login(user, self.port, &self.tag).await;
            self.devices.push((user.to_owned(), d));
        }
        self.devices
            .iter_mut()
            .find(|(u, _)| u == user)
            .and_then(|(_, d)| d.as_mut())
    }

    async fn publish(&mut self, user: &str, topic: &str, n: usize) -> bool {
        let marker = format!("row-{n}-{}", self.tag);
        let hub = self.hub_jid.clone();
        let Some(dev) = self.device(user).await else {
            return false;
        };
        dev.send(&hub, Some(topic), &marker).await;
        // The answer to `list` comes after any refusal of the publish.
        dev.send(&hub, None, "list").await;
        let first = dev.reply(&hub, "the publish, then list").await;
        let refused = first.starts_with("polyhub: you may not publish");
        if refused {
            assert_eq!(first, format!("polyhub: you may not publish to {topic}"));
            dev.reply(&hub, "list").await;
        }
        let mut arrived = false;
        while let Some(e) = self.seen.try_recv() {
            arrived |= e.topic.as_str() == topic && e.payload == marker.as_bytes();
        }
        assert_eq!(
            arrived, !refused,
            "row {n}: refusal reply and delivery disagree"
        );
        arrived
    }

    async fn subscribe(&mut self, user: &str, filter: &str, topic: &str, n: usize) -> bool {
        let hub = self.hub_jid.clone();
        let (marker, done) = (
            format!("row-{n}-{}", self.tag),
            format!("done-{n}-{}", self.tag),
        );
        let sentinel = format!("lab/sentinel/{user}@localhost");
        let Some(dev) = self.device(user).await else {
            return false;
        };
        let answer = dev.command(&hub, &format!("subscribe {filter}")).await;
        if answer == format!("polyhub: you may not subscribe to {filter}") {
            return false;
        }
        assert!(
            answer.contains(&format!("subscribed to {filter}")),
            "{answer}"
        );
        let answer = dev.command(&hub, &format!("subscribe {sentinel}")).await;
        assert!(answer.contains("subscribed to"), "{answer}");
        for (t, payload) in [(topic, &marker), (sentinel.as_str(), &done)] {
            self.probe
                .publish(Envelope::new(Topic::new(t).unwrap(), payload.clone()))
                .await
                .unwrap();
        }
        let dev = self.device(user).await.unwrap();
        let mut delivered = false;
        loop {
            let ev = dev
                .next("the sentinel", |e| {
                    e.name == "message" && !e.get("subject").is_empty()
                })
                .await;
            if ev.get("body") == done {
                break;
            }
            delivered |= ev.get("subject") == topic && ev.get("body") == marker;
        }
        // Back to no subscriptions for the next row.
        for f in [filter, sentinel.as_str()] {
            let answer = dev.command(&hub, &format!("unsubscribe {f}")).await;
            assert!(answer.contains("unsubscribed"), "{answer}");
        }
        delivered
    }
}

impl Protocol for XmppColumn {
    fn name(&self) -> &str {
        "xmpp"
    }

    fn ask<'a>(&'a mut self, row: &'a Row, n: usize) -> Verdict<'a> {
        Box::pin(async move {
            // No anonymous XMPP senders; the client id is the bare JID.
            let user = row.user?;
            if row.client.is_some() {
                return None;
            }
            Some(match row.ask {
                Ask::Publish(topic) => self.publish(user, topic, n).await,
                Ask::Subscribe(filter, topic) => self.subscribe(user, filter, topic, n).await,
            })
        })
    }
}

async fn xmpp_column(dir: PathBuf, anonymous: bool) -> Vec<Box<dyn Protocol>> {
    vec![Box::new(XmppColumn::start(&dir, anonymous).await)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_over_xmpp_gets_mosquittos_verdicts_without_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab over XMPP", LAB_ACL, false, &rows, xmpp_column).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_over_xmpp_gets_mosquittos_verdicts_with_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab over XMPP", LAB_ACL, true, &rows, xmpp_column).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_and_wildcard_rules_over_xmpp_get_mosquittos_verdicts() {
    compare(
        "Extended ACL over XMPP",
        EXTENDED_ACL,
        true,
        &extended_rows(),
        xmpp_column,
    )
    .await;
}

/// `users` maps a JID to another user (`user3@localhost` acts as `user1`),
/// and a static subscriber of the config receives what its user could not
/// subscribe to (`user2` may not read `other/#`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_map_jids_and_static_subscribers_are_trusted() {
    let files = lab_files(LAB_ACL);
    let dir = files.path();
    let port = prosody_port();
    let tag = tag();
    let hub_jid = format!("{HUB_ACCOUNT}@localhost/lab-{tag}");
    let hub = start_hub(&format!(
        "[auth]\npassword_file = \"{pw}\"\nacl_file = \"{acl}\"\nallow_anonymous = false\n\
         [[adapters]]\nname = \"xmpp\"\ntype = \"xmpp\"\n[adapters.config]\n\
         jid = \"{hub_jid}\"\npassword = \"{XMPP_PASSWORD}\"\nserver = \"127.0.0.1:{port}\"\n\
         tls = \"none\"\nusers = {{ \"user3@localhost\" = \"user1\" }}\n\
         subscribers = [{{ jid = \"user2@localhost\", filter = \"other/{tag}/#\" }}]\n",
        pw = dir.join("passwords").display(),
        acl = dir.join("acl").display(),
    ))
    .await;
    let probe = hub.attach("lab-probe", "test");
    let mut seen = probe.subscribe([TopicFilter::new("#").unwrap()]).unwrap();

    // user3 alone may not publish on sensor/fanspeed/data; mapped to user1 it may.
    let mut user3 = Device::login("user3", port, &tag).await.unwrap();
    let marker = format!("mapped-{tag}");
    user3
        .send(&hub_jid, Some("sensor/fanspeed/data"), &marker)
        .await;
    let answer = user3.command(&hub_jid, "list").await;
    assert_eq!(answer, "polyhub: no subscriptions");
    let got = within("the mapped user's publish", seen.recv())
        .await
        .unwrap();
    assert_eq!(&got.payload[..], marker.as_bytes());

    // user2's own `subscribe` is refused; the config's subscription delivers.
    let mut user2 = Device::login("user2", port, &tag).await.unwrap();
    let filter = format!("other/{tag}/#");
    let answer = user2
        .command(&hub_jid, &format!("subscribe {filter}"))
        .await;
    assert_eq!(
        answer,
        format!("polyhub: you may not subscribe to {filter}")
    );
    let topic = format!("other/{tag}/x");
    probe
        .publish(Envelope::new(
            Topic::new(&topic).unwrap(),
            format!("static-{tag}"),
        ))
        .await
        .unwrap();
    let ev = user2
        .next("the static subscription's message", |e| {
            e.name == "message" && !e.get("subject").is_empty()
        })
        .await;
    assert_eq!(ev.get("subject"), topic);
    assert_eq!(ev.get("body"), format!("static-{tag}"));
    let snap = hub.snapshot();
    let xmpp = snap.adapters.iter().find(|a| a.name == "xmpp").unwrap();
    assert_eq!(xmpp.metrics.denied("subscribe"), 1);
    assert_eq!(xmpp.metrics.denied("read"), 0);
}
