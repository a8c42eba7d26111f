//! `[auth]` over CoAP against real Mosquitto: the access-control lab (see
//! `lab/mod.rs`) asked of a private Mosquitto and of polyhub over plain
//! CoAP (`?u=USER&p=PASSWORD`, libcoap's `coap-client`) and over DTLS with
//! pre-shared keys (`coap-client-openssl -u USER -k KEY coaps://…`), row by
//! row; every verdict must agree. Plus the refusal codes (4.01, 4.03), what
//! `/.well-known/core` lists, and DTLS handshakes with a wrong key or an
//! unknown identity.
//!
//! How polyhub is asked. Each row gets a hub of its own (so that no
//! observer of an earlier row is still registered): a publish is allowed
//! when a privileged observer (`labadmin` observing `#`) is notified of it
//! before a sync message published after it; a subscription is allowed
//! when the row's user can register an observer (Observe: 0) and is then
//! notified of a message on the row's topic, refused when the registration
//! is refused or the hub counts the notification's read denial instead.
//! Client ids: a row's own client id goes in `c=` (`lab-<n>` otherwise).
//! The privileged side (`labadmin`) always speaks plain CoAP.
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

/// The `psk_file` of the lab's users: each one's key is its password.
fn write_psk_file(dir: &Path) -> PathBuf {
    let path = dir.join("psk");
    let lines: String = ["user1", "user2", "user3", "labadmin"]
        .iter()
        .map(|u| format!("{u}:{}\n", password_of(u)))
        .collect();
    std::fs::write(&path, format!("# the lab's devices\n{lines}")).unwrap();
    path
}

/// How a client reaches the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// Plain CoAP, `?u=&p=`.
    Coap,
    /// DTLS-PSK, `-u USER -k KEY` (the key given, or the user's).
    Coaps(Option<&'static str>),
}

/// A hub with `[auth]` over the lab's files and a CoAP adapter with a DTLS
/// server (`psk_file` of [`write_psk_file`]).
struct LabHub {
    hub: polyhub::Hub,
    url: String,
    secure_url: String,
}

impl LabHub {
    async fn start(dir: &Path, anonymous: bool) -> LabHub {
        let (port, secure) = (free_udp_port(), free_udp_port());
        let psk = write_psk_file(dir);
        let hub = start_hub(&format!(
            "[auth]\npassword_file = \"{}\"\nacl_file = \"{}\"\nallow_anonymous = {anonymous}\n\n\
             [[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n\
             dtls_bind = \"127.0.0.1:{secure}\"\npsk_file = \"{}\"\ndtls_handshake_timeout_secs = 2\n",
            dir.join("passwords").display(),
            dir.join("acl").display(),
            psk.display(),
        ))
        .await;
        LabHub {
            hub,
            url: format!("coap://127.0.0.1:{port}"),
            secure_url: format!("coaps://127.0.0.1:{secure}"),
        }
    }

    /// The client program and URL of `topic` for `user`, over `over`.
    fn client(
        &self,
        over: Over,
        user: Option<&str>,
        client: &str,
        topic: &str,
    ) -> (Command, String) {
        match over {
            Over::Coap => (
                Command::new(libcoap("coap-client")),
                format!(
                    "{}/ps/{}{}",
                    self.url,
                    uri_path(topic),
                    credentials(user, client)
                ),
            ),
            Over::Coaps(key) => {
                let mut cmd = Command::new("coap-client-openssl");
                if let Some(u) = user {
                    let key = key.map_or_else(|| password_of(u), str::to_owned);
                    cmd.args(["-u", u, "-k", &key]);
                }
                (
                    cmd,
                    format!("{}/ps/{}?c={client}", self.secure_url, uri_path(topic)),
                )
            }
        }
    }

    fn metrics(&self) -> polyhub_sdk::MetricsSnapshot {
        self.hub
            .snapshot()
            .adapters
            .into_iter()
            .find(|a| a.name == "coap")
            .map(|a| a.metrics)
            .expect("the coap adapter")
    }

    fn denied(&self, action: &str) -> u64 {
        self.metrics().denied(action)
    }

    /// `coap-client -m put` as `user` over plain CoAP; its output.
    async fn put(&self, user: Option<&str>, client: &str, topic: &str, payload: &str) -> Output {
        self.put_over(Over::Coap, user, client, topic, payload)
            .await
    }

    async fn put_over(
        &self,
        over: Over,
        user: Option<&str>,
        client: &str,
        topic: &str,
        payload: &str,
    ) -> Output {
        let (mut cmd, url) = self.client(over, user, client, topic);
        cmd.args(["-B", "8", "-m", "put", "-e", payload, &url]);
        run(cmd).await
    }

    /// A `coap-client -s` observer of `filter` as `user` over plain CoAP;
    /// registered (or refused) when this returns: `None` when refused.
    async fn observe(&self, user: Option<&str>, client: &str, filter: &str) -> Option<Observer> {
        self.observe_over(Over::Coap, user, client, filter).await
    }

    async fn observe_over(
        &self,
        over: Over,
        user: Option<&str>,
        client: &str,
        filter: &str,
    ) -> Option<Observer> {
        let (mut cmd, url) = self.client(over, user, client, filter);
        // A refused DTLS handshake counts as a refused connect.
        let refusals = || self.denied("connect") + self.denied("subscribe");
        let (subs, refused) = (self.hub.snapshot().subscriptions, refusals());
        let o = Observer::start(cmd.args(["-w", "-s", "60", "-B", "60", &url]));
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
    run(cmd).await
}

/// Runs a libcoap client (bounded by its `-B`), returning its output.
async fn run(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    within(
        &what,
        tokio::task::spawn_blocking(move || cmd.output().expect("run a libcoap client")),
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

/// A column of polyhub over CoAP: plain (`?u=&p=`) or DTLS-PSK.
struct CoapColumn {
    dir: PathBuf,
    anonymous: bool,
    over: Over,
}

impl CoapColumn {
    async fn ask_row(&self, row: &Row, n: usize) -> bool {
        let lab = LabHub::start(&self.dir, self.anonymous).await;
        let answer = self.verdict(&lab, row, n).await;
        within("hub shutdown", lab.hub.shutdown()).await.unwrap();
        answer
    }

    async fn verdict(&self, lab: &LabHub, row: &Row, n: usize) -> bool {
        let client = client_of(row, n);
        let marker = format!("row-{n}");
        match row.ask {
            Ask::Publish(topic) => {
                let mut admin = lab
                    .observe(Some("labadmin"), "lab-admin", "#")
                    .await
                    .expect("labadmin may observe #");
                lab.put_over(self.over, row.user, &client, topic, &marker)
                    .await;
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
                let Some(mut obs) = lab.observe_over(self.over, row.user, &client, filter).await
                else {
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
        match self.over {
            Over::Coap => "coap",
            Over::Coaps(_) => "coaps",
        }
    }
    fn ask<'a>(&'a mut self, row: &'a Row, n: usize) -> Verdict<'a> {
        Box::pin(async move {
            if row.user.is_none() && matches!(self.over, Over::Coaps(_)) {
                // A DTLS-PSK handshake needs an identity: a client without
                // a key speaks plain CoAP (the `coap` column's row).
                return None;
            }
            Some(self.ask_row(row, n).await)
        })
    }
}

async fn coap_columns(dir: PathBuf, anonymous: bool) -> Vec<Box<dyn Protocol>> {
    vec![
        Box::new(AuthModule(polyhub_auth(&dir, anonymous))),
        Box::new(CoapColumn {
            dir: dir.clone(),
            anonymous,
            over: Over::Coap,
        }),
        Box::new(CoapColumn {
            dir,
            anonymous,
            over: Over::Coaps(None),
        }),
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

/// Over DTLS, an unknown identity fails the handshake at once and a wrong
/// key when it times out (the hub cannot read the client's Finished), each
/// counted as a refused connect; the right key gets 2.05 and the ACL's
/// 4.03; `u=`/`p=` on coaps is a 4.00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coaps_handshakes_with_a_wrong_key_or_an_unknown_identity_fail_and_are_counted() {
    let files = lab_files(LAB_ACL);
    let lab = LabHub::start(files.path(), false).await;
    let t = "sensor/temperature/data";
    let o = lab.put(Some("labadmin"), "lab-admin", t, "21").await;
    assert_eq!(code(&o), "2.xx", "{o:?}");
    let get = |over: Over, user: &'static str, topic: &'static str| {
        let (mut cmd, url) = lab.client(over, Some(user), "dev1", topic);
        cmd.args(["-B", "3", "-m", "get", &url]);
        run(cmd)
    };
    let o = get(Over::Coaps(None), "user3", t).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "21", "{o:?}");
    let o = lab
        .put_over(
            Over::Coaps(None),
            Some("user3"),
            "dev1",
            "sensor/fanspeed/data",
            "1",
        )
        .await;
    assert_eq!(code(&o), "4.03", "{o:?}");
    assert_eq!(lab.denied("write"), 1);
    assert_eq!(lab.denied("connect"), 0);

    // The wrong key.
    let o = get(Over::Coaps(Some("not-the-key")), "user1", t).await;
    // (libcoap's error lines start with the time of day: "21:49:47".)
    assert!(
        !String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == "21"),
        "{o:?}"
    );
    wait_until("wrong key counted", TIMEOUT, || lab.denied("connect") == 1).await;
    assert_eq!(lab.metrics().rejected("dtls_handshake_timeout"), 1);
    // An identity that is not in psk_file.
    let o = get(Over::Coaps(Some("whatever")), "user117", t).await;
    // (libcoap's error lines start with the time of day: "21:49:47".)
    assert!(
        !String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == "21"),
        "{o:?}"
    );
    wait_until("unknown identity counted", TIMEOUT, || {
        lab.denied("connect") == 2
    })
    .await;
    wait_until("its handshake counted", TIMEOUT, || {
        lab.metrics().rejected("dtls_handshake_failed") == 1
    })
    .await;

    // u= and p= on coaps: the user is the PSK identity.
    let (mut cmd, url) = lab.client(Over::Coaps(None), Some("user1"), "dev1", t);
    cmd.args([
        "-B",
        "3",
        "-m",
        "get",
        &format!("{url}&u=user2&p=user2-secret"),
    ]);
    let o = run(cmd).await;
    assert_eq!(code(&o), "4.00", "{o:?}");
    within("hub shutdown", lab.hub.shutdown()).await.unwrap();
}

/// A handshake that stalls holds its session only until
/// `dtls_handshake_timeout_secs`; beyond `max_dtls_sessions`, new peers are
/// refused and counted. The ClientHello is coap-client-openssl's own,
/// caught on a socket of the test and replayed to the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_dtls_handshakes_time_out_and_sessions_are_bounded() {
    let catcher = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = catcher.local_addr().unwrap().port();
    let mut client = Command::new("coap-client-openssl")
        .args(["-u", "user1", "-k", "k", "-B", "5"])
        .arg(format!("coaps://127.0.0.1:{port}/ps/x"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut hello = vec![0u8; 2048];
    let (n, _) = within("a ClientHello", catcher.recv_from(&mut hello))
        .await
        .unwrap();
    hello.truncate(n);
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(hello[0], 22, "a DTLS handshake record");

    let files = lab_files(LAB_ACL);
    let psk = write_psk_file(files.path());
    let (plain, secure) = (free_udp_port(), free_udp_port());
    let hub = start_hub(&format!(
        "[auth]\npassword_file = \"{}\"\nacl_file = \"{}\"\n\n\
         [[adapters]]\nname = \"coap\"\ntype = \"coap\"\n[adapters.config]\nbind = \"127.0.0.1:{plain}\"\n\
         dtls_bind = \"127.0.0.1:{secure}\"\npsk_file = \"{}\"\nmax_dtls_sessions = 1\ndtls_handshake_timeout_secs = 1\n",
        files.path().join("passwords").display(),
        files.path().join("acl").display(),
        psk.display(),
    ))
    .await;
    let rejected = |reason: &str| {
        hub.snapshot()
            .adapters
            .iter()
            .find(|a| a.name == "coap")
            .map_or(0, |a| a.metrics.rejected(reason))
    };
    let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    first.connect(("127.0.0.1", secure)).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    first.send(&hello).unwrap();
    // The hub answers with a HelloVerifyRequest (a handshake record).
    let mut buf = [0u8; 2048];
    let n = first.recv(&mut buf).unwrap();
    assert!(n > 0 && buf[0] == 22, "{:?}", &buf[..n]);
    // Its session holds the only place: a second peer is refused.
    let second = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    second.send_to(&hello, ("127.0.0.1", secure)).unwrap();
    wait_until("second peer refused", TIMEOUT, || {
        rejected("too_many_sessions") == 1
    })
    .await;
    // The stalled handshake times out, and the place is free again.
    wait_until("stalled handshake dropped", TIMEOUT, || {
        rejected("dtls_handshake_timeout") == 1
    })
    .await;
    let (mut cmd, url) = (
        Command::new("coap-client-openssl"),
        format!("coaps://127.0.0.1:{secure}/ps/sensor/temperature/data"),
    );
    cmd.args(["-u", "user1", "-k", &password_of("user1"), "-B", "5"])
        .args(["-m", "put", "-e", "22", &url]);
    let o = run(cmd).await;
    assert_eq!(code(&o), "2.xx", "{o:?}");
    within("hub shutdown", hub.shutdown()).await.unwrap();
}
