//! Store and forward: the hub runs as a process with a `data_dir`, and QoS 1
//! messages are `POST`ed to it while the peer it forwards them to goes away
//! for 10 s, the hub being killed (`SIGKILL`) and started again in the
//! middle of that outage; every message the hub answered 202 must reach the
//! peer once it is back. The peer is a webhook receiver (an axum server in
//! this test, the webhook's real peer) or a private Mosquitto with a
//! persistent `mosquitto_sub` session (the MQTT adapter's `url` forward). A
//! last test holds a receiver that answers 500 forever and checks that the
//! webhook's queue stays within `[hub] max_queue_bytes`.
#![cfg(unix)]

mod common;
mod hub_process;
mod mqtt_devices;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::*;
use hub_process::wait_http;
use parking_lot::Mutex;

/// What the receiver saw: each body in arrival order, across its restarts.
#[derive(Default)]
struct Received {
    bodies: Mutex<Vec<String>>,
    /// Requests answered (any status).
    hits: AtomicU64,
}

/// The webhook's receiver on a fixed port: stopped by aborting its task,
/// which closes the listener and every connection at once (like a crash).
struct Receiver {
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(port: u16, seen: Arc<Received>, status: StatusCode) -> Receiver {
        let app = axum::Router::new()
            .route(
                "/hook",
                post(
                    move |State(seen): State<Arc<Received>>, body: Bytes| async move {
                        seen.hits.fetch_add(1, Ordering::Relaxed);
                        if status.is_success() {
                            seen.bodies
                                .lock()
                                .push(String::from_utf8_lossy(&body).into_owned());
                        }
                        status
                    },
                ),
            )
            .with_state(seen);
        // The port was just freed by the aborted server: bind until it is ours.
        let listener = within("receiver bind", async {
            loop {
                match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { task }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn config(dir: &Path, http: u16, admin: u16, receiver: u16, max_queue_bytes: u64) -> String {
    format!(
        "[hub]\ndata_dir = \"{}\"\nmax_queue_bytes = {max_queue_bytes}\n\
         [admin]\nbind = \"127.0.0.1:{admin}\"\n\
         [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n\
         webhooks = [{{ filter = \"sf/#\", url = \"http://127.0.0.1:{receiver}/hook\", \
         reconnect_min_ms = 50, reconnect_max_ms = 500, timeout_ms = 2000 }}]\n",
        dir.join("data").display()
    )
}

/// A hub process, killed (`SIGKILL`) when dropped, so that a failing test
/// leaves none behind.
struct HubProcess(Child);

impl HubProcess {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `polyhub run` on `file`, stderr to `log`.
fn spawn_hub(file: &Path, log: &Path) -> HubProcess {
    HubProcess(hub_process::spawn_hub(file, log))
}

/// `GET` a JSON document from the admin API.
async fn admin_json(client: &reqwest::Client, admin: u16, path: &str) -> serde_json::Value {
    let r = within(
        "admin GET",
        client.get(format!("http://127.0.0.1:{admin}{path}")).send(),
    )
    .await
    .unwrap();
    let text = within("admin body", r.text()).await.unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The hub process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One publisher, in order, a QoS 1 `POST /topics/sf/{i % 8}` (body
/// `m{i}`) every few ms; a message the hub did not answer 202 (it is down)
/// is not counted and goes again.
struct Publisher {
    accepted: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Publisher {
    fn start(client: &reqwest::Client, http: u16) -> Publisher {
        let accepted = Arc::new(Mutex::new(Vec::<u64>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (client, accepted, stop) = (client.clone(), accepted.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut refused = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(format!("http://127.0.0.1:{http}/topics/sf/{}?qos=1", i % 8))
                        .body(format!("m{i}"))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 202 => {
                            accepted.lock().push(i);
                            i += 1;
                            tokio::time::sleep(Duration::from_millis(4)).await;
                        }
                        _ => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                refused
            })
        };
        Publisher {
            accepted,
            stop,
            task,
        }
    }

    /// Messages accepted so far.
    fn count(&self) -> usize {
        self.accepted.lock().len()
    }

    /// Stops; the accepted messages and how many tries the hub refused.
    async fn finish(self) -> (Vec<u64>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let refused = within("publisher stop", self.task).await.unwrap();
        let accepted = self.accepted.lock().clone();
        (accepted, refused)
    }
}

/// What arrived (`bodies`, in arrival order) of what was `accepted`.
struct Tally {
    lost: Vec<u64>,
    distinct: usize,
    duplicates: usize,
    /// Whether first arrivals came in publish order.
    in_order: bool,
}

fn tally(accepted: &[u64], bodies: &[String]) -> Tally {
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for b in bodies {
        *times.entry(b.as_str()).or_default() += 1;
    }
    let lost: Vec<u64> = accepted
        .iter()
        .copied()
        .filter(|i| !times.contains_key(format!("m{i}").as_str()))
        .collect();
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    let mut first = Vec::new();
    let mut once = std::collections::HashSet::new();
    for b in bodies {
        if once.insert(b.as_str()) {
            first.push(b[1..].parse::<u64>().unwrap_or(u64::MAX));
        }
    }
    Tally {
        lost,
        distinct: times.len(),
        duplicates,
        in_order: first.windows(2).all(|w| w[0] < w[1]),
    }
}

/// Waits (bounded) until every accepted message is among `bodies`.
async fn wait_all_arrived(accepted: &[u64], bodies: &Mutex<Vec<String>>) {
    let all_arrived = || {
        let got: std::collections::HashSet<String> = bodies.lock().iter().cloned().collect();
        accepted.iter().all(|i| got.contains(&format!("m{i}")))
    };
    // The counts are printed before any assertion, so no panic here.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_arrived() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What [`kill_during_outage`] saw.
struct Outage {
    /// Messages accepted during the 10 s outage.
    during: usize,
    /// Of those, before the kill.
    before_kill: usize,
    /// When the hub was back, from the outage's start.
    restarted_after: Duration,
}

/// The peer just went away: 5 s later the hub is killed (`SIGKILL`) and
/// started again on `file`; returns once 10 s of outage have passed.
async fn kill_during_outage(
    hub: &mut HubProcess,
    file: &Path,
    log: &Path,
    http: u16,
    publisher: &Publisher,
) -> Outage {
    let outage = Instant::now();
    let before_outage = publisher.count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_kill = publisher.count();
    hub.kill();
    *hub = spawn_hub(file, log);
    wait_http(http).await;
    let restarted_after = outage.elapsed();
    wait_until(
        "the publisher goes on after the restart",
        Duration::from_secs(15),
        || publisher.count() > before_kill + 20,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;
    Outage {
        during: publisher.count() - before_outage,
        before_kill: before_kill - before_outage,
        restarted_after,
    }
}

/// The peer is back: a little more traffic, then the publisher stops; the
/// accepted messages and the tries refused.
async fn traffic_after_return(publisher: Publisher) -> (Vec<u64>, u64) {
    let at_return = publisher.count();
    wait_until(
        "traffic after the peer is back",
        Duration::from_secs(15),
        || publisher.count() > at_return + 100,
    )
    .await;
    publisher.finish().await
}

/// Prints what an outage test saw, then asserts: nothing accepted lost,
/// first arrivals in publish order, enough traffic during the outage.
#[allow(clippy::too_many_arguments)]
fn report(
    peer: &str,
    accepted: &[u64],
    during_outage: usize,
    before_kill: usize,
    refused: u64,
    restarted_after: Duration,
    got: &[String],
    queues: &serde_json::Value,
) {
    let t = tally(accepted, got);
    println!(
        "accepted {} (during the 10 s outage {during_outage}, {before_kill} before the kill), \
         not accepted while the hub was down {refused}, hub back {restarted_after:?} into the outage; \
         {peer} got {}, {} distinct, {} duplicates, lost {}, first arrivals in order: {}; \
         queues at the end: {queues}",
        accepted.len(),
        got.len(),
        t.distinct,
        t.duplicates,
        t.lost.len(),
        t.in_order,
    );
    assert!(
        t.lost.is_empty(),
        "accepted but never delivered: {:?}",
        t.lost
    );
    assert!(t.in_order, "first arrivals out of publish order");
    assert!(during_outage > 100, "too little traffic during the outage");
}

/// A hub config: `data_dir`, the admin API, an HTTP adapter and an MQTT
/// adapter that is a client of the broker on `broker`.
fn mqtt_client_config(
    dir: &Path,
    (http, admin, broker): (u16, u16, u16),
    client_id: &str,
    subscribe: &str,
    forward: &str,
) -> std::path::PathBuf {
    let file = dir.join("hub.toml");
    std::fs::write(
        &file,
        format!(
            "[hub]\ndata_dir = \"{}\"\n[admin]\nbind = \"127.0.0.1:{admin}\"\n\
             [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n\
             [[adapters]]\nname = \"broker\"\ntype = \"mqtt\"\n[adapters.config]\n\
             url = \"mqtt://127.0.0.1:{broker}\"\nclient_id = \"{client_id}\"\n\
             subscribe = [\"{subscribe}\"]\nforward = [\"{forward}\"]\n\
             reconnect_min_ms = 50\nreconnect_max_ms = 500\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    file
}

/// A private Mosquitto in `dir/mosquitto` on `port`, with `extra` config lines.
async fn private_mosquitto(dir: &Path, port: u16, extra: &str) -> mqtt_devices::PrivateMosquitto {
    let mosquitto_dir = dir.join("mosquitto");
    std::fs::create_dir(&mosquitto_dir).unwrap();
    mqtt_devices::PrivateMosquitto::start_with(&mosquitto_dir, port, extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_outage_and_a_hub_kill_lose_no_accepted_qos_1_message() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin, port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, config(dir.path(), http, admin, port, 16 << 20)).unwrap();
    let client = reqwest::Client::new();
    let seen = Arc::new(Received::default());

    let mut hub = spawn_hub(&file, &dir.path().join("hub-0.log"));
    wait_http(http).await;
    let mut receiver = Some(Receiver::start(port, seen.clone(), StatusCode::OK).await);
    let publisher = Publisher::start(&client, http);
    let delivered = || seen.bodies.lock().len();

    wait_until(
        "the receiver gets the first messages",
        Duration::from_secs(15),
        || delivered() >= 50,
    )
    .await;
    // The receiver goes away for 10 s; the hub is killed 5 s into that
    // outage and started again while it lasts.
    receiver.take().unwrap().stop().await;
    let log = dir.path().join("hub-1.log");
    let o = kill_during_outage(&mut hub, &file, &log, http, &publisher).await;
    let _receiver = Receiver::start(port, seen.clone(), StatusCode::OK).await;
    let (accepted, refused) = traffic_after_return(publisher).await;
    wait_all_arrived(&accepted, &seen.bodies).await;

    let bodies = seen.bodies.lock().clone();
    let queues = admin_json(&client, admin, "/api/queues").await;
    hub.kill();
    report(
        "receiver",
        &accepted,
        o.during,
        o.before_kill,
        refused,
        o.restarted_after,
        &bodies,
        &queues,
    );
}

/// The MQTT adapter's `url` forward to a private Mosquitto that is down for
/// 10 s (SIGTERM; it keeps its sessions on disk), the hub killed and
/// started again 5 s into the outage. The reader is `mosquitto_sub` with a
/// persistent session, so what Mosquitto accepted while it was away waits
/// for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_and_a_hub_kill_lose_no_accepted_qos_1_message() {
    use mqtt_devices::Sub;

    let dir = tempfile::tempdir().unwrap();
    let (http, admin, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let mut mosquitto = private_mosquitto(dir.path(), broker, "").await;
    let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    // Reads until its mosquitto_sub exits (or for good, if that one
    // reconnects by itself).
    let reader = |sub: Sub| {
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let mut sub = sub;
            loop {
                let m = sub.next_within(Duration::from_secs(3600)).await;
                bodies.lock().push(m.payload);
            }
        })
    };
    let mut reading = reader(Sub::start(broker, "sf/#", &["-c", "-i", "sf-reader"]).await);

    let file = mqtt_client_config(
        dir.path(),
        (http, admin, broker),
        "polyhub-sf",
        "sf-in/#",
        "sf/#",
    );
    let client = reqwest::Client::new();
    let mut hub = spawn_hub(&file, &dir.path().join("hub-0.log"));
    wait_http(http).await;
    let publisher = Publisher::start(&client, http);
    let delivered = || bodies.lock().len();
    wait_until(
        "the reader gets the first messages",
        Duration::from_secs(15),
        || delivered() >= 50,
    )
    .await;

    mosquitto.stop().await;
    let log = dir.path().join("hub-1.log");
    let o = kill_during_outage(&mut hub, &file, &log, http, &publisher).await;
    mosquitto.restart().await;
    if reading.is_finished() {
        reading = reader(Sub::spawn(broker, "sf/#", &["-c", "-i", "sf-reader"]));
    }
    let (accepted, refused) = traffic_after_return(publisher).await;
    wait_all_arrived(&accepted, &bodies).await;

    let got = bodies.lock().clone();
    let queues = admin_json(&client, admin, "/api/queues").await;
    hub.kill();
    reading.abort();
    report(
        "mosquitto_sub",
        &accepted,
        o.during,
        o.before_kill,
        refused,
        o.restarted_after,
        &got,
        &queues,
    );
}

/// The other way: a burst of QoS 1 messages from an external broker into
/// a hub with a `data_dir`. Each is acknowledged to the broker once stored,
/// while the next ones are read; an acknowledger that waited for the event
/// loop (which waited for it) stalled after a few hundred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_an_external_broker_is_stored_and_acknowledged() {
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let (http, admin, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let _mosquitto = private_mosquitto(dir.path(), broker, "").await;
    let file = mqtt_client_config(
        dir.path(),
        (http, admin, broker),
        "polyhub-in",
        "in/#",
        "out/#",
    );
    let mut hub = spawn_hub(&file, &dir.path().join("hub.log"));
    wait_http(http).await;
    let client = reqwest::Client::new();
    wait_until("the MQTT adapter is up", Duration::from_secs(15), || {
        Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{admin}/health")])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"broker\":\"up\""))
    })
    .await;

    let n = 5000;
    let mut pub_ = Command::new("mosquitto_pub")
        .args(["-p", &broker.to_string(), "-q", "1", "-t", "in/burst", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = pub_.stdin.take().unwrap();
        for i in 0..n {
            writeln!(stdin, "m{i}").unwrap();
        }
    }
    within(
        "mosquitto_pub",
        tokio::task::spawn_blocking(move || pub_.wait()),
    )
    .await
    .unwrap()
    .unwrap();
    let taken = || {
        let m = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{admin}/metrics")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        m.lines()
            .find(|l| {
                l.starts_with("polyhub_messages_in_total{") && l.contains("adapter=\"broker\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = taken();
    let last = within(
        "GET the last value",
        client
            .get(format!("http://127.0.0.1:{http}/topics/in/burst"))
            .send(),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    hub.kill();
    assert_eq!(got, n, "messages the hub took from the broker");
    assert_eq!(last, format!("m{}", n - 1));
}

/// An envelope the broker can never take (over the maximum packet size its
/// CONNACK announced) is skipped and counted, not handed out first again
/// after every reconnect: the next message gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_over_the_brokers_maximum_packet_size_is_skipped_and_counted() {
    use mqtt_devices::Sub;

    let dir = tempfile::tempdir().unwrap();
    let (http, admin, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let _mosquitto = private_mosquitto(dir.path(), broker, "max_packet_size 2000").await;
    let mut reader = Sub::start(broker, "sf/#", &[]).await;
    let file = mqtt_client_config(
        dir.path(),
        (http, admin, broker),
        "polyhub-big",
        "in/#",
        "sf/#",
    );
    let mut hub = spawn_hub(&file, &dir.path().join("hub.log"));
    wait_http(http).await;
    let client = reqwest::Client::new();
    let post = |topic: &'static str, body: String| {
        let client = client.clone();
        async move {
            within(
                "POST",
                client
                    .post(format!("http://127.0.0.1:{http}/topics/{topic}?qos=1"))
                    .body(body)
                    .send(),
            )
            .await
            .unwrap()
            .status()
            .as_u16()
        }
    };
    assert_eq!(post("sf/big", "x".repeat(5000)).await, 202);
    assert_eq!(post("sf/small", "after".to_owned()).await, 202);
    let m = reader.next().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("sf/small", "after")
    );
    let adapters = admin_json(&client, admin, "/api/adapters").await;
    let mqtt = adapters["adapters"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "broker"))
        .cloned()
        .unwrap_or_default();
    hub.kill();
    assert_eq!(mqtt["events"]["broker_refused"].as_u64(), Some(1), "{mqtt}");
    assert_eq!(mqtt["reconnects"].as_u64().unwrap_or(0), 0, "{mqtt}");
}

/// A receiver that answers 500 to everything: the webhook retries the head
/// of its queue forever, the queue stays within `max_queue_bytes` (its
/// oldest dropped and counted), and the hub's memory does not follow the
/// traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_forever_keeps_the_queue_within_max_queue_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin, port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let file = dir.path().join("hub.toml");
    let max_queue_bytes: u64 = 1 << 20;
    std::fs::write(
        &file,
        config(dir.path(), http, admin, port, max_queue_bytes),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let seen = Arc::new(Received::default());
    let mut hub = spawn_hub(&file, &dir.path().join("hub.log"));
    wait_http(http).await;
    let _receiver = Receiver::start(port, seen.clone(), StatusCode::INTERNAL_SERVER_ERROR).await;
    let rss_start = rss_kib(hub.id());

    // 16 MiB of QoS 1 payloads in 4 KiB messages, 16 times the bound, from
    // 4 connections.
    let payload = "x".repeat(4096);
    let per_task = 1024u64;
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (client, payload) = (client.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..per_task {
                let r = client
                    .post(format!("http://127.0.0.1:{http}/topics/sf/{w}?qos=1"))
                    .body(payload.clone())
                    .send()
                    .await;
                if matches!(r, Ok(r) if r.status().as_u16() == 202) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += within_for(Duration::from_secs(60), "publishers", t)
            .await
            .unwrap();
    }
    let queues = admin_json(&client, admin, "/api/queues").await;
    let adapters = admin_json(&client, admin, "/api/adapters").await;
    let rss_end = rss_kib(hub.id());
    hub.kill();

    let queue = &queues["queues"][0];
    let held = queue["waiting"].as_u64().unwrap() + queue["in_flight"].as_u64().unwrap();
    let web = adapters["adapters"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "web"))
        .cloned()
        .unwrap_or_default();
    let queue_dropped = web["events"]["queue_dropped"].as_u64().unwrap_or(0);
    let retries = web["events"]["webhook_retries"].as_u64().unwrap_or(0);
    let entry = 4096 + 8 + 96; // payload, topic and the queue's overhead, about
    println!(
        "accepted {accepted} x 4 KiB; queue holds {held} (bound {max_queue_bytes} bytes = about {} entries), \
         queue_dropped {queue_dropped}, receiver hits {}, webhook_retries {retries}; \
         hub RSS {rss_start} KiB at start, {rss_end} KiB after {} MiB of traffic",
        max_queue_bytes / entry,
        seen.hits.load(Ordering::Relaxed),
        accepted * 4 / 1024,
    );
    assert_eq!(accepted, 4 * per_task);
    assert!(
        held * 4096 <= max_queue_bytes,
        "queue past its bound: {queues}"
    );
    assert!(
        held > 0 && queue_dropped >= accepted - held,
        "drops not counted: {adapters}"
    );
    assert!(seen.bodies.lock().is_empty() && seen.hits.load(Ordering::Relaxed) > 1);
    // The hub's memory grows by far less than the traffic (16 MiB).
    assert!(
        rss_end.saturating_sub(rss_start) < 12 * 1024,
        "RSS grew from {rss_start} to {rss_end} KiB"
    );
}
