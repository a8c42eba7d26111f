//! `[auth]` over CoAP against real Mosquitto: the access-control lab (see
//! `lab/mod.rs`) asked of a private Mosquitto and of polyhub over plain
//! CoAP (`?u=USER&p=PASSWORD`, libcoap's `coap-client`), row by row; every
//! verdict must agree. Plus the refusal codes (4.01, 4.03) and what
//! `/.well-known/core` lists.
//!
//! How polyhub is asked. Each row gets a hub of its own (so that no
//! observer of an earlier row is still registered): a publish is allowed
//! when a privileged observer (`labadmin` observing `#`) is notified of it
//! before a sync message published after it; a subscription is allowed
//! when the row's user can register an observer (Observe: 0) and is then
//! notified of a message on the row's topic, refused when the registration
//! is refused or the hub counts the notification's read denial instead.
//! Client ids: a row's own client id goes in `c=` (`lab-<n>` otherwise).
#![cfg(all(unix, feature = "coap"))]

mod common;
mod lab;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use lab::*;
use tokio::sync::mpsc;

/// `/`-separated topic or filter as a CoAP URI path (`#` and `%` escaped).
fn uri_path(topic: &str) -> String {
    topic
        .split('/')
        .map(|level| {
            level
                .replace('%', "%25")
                .replace('#', "%23")
                .replace(' ', "%20")
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The lab's credentials as Uri-Query items (none for anonymous).
fn credentials(user: Option<&str>, client: &str) -> String {
    match user {
        Some(u) => format!("?u={u}&p={}&c={client}", password_of(u)),
        None => format!("?c={client}"),
    }
}

/// A hub with `[auth]` over the lab's files and a CoAP adapter.
struct LabHub {
    hub: polyhub::Hub,
    url: String,
}

impl LabHub {
    async fn start(dir: &Path, anonymous: bool) -> LabHub {
        let port = free_udp_port();
        let hub = start_hub(&format!(
            "[auth]\npassword_file = \"{}\"\nacl_file = \"{}\"\nallow_anonymous = {anonymous}\n\n\
             [[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n",
            dir.join("passwords").display(),
            dir.join("acl").display(),
        ))
        .await;
        LabHub {
            hub,
            url: format!("coap://127.0.0.1:{port}"),
        }
    }

    fn denied(&self, action: &str) -> u64 {
        self.hub
            .snapshot()
            .adapters
            .iter()
            .find(|a| a.name == "coap")
            .map_or(0, |a| a.metrics.denied(action))
    }

    /// `coap-client -m put` as `user`; its output.
    async fn put(&self, user: Option<&str>, client: &str, topic: &str, payload: &str) -> Output {
        let url = format!(
            "{}/ps/{}{}",
            self.url,
            uri_path(topic),
            credentials(user, client)
        );
        coap_client(&["-m", "put", "-e", payload, &url]).await
    }

    /// A `coap-client -s` observer of `filter` as `user`; registered (or
    /// refused) when this returns: `None` when refused.
    async fn observe(&self, user: Option<&str>, client: &str, filter: &str) -> Option<Observer> {
        let url = format!(
            "{}/ps/{}{}",
            self.url,
            uri_path(filter),
            credentials(user, client)
        );
        let refusals = || self.denied("connect") + self.denied("subscribe");
        let (subs, refused) = (self.hub.snapshot().subscriptions, refusals());
        let o = Observer::start(
            Command::new(libcoap("coap-client")).args(["-w", "-s", "60", "-B", "60", &url]),
        );
        // A new observer of a filter makes the adapter subscribe the hub
        // for it (each row has a hub of its own: nobody else observes it).
        wait_until("observer registered or refused", TIMEOUT, || {
            self.hub.snapshot().subscriptions > subs || refusals() > refused
        })
        .await;
        (refusals() == refused).then_some(o)
    }
}

/// Runs coap-client with `args` (bounded by `-B`), returning its output.
async fn coap_client(args: &[&str]) -> Output {
    let mut cmd = Command::new(libcoap("coap-client"));
    cmd.args(["-B", "8"]).args(args);
    let what = format!("coap-client {args:?}");
    within(
        &what,
        tokio::task::spawn_blocking(move || cmd.output().expect("run coap-client")),
    )
    .await
    .unwrap()
}

/// A `coap-client -s` process whose notifications (one per line, `-w`)
/// arrive on a channel. Killed on drop.
struct Observer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Observer {
    fn start(cmd: &mut Command) -> Observer {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coap-client -s");
        let mut out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(1) = out.read(&mut byte) {
                if byte[0] == b'\n' {
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                    buf.clear();
                } else {
                    buf.push(byte[0]);
                }
            }
        });
        Observer { child, lines }
    }

    /// Whether a line `wanted` arrives before `stop()` holds.
    async fn sees(&mut self, wanted: &str, mut stop: impl FnMut() -> bool) -> bool {
        within(&format!("notification `{wanted}` or a denial"), async {
            loop {
                match tokio::time::timeout(Duration::from_millis(20), self.lines.recv()).await {
                    Ok(Some(line)) if line == wanted => return true,
                    Ok(Some(_)) => {}
                    Ok(None) => return false,
                    Err(_) if stop() => return false,
                    Err(_) => {}
                }
            }
        })
        .await
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The column of polyhub over plain CoAP, `?u=&p=` with `coap-client`.
struct CoapColumn {
    dir: PathBuf,
    anonymous: bool,
}

impl CoapColumn {
    async fn ask_row(&self, row: &Row, n: usize) -> bool {
        let lab = LabHub::start(&self.dir, self.anonymous).await;
        let answer = Self::verdict(&lab, row, n).await;
        within("hub shutdown", lab.hub.shutdown()).await.unwrap();
        answer
    }

    async fn verdict(lab: &LabHub, row: &Row, n: usize) -> bool {
        let client = client_of(row, n);
        let marker = format!("row-{n}");
        match row.ask {
            Ask::Publish(topic) => {
                let mut admin = lab
                    .observe(Some("labadmin"), "lab-admin", "#")
                    .await
                    .expect("labadmin may observe #");
                lab.put(row.user, &client, topic, &marker).await;
                let sync = format!("sync-{n}");
                lab.put(
                    Some("labadmin"),
                    "lab-admin",
                    &format!("lab/sync/{n}"),
                    &sync,
                )
                .await;
                // Notifications of one filter arrive in publish order.
                let mut seen = false;
                loop {
                    let line = within("labadmin notification", admin.lines.recv())
                        .await
                        .expect("the labadmin observer stays up");
                    seen |= line == marker;
                    if line == sync {
                        break seen;
                    }
                }
            }
            Ask::Subscribe(filter, topic) => {
                let Some(mut obs) = lab.observe(row.user, &client, filter).await else {
                    return false;
                };
                let reads = lab.denied("read");
                lab.put(Some("labadmin"), "lab-admin", topic, &marker).await;
                obs.sees(&marker, || lab.denied("read") > reads).await
            }
        }
    }
}

impl Protocol for CoapColumn {
    fn name(&self) -> &str {
        "coap"
    }
    fn ask<'a>(&'a mut self, row: &'a Row, n: usize) -> Verdict<'a> {
        Box::pin(async move { Some(self.ask_row(row, n).await) })
    }
}

async fn coap_columns(dir: PathBuf, anonymous: bool) -> Vec<Box<dyn Protocol>> {
    vec![
        Box::new(AuthModule(polyhub_auth(&dir, anonymous))),
        Box::new(CoapColumn { dir, anonymous }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_over_coap_gets_mosquittos_verdicts_without_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab over CoAP", LAB_ACL, false, &rows, coap_columns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_over_coap_gets_mosquittos_verdicts_with_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab over CoAP", LAB_ACL, true, &rows, coap_columns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_client_id_and_wildcard_rules_over_coap_get_mosquittos_verdicts() {
    compare(
        "Extended ACL over CoAP",
        EXTENDED_ACL,
        true,
        &extended_rows(),
        coap_columns,
    )
    .await;
}

/// A request's response code as coap-client prints it (`4.03`), or `2.xx`
/// when it printed none (it prints codes of errors only).
fn code(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text.split_whitespace()
        .find(|w| w.len() == 4 && w.as_bytes()[1] == b'.' && w.as_bytes()[0].is_ascii_digit())
        .unwrap_or("2.xx")
        .to_owned()
}

/// 4.01 without credentials (anonymous off) or with wrong ones, 4.03 when
/// the ACL refuses, each counted under `polyhub_auth_denied_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_refusals_are_4_01_and_4_03() {
    let files = lab_files(LAB_ACL);
    let lab = LabHub::start(files.path(), false).await;
    let t = "sensor/temperature/data";
    let o = lab.put(Some("user1"), "c1", t, "21").await;
    assert_eq!(code(&o), "2.xx", "{o:?}");
    for (user, password) in [
        (None, None),
        (Some("user1"), Some("wrong")),
        (Some("user117"), Some("x")),
    ] {
        let mut q = String::new();
        if let Some(u) = user {
            q = format!("?u={u}&p={}", password.unwrap());
        }
        let url = format!("{}/ps/{t}{q}", lab.url);
        let o = coap_client(&["-m", "get", &url]).await;
        assert_eq!(code(&o), "4.01", "{user:?}: {o:?}");
    }
    assert_eq!(lab.denied("connect"), 3);
    // user2 may publish only to sensor/temperature/data; everyone reads it.
    let o = lab
        .put(Some("user2"), "c2", "sensor/fanspeed/data", "1")
        .await;
    assert_eq!(code(&o), "4.03", "{o:?}");
    assert_eq!(lab.denied("write"), 1);
    let url = format!("{}/ps/{t}{}", lab.url, credentials(Some("user3"), "c3"));
    let o = coap_client(&["-m", "get", &url]).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "21", "{o:?}");
    // Nobody may observe other/#; user3 may not delete what it may not write.
    let url = format!(
        "{}/ps/{}{}",
        lab.url,
        uri_path("other/#"),
        credentials(Some("user2"), "c2")
    );
    let o = coap_client(&["-m", "get", "-s", "1", &url]).await;
    assert_eq!(code(&o), "4.03", "{o:?}");
    assert_eq!(lab.denied("subscribe"), 1);
    let url = format!("{}/ps/{t}{}", lab.url, credentials(Some("user1"), "c1"));
    let o = coap_client(&["-m", "delete", &url]).await;
    assert_eq!(code(&o), "2.xx", "{o:?}");
    let url = format!("{}/ps/{t}{}", lab.url, credentials(Some("user3"), "c3"));
    let o = coap_client(&["-m", "delete", &url]).await;
    assert_eq!(code(&o), "4.03", "{o:?}");
    within("hub shutdown", lab.hub.shutdown()).await.unwrap();
}

/// With `[auth]`, `/.well-known/core` lists only the topics the peer may
/// read (block by block, its own listing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_known_core_lists_what_the_peer_may_read() {
    let files = lab_files(EXTENDED_ACL);
    let lab = LabHub::start(files.path(), true).await;
    for t in [
        "sensor/fanspeed/data",
        "sensor/private/x",
        "public/news",
        "other/topic",
    ] {
        let o = lab.put(Some("labadmin"), "lab-admin", t, "v").await;
        assert_eq!(code(&o), "2.xx", "{o:?}");
    }
    let listing = |user: Option<&'static str>| {
        let url = format!("{}/.well-known/core{}", lab.url, credentials(user, "c"));
        async move {
            // Blocks of 16 bytes: the listing is walked block by block.
            let o = coap_client(&["-m", "get", "-b", "16", &url]).await;
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        }
    };
    let topics = |links: &str| -> Vec<String> {
        links
            .split(',')
            .filter_map(|l| l.strip_prefix("</ps/"))
            .map(|l| l[..l.find('>').unwrap()].to_owned())
            .collect()
    };
    assert_eq!(
        topics(&listing(Some("user3")).await),
        ["sensor/fanspeed/data"]
    );
    assert_eq!(
        topics(&listing(None).await),
        ["public/news", "sensor/fanspeed/data"]
    );
    assert_eq!(
        topics(&listing(Some("user1")).await),
        ["sensor/fanspeed/data"]
    );
    assert_eq!(
        topics(&listing(Some("labadmin")).await),
        [
            "other/topic",
            "public/news",
            "sensor/fanspeed/data",
            "sensor/private/x"
        ]
    );
    // Leaving topics out is no refusal.
    assert_eq!(lab.denied("read"), 0);
    within("hub shutdown", lab.hub.shutdown()).await.unwrap();
}
