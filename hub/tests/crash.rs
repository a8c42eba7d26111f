//! The crash test of `[hub] data_dir`: QoS 1 streams from HTTP (`POST
//! ?qos=1`, 202) and from an MQTT device (paho, PUBACK) into an MQTT
//! persistent-session subscriber on the embedded broker (paho,
//! clean_session = 0) and an AMQP consumer (RabbitMQ queue bound to the
//! hub's exchange, read with pika); the hub is killed with SIGKILL at
//! random points several times and restarted on the same data_dir. Every
//! message the hub acknowledged arrives at both at least once; duplicates
//! are counted and printed.
#![cfg(unix)]

mod common;
mod hub_process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hub_process::spawn_hub;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crash/devices.py")
}

fn config(dir: &Path, mqtt: u16, http: u16, exchange: &str) -> String {
    format!(
        "[hub]\nname = \"crash\"\ndata_dir = \"{}\"\n\
         [[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{mqtt}\"\n\
         [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n\
         [[adapters]]\nname = \"amqp\"\ntype = \"amqp\"\n[adapters.config]\nurl = \"{AMQP_URL}\"\n\
         exchange = \"{exchange}\"\nbindings = []\nforward = [\"crash/#\"]\nqos = 1\n",
        dir.join("data").display()
    )
}

fn device(args: &[&str]) -> Child {
    Command::new("python3")
        .arg(script())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with paho-mqtt and pika (run scripts/test.sh)")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Declares (with pika, a third-party client) a durable queue bound to
/// `exchange` for `crash.#`.
fn bind_queue(exchange: &str, queue: &str) {
    let code = format!(
        "import pika\n\
         c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', 5672))\n\
         ch = c.channel()\n\
         ch.exchange_declare(exchange='{exchange}', exchange_type='topic', durable=True)\n\
         ch.queue_declare(queue='{queue}', durable=True)\n\
         ch.queue_bind(queue='{queue}', exchange='{exchange}', routing_key='crash.#')\n\
         c.close()\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn delete_queue(exchange: &str, queue: &str) {
    let code = format!(
        "import pika\n\
         c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', 5672))\n\
         ch = c.channel()\n\
         ch.queue_delete(queue='{queue}')\n\
         ch.exchange_delete(exchange='{exchange}')\n\
         c.close()\n"
    );
    let _ = Command::new("python3").arg("-c").arg(code).output();
}

/// Counts how often each acknowledged payload arrived.
fn tally(acked: &[String], got: &[String]) -> (usize, usize) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for g in got {
        *seen.entry(g.as_str()).or_default() += 1;
    }
    let lost = acked
        .iter()
        .filter(|a| !seen.contains_key(a.as_str()))
        .count();
    let duplicates = seen.values().map(|n| n - 1).sum();
    (lost, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_no_acknowledged_qos_1_message() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_tcp_port(), free_tcp_port());
    let tag = format!("{}-{}", std::process::id(), http);
    let (exchange, queue) = (format!("crash-{tag}"), format!("crash-{tag}-q"));
    bind_queue(&exchange, &queue);
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, config(dir.path(), mqtt, http, &exchange)).unwrap();
    let p = |name: &str| dir.path().join(name);
    let (pub_stop, sub_stop) = (p("pub.stop"), p("sub.stop"));

    let mut hub = spawn_hub(&file, &p("hub-0.log"));
    wait_until("the hub's ports", Duration::from_secs(30), || {
        service_up(http) && service_up(mqtt)
    })
    .await;
    let port = mqtt.to_string();
    let received = p("sub.out");
    let sub = device(&[
        "sub",
        &port,
        &format!("crash-sub-{tag}"),
        "crash/#",
        received.to_str().unwrap(),
        sub_stop.to_str().unwrap(),
    ]);
    // The session is subscribed once a probe comes through.
    let client = reqwest::Client::new();
    wait_until("the subscriber's session", Duration::from_secs(20), || {
        let c = client.clone();
        tokio::spawn(async move {
            let _ = c
                .post(format!("http://127.0.0.1:{http}/topics/crash/probe"))
                .body("probe")
                .send()
                .await;
        });
        lines(&received).iter().any(|l| l == "probe")
    })
    .await;
    let mqtt_acked = p("mqtt.acked");
    let publisher = device(&[
        "pub",
        &port,
        "crash/mqtt",
        "m",
        mqtt_acked.to_str().unwrap(),
        pub_stop.to_str().unwrap(),
    ]);

    // HTTP: 2 connections posting QoS 1, recording what was answered 202.
    let http_acked = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut posters = Vec::new();
    for w in 0..2 {
        let (client, acked, done) = (client.clone(), http_acked.clone(), done.clone());
        posters.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let payload = format!("h{w}-{i}");
                let r = client
                    .post(format!("http://127.0.0.1:{http}/topics/crash/http?qos=1"))
                    .timeout(Duration::from_secs(2))
                    .body(payload.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => acked.lock().push(payload),
                    // The hub is down or restarting.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                i += 1;
            }
        }));
    }

    let kills = 3;
    let mut seed = u64::from(http) * 2_654_435_761;
    for round in 1..=kills {
        // A random point: after 200 to 1 200 more acknowledged messages.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let more = 200 + (seed % 1_000) as usize;
        let base = http_acked.lock().len() + lines(&mqtt_acked).len();
        wait_until("messages acknowledged", Duration::from_secs(60), || {
            http_acked.lock().len() + lines(&mqtt_acked).len() >= base + more
        })
        .await;
        hub.kill().unwrap();
        let _ = hub.wait();
        hub = spawn_hub(&file, &p(&format!("hub-{round}.log")));
        wait_until("the hub back", Duration::from_secs(30), || {
            service_up(http) && service_up(mqtt)
        })
        .await;
    }
    // A last stretch after the last restart, then stop publishing.
    let base = http_acked.lock().len() + lines(&mqtt_acked).len();
    wait_until(
        "messages after the last restart",
        Duration::from_secs(60),
        || http_acked.lock().len() + lines(&mqtt_acked).len() >= base + 200,
    )
    .await;
    done.store(true, Ordering::Relaxed);
    for t in posters {
        let _ = t.await;
    }
    std::fs::write(&pub_stop, "").unwrap();
    reap(publisher, "the MQTT publisher").await;
    // The subscriber reads on until every acknowledged message is there
    // (or the time is up).
    let mut acked = lines(&mqtt_acked);
    acked.extend(http_acked.lock().iter().cloned());
    let wait = wait_until_or_timeout(Duration::from_secs(60), || {
        tally(&acked, &lines(&received)).0 == 0
    })
    .await;
    std::fs::write(&sub_stop, "").unwrap();
    reap(sub, "the MQTT subscriber").await;
    let amqp_out = p("amqp.out");
    let drain = device(&["amqp", &queue, amqp_out.to_str().unwrap()]);
    reap(drain, "the AMQP reader").await;
    let _ = hub.kill();
    let _ = hub.wait();
    delete_queue(&exchange, &queue);

    let got_mqtt: Vec<String> = lines(&received)
        .into_iter()
        .filter(|l| l != "probe")
        .collect();
    let got_amqp: Vec<String> = lines(&amqp_out)
        .into_iter()
        .filter(|l| l != "probe")
        .collect();
    let (lost_mqtt, dup_mqtt) = tally(&acked, &got_mqtt);
    let (lost_amqp, dup_amqp) = tally(&acked, &got_amqp);
    println!(
        "{kills} kills; acknowledged {} ({} HTTP, {} MQTT); MQTT persistent session: {} delivered, {dup_mqtt} duplicates, {lost_mqtt} lost; AMQP consumer: {} delivered, {dup_amqp} duplicates, {lost_amqp} lost",
        acked.len(),
        http_acked.lock().len(),
        lines(&mqtt_acked).len(),
        got_mqtt.len(),
        got_amqp.len(),
    );
    assert!(wait, "the subscriber did not get everything within 60 s");
    assert_eq!((lost_mqtt, lost_amqp), (0, 0), "acknowledged but lost");
}

/// Waits (at most 30 s) for a device script to exit after its stop file,
/// killing it past that: a device that hangs fails the test, it does not
/// hang it.
async fn reap(mut child: Child, what: &str) {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if tokio::time::Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not stop within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like `wait_until`, but says whether it held instead of panicking.
async fn wait_until_or_timeout(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
