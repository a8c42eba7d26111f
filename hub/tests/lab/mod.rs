//! The access-control lab (`ACL-LAB` in the docs: users `user1`…`user3`
//! in a password file, an ACL with `pattern`, `%u`, `%c`, `deny`), shared
//! by the tests that ask it: real Mosquitto started with the two files
//! gives each row's verdict, and every [`Protocol`] column (polyhub's
//! `Auth` module, polyhub over each protocol) must give the same.
//!
//! How Mosquitto is asked. A publish is allowed when a privileged
//! subscriber (`labadmin`, `topic readwrite #`) receives it before a sync
//! message published after it. A subscription is allowed for a topic when
//! the subscriber receives a message published there before a sentinel on
//! `lab/sentinel/<client id>`, which a test-only `pattern read
//! lab/sentinel/%c` lets every client read (Mosquitto grants every SUBACK;
//! its read check is on each delivered message). Those two additions touch
//! no topic of the rows.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{self, free_tcp_port, wait_until, within};
use polyhub::auth::{Auth, AuthSettings};
use polyhub_sdk::{Action, Identity};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub const LAB_ACL: &str = "\
pattern read sensor/+/data
pattern write sensor/%u/+/data
user user1
topic readwrite sensor/+/data
user user2
topic write sensor/temperature/data
";

/// The lab's rules plus `deny`, `%c`, `#` and anonymous (pre-`user`) rules.
pub const EXTENDED_ACL: &str = "\
# Anonymous clients: before the first `user` line.
topic read public/#
pattern read sensor/+/data
pattern write sensor/%u/+/data
pattern readwrite devices/%c/#
pattern deny sensor/blocked/data
user user1
topic readwrite sensor/+/data
topic deny sensor/secret/data
user user2
topic write sensor/temperature/data
user user3
topic read sensor/#
topic deny sensor/private/#
";

/// The test's extra rules (see the module doc).
pub const TEST_RULES: &str = "pattern read lab/sentinel/%c\nuser labadmin\ntopic readwrite #\n";

pub fn password_of(user: &str) -> String {
    format!("{user}-secret")
}

/// A private Mosquitto on a free port.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    broker: MqttBroker,
}

/// Any MQTT broker on 127.0.0.1:`port` (a private Mosquitto, or polyhub's
/// embedded broker), asked with `mosquitto_pub` and `mosquitto_sub`.
pub struct MqttBroker {
    pub port: u16,
}

impl std::ops::Deref for Mosquitto {
    type Target = MqttBroker;
    fn deref(&self) -> &MqttBroker {
        &self.broker
    }
}

impl Mosquitto {
    pub async fn start(dir: &Path, anonymous: bool) -> Mosquitto {
        let port = free_tcp_port();
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous {anonymous}\npassword_file {}\nacl_file {}\npersistence false\nuser root\nlog_dest stderr\n",
                dir.join("passwords").display(),
                dir.join("acl").display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto (Debian package `mosquitto`) must be installed");
        wait_until(
            "private mosquitto listening",
            Duration::from_secs(10),
            || common::service_up(port),
        )
        .await;
        Mosquitto {
            child,
            port,
            broker: MqttBroker { port },
        }
    }
}

impl MqttBroker {
    pub fn credentials(user: Option<&str>) -> Vec<String> {
        match user {
            Some(u) => vec!["-u".into(), u.into(), "-P".into(), password_of(u)],
            None => Vec::new(),
        }
    }

    /// `mosquitto_pub … -q 1`; whether it connected and got its PUBACK.
    pub async fn publish(
        &self,
        user: Option<&str>,
        client: &str,
        topic: &str,
        payload: &str,
    ) -> bool {
        let out = within(
            "mosquitto_pub",
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q", "1"])
                .args(["-i", client, "-t", topic, "-m", payload])
                .args(Self::credentials(user))
                .output(),
        )
        .await
        .unwrap();
        out.status.success()
    }

    /// `mosquitto_sub -v -q 1` on `filters`, its lines on a channel.
    pub fn subscribe(&self, user: Option<&str>, client: &str, filters: &[&str]) -> Sub {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-q",
            "1",
            "-v",
        ])
        .args(["-i", client])
        .args(Self::credentials(user));
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sub { child, rx }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub struct Sub {
    pub child: Child,
    pub rx: mpsc::UnboundedReceiver<String>,
}

impl Sub {
    /// Lines until one equal to `last` (included); `None` if the process
    /// ended first.
    pub async fn lines_until(&mut self, last: &str) -> Option<Vec<String>> {
        let mut seen = Vec::new();
        loop {
            let line = within(&format!("line `{last}`"), self.rx.recv()).await?;
            let done = line == last;
            seen.push(line);
            if done {
                return Some(seen);
            }
        }
    }
}

/// What a row asks.
#[derive(Debug, Clone)]
pub enum Ask {
    Publish(&'static str),
    /// Subscribe to the filter; is a message on the topic delivered?
    Subscribe(&'static str, &'static str),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub user: Option<&'static str>,
    /// Client id (for `%c`); `None`: one made up per row.
    pub client: Option<&'static str>,
    pub ask: Ask,
    /// The lab sheet's answer, for the lab's own rows.
    pub expected: Option<bool>,
}

pub fn publish(user: Option<&'static str>, topic: &'static str) -> Row {
    Row {
        user,
        client: None,
        ask: Ask::Publish(topic),
        expected: None,
    }
}

pub fn subscribe(user: Option<&'static str>, filter: &'static str, topic: &'static str) -> Row {
    Row {
        user,
        client: None,
        ask: Ask::Subscribe(filter, topic),
        expected: None,
    }
}

pub fn expect(mut row: Row, allowed: bool) -> Row {
    row.expected = Some(allowed);
    row
}

pub fn as_client(mut row: Row, client: &'static str) -> Row {
    row.client = Some(client);
    row
}

/// The ACL-LAB table, in its order.
pub fn lab_rows() -> Vec<Row> {
    let (u1, u2, u3, u117) = (Some("user1"), Some("user2"), Some("user3"), Some("user117"));
    let t = "sensor/temperature/data";
    let f = "sensor/fanspeed/data";
    vec![
        expect(subscribe(u1, t, t), true),
        expect(subscribe(u2, t, t), true),
        expect(subscribe(u3, t, t), true),
        expect(subscribe(u117, t, t), false),
        expect(publish(u1, f), true),
        expect(subscribe(u1, f, f), true),
        expect(publish(u2, f), false),
        expect(subscribe(u2, f, f), true),
        expect(publish(u3, f), false),
        expect(subscribe(u3, f, f), true),
        expect(publish(u2, t), true),
        expect(publish(u1, "sensor/user1/temperature/data"), true),
        expect(publish(u2, "sensor/user2/temperature/data"), true),
        expect(publish(u3, "sensor/user3/temperature/data"), true),
        expect(publish(u2, "sensor/user1/temperature/data"), false),
        // The sheet's contradiction: rule 2 lets user1 publish here.
        publish(u1, t),
    ]
}

/// The anonymous client's rows (Mosquitto decides what they get).
pub fn anonymous_rows() -> Vec<Row> {
    vec![
        subscribe(None, "sensor/temperature/data", "sensor/temperature/data"),
        publish(None, "sensor/temperature/data"),
        publish(None, "sensor/%u/temperature/data"),
        subscribe(None, "sensor/#", "sensor/fanspeed/data"),
    ]
}

pub fn extended_rows() -> Vec<Row> {
    let (u1, u2, u3) = (Some("user1"), Some("user2"), Some("user3"));
    vec![
        // `deny` wins over the user's readwrite rule and over patterns.
        publish(u1, "sensor/secret/data"),
        subscribe(u1, "sensor/secret/data", "sensor/secret/data"),
        publish(u1, "sensor/blocked/data"),
        subscribe(u2, "sensor/blocked/data", "sensor/blocked/data"),
        subscribe(u1, "sensor/blocked/data", "sensor/blocked/data"),
        // `%c`: a client's own device tree only.
        as_client(publish(u2, "devices/dev42/state"), "dev42"),
        as_client(publish(u2, "devices/dev43/state"), "dev42"),
        as_client(
            subscribe(u2, "devices/dev42/#", "devices/dev42/cmd"),
            "dev42",
        ),
        as_client(publish(None, "devices/anon7/state"), "anon7"),
        // A client id with `+` cannot use patterns, only its own rules.
        as_client(publish(u2, "sensor/user2/temperature/data"), "a+b"),
        as_client(publish(u1, "sensor/fanspeed/data"), "a+b"),
        // `sensor/#`: the subscription, then each delivered topic's read check.
        subscribe(u3, "sensor/#", "sensor/fanspeed/data"),
        subscribe(u3, "sensor/#", "sensor/private/x"),
        subscribe(u3, "sensor/#", "sensor/a/b/c"),
        subscribe(u2, "sensor/#", "sensor/fanspeed/data"),
        subscribe(u2, "sensor/#", "sensor/a/b/c"),
        // `#`: everything the user may read, nothing else.
        subscribe(u1, "#", "sensor/temperature/data"),
        subscribe(u1, "#", "other/topic"),
        subscribe(u2, "other/#", "other/topic"),
        subscribe(u1, "+/temperature/data", "sensor/temperature/data"),
        // Rules before the first `user` line: anonymous clients only.
        subscribe(None, "public/#", "public/news"),
        publish(None, "public/news"),
        subscribe(u1, "public/news", "public/news"),
        subscribe(None, "sensor/+/data", "sensor/fanspeed/data"),
        publish(None, "sensor/user1/temperature/data"),
    ]
}

/// A directory with the password file and `acl` (the rules plus the test's).
pub fn lab_files(acl: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwords");
    // Half written by polyhub, half by Mosquitto's own tool.
    for user in ["user1", "user2"] {
        polyhub_passwd(env!("CARGO_BIN_EXE_polyhub"), &pw, user, &password_of(user));
    }
    for user in ["user3", "labadmin"] {
        mosquitto_passwd(&pw, &[], user, &password_of(user));
    }
    std::fs::write(dir.path().join("acl"), format!("{acl}{TEST_RULES}")).unwrap();
    dir
}

pub use crate::common::polyhub_passwd;

pub fn mosquitto_passwd(file: &Path, options: &[&str], user: &str, password: &str) {
    let mut cmd = std::process::Command::new("mosquitto_passwd");
    cmd.args(options);
    if !file.exists() {
        cmd.arg("-c");
    }
    let out = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .output()
        .expect("mosquitto_passwd (Debian package `mosquitto`) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn polyhub_auth(dir: &Path, anonymous: bool) -> Auth {
    Auth::load(AuthSettings {
        password_file: Some(dir.join("passwords")),
        acl_file: Some(dir.join("acl")),
        allow_anonymous: anonymous,
    })
    .unwrap()
}

/// Mosquitto's verdict on one row.
pub async fn ask_mosquitto(broker: &MqttBroker, admin: &mut Sub, row: &Row, n: usize) -> bool {
    let client = row.client.map_or_else(|| format!("lab-{n}"), str::to_owned);
    let marker = format!("row-{n}");
    match row.ask {
        Ask::Publish(topic) => {
            // Refused at CONNECT: not allowed. A refused publish is still
            // acknowledged (and dropped) by Mosquitto.
            if !broker.publish(row.user, &client, topic, &marker).await {
                return false;
            }
            let sync = format!("lab/sync/{n}");
            assert!(
                broker
                    .publish(Some("labadmin"), "lab-admin-pub", &sync, "sync")
                    .await
            );
            let lines = admin
                .lines_until(&format!("{sync} sync"))
                .await
                .expect("the admin subscriber stays up");
            lines.contains(&format!("{topic} {marker}"))
        }
        Ask::Subscribe(filter, topic) => {
            let sentinel = format!("lab/sentinel/{client}");
            let mut sub = broker.subscribe(row.user, &client, &[filter, &sentinel]);
            // Subscribed once a sentinel comes through; a refused CONNECT
            // ends the process instead.
            let mut k = 0;
            let ready = loop {
                k += 1;
                assert!(
                    broker
                        .publish(
                            Some("labadmin"),
                            "lab-admin-pub",
                            &sentinel,
                            &format!("ready-{k}")
                        )
                        .await
                );
                match tokio::time::timeout(Duration::from_millis(200), sub.rx.recv()).await {
                    Ok(Some(line)) if line.starts_with(&sentinel) => break true,
                    Ok(Some(_)) => {}
                    Ok(None) => break false,
                    Err(_) => assert!(k < 50, "subscriber {client} never became ready"),
                }
            };
            if !ready {
                let status = within("mosquitto_sub exit", sub.child.wait())
                    .await
                    .unwrap();
                assert!(!status.success(), "mosquitto_sub ended without error");
                return false;
            }
            assert!(
                broker
                    .publish(Some("labadmin"), "lab-admin-pub", topic, &marker)
                    .await
            );
            assert!(
                broker
                    .publish(Some("labadmin"), "lab-admin-pub", &sentinel, "done")
                    .await
            );
            let lines = sub
                .lines_until(&format!("{sentinel} done"))
                .await
                .expect("subscriber stays up");
            let _ = sub.child.start_kill();
            lines.contains(&format!("{topic} {marker}"))
        }
    }
}

/// polyhub's verdict on one row.
pub fn ask_polyhub(auth: &Auth, row: &Row, n: usize) -> bool {
    let client = row.client.map_or_else(|| format!("lab-{n}"), str::to_owned);
    let password = row.user.map(password_of);
    let Ok(identity) = auth.authenticate(row.user, password.as_deref().map(str::as_bytes)) else {
        return false;
    };
    assert_eq!(
        identity,
        row.user.map_or_else(Identity::anonymous, Identity::user)
    );
    match row.ask {
        Ask::Publish(topic) => auth
            .authorize(&identity, &client, topic, Action::Write)
            .is_ok(),
        Ask::Subscribe(filter, topic) => {
            auth.authorize(&identity, &client, filter, Action::Subscribe)
                .is_ok()
                && auth
                    .authorize(&identity, &client, topic, Action::Read)
                    .is_ok()
        }
    }
}

pub fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "refused"
    }
}

/// A row's verdict from one column; `None` when the row does not apply
/// to that protocol (printed `n/a`, not compared).
pub type Verdict<'a> = Pin<Box<dyn Future<Output = Option<bool>> + Send + 'a>>;

/// One column of the table: polyhub asked over one protocol (or its `Auth`
/// module directly). It gets the lab's directory (`passwords`, `acl`, with
/// the test's rules: `labadmin` may read and write everything, every
/// client may read `lab/sentinel/<client id>`) and `allow_anonymous`.
pub trait Protocol: Send {
    /// The column's heading.
    fn name(&self) -> &str;
    /// Whether the row's user (password [`password_of`]), connecting as
    /// the row's client id (`lab-<n>` when the row has none), may do what
    /// the row asks: a publish arrives at a privileged subscriber; a
    /// subscription is made and a message on the row's topic is delivered.
    fn ask<'a>(&'a mut self, row: &'a Row, n: usize) -> Verdict<'a>;
}

/// The client id a row connects with.
pub fn client_of(row: &Row, n: usize) -> String {
    row.client.map_or_else(|| format!("lab-{n}"), str::to_owned)
}

/// The column of polyhub's `Auth` module, asked in process.
pub struct AuthModule(pub Auth);

impl Protocol for AuthModule {
    fn name(&self) -> &str {
        "auth"
    }
    fn ask<'a>(&'a mut self, row: &'a Row, n: usize) -> Verdict<'a> {
        Box::pin(async move { Some(ask_polyhub(&self.0, row, n)) })
    }
}

/// `labadmin` subscribed to `#` on `broker`, once it sees its own probe.
pub async fn admin_subscriber(broker: &MqttBroker) -> Sub {
    let mut admin = broker.subscribe(Some("labadmin"), "lab-admin-sub", &["#"]);
    let mut k = 0;
    loop {
        k += 1;
        let probe = format!("lab/probe/{k}");
        assert!(
            broker
                .publish(Some("labadmin"), "lab-admin-pub", &probe, "probe")
                .await
        );
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), admin.rx.recv()).await
        {
            return admin;
        }
        assert!(k < 50, "admin subscriber never became ready");
    }
}

/// Asks Mosquitto and every column about every row, prints the table, and
/// fails on any disagreement (or on a lab row whose sheet answer Mosquitto
/// does not give). `columns` builds the columns from the lab's directory
/// and `allow_anonymous`.
pub async fn compare<F, Fut>(title: &str, acl: &str, anonymous: bool, rows: &[Row], columns: F)
where
    F: FnOnce(PathBuf, bool) -> Fut,
    Fut: Future<Output = Vec<Box<dyn Protocol>>>,
{
    let files = lab_files(acl);
    let broker = Mosquitto::start(files.path(), anonymous).await;
    let mut columns = columns(files.path().to_owned(), anonymous).await;
    let mut admin = admin_subscriber(&broker).await;

    use std::fmt::Write;
    let mut table = format!(
        "\n{title} (allow_anonymous {anonymous})\n{:<46} {:<13} {:<10} {:<9}",
        "topic", "user", "action", "mosquitto"
    );
    for c in &columns {
        let _ = write!(table, " {:<9}", c.name());
    }
    table.push('\n');
    let mut problems = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let n = i + 1;
        let mosquitto = ask_mosquitto(&broker, &mut admin, row, n).await;
        let (topic, action) = match row.ask {
            Ask::Publish(t) => (t.to_owned(), "publish"),
            Ask::Subscribe(f, t) if f == t => (t.to_owned(), "subscribe"),
            Ask::Subscribe(f, t) => (format!("{f} -> {t}"), "subscribe"),
        };
        let user = match (row.user, row.client) {
            (u, Some(c)) => format!("{}/{c}", u.unwrap_or("(anon)")),
            (u, None) => u.unwrap_or("(anon)").to_owned(),
        };
        let _ = write!(
            table,
            "{topic:<46} {user:<13} {action:<10} {:<9}",
            verdict(mosquitto)
        );
        let mut differs = false;
        for c in columns.iter_mut() {
            let got = c.ask(row, n).await;
            let _ = write!(table, " {:<9}", got.map_or("n/a", verdict));
            if let Some(got) = got {
                if got != mosquitto {
                    differs = true;
                    problems.push(format!(
                        "row {n} ({topic}, {user}, {action}): mosquitto {}, polyhub over {} {}",
                        verdict(mosquitto),
                        c.name(),
                        verdict(got)
                    ));
                }
            }
        }
        let _ = writeln!(table, "{}", if differs { "  <-- differs" } else { "" });
        if let Some(expected) = row.expected {
            if expected != mosquitto {
                problems.push(format!(
                    "row {n} ({topic}, {user}, {action}): the lab sheet says {}, mosquitto {}",
                    verdict(expected),
                    verdict(mosquitto)
                ));
            }
        }
    }
    // One print, so that tables of tests run side by side do not mix.
    print!("{table}");
    assert!(problems.is_empty(), "{title}:\n  {}", problems.join("\n  "));
}
