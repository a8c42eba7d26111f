//! The `[admin]` API: each endpoint's shape, paging of topics, clients and
//! subscriptions, publish, `/metrics` and `/health` without an HTTP adapter,
//! and the HTTP adapter's `GET /topics` listing; devices of the embedded
//! MQTT broker (`mosquitto_sub`, `mosquitto_pub -l`) in `/api/clients`.

mod common;
mod mqtt_devices;

use std::time::Duration;

use common::*;
use polyhub_sdk::{Envelope, Topic};
use serde_json::Value;

async fn get(url: &str) -> (u16, Value) {
    let r = within(url, reqwest::get(url)).await.expect("GET");
    let code = r.status().as_u16();
    let body = within(url, r.text()).await.expect("body");
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

async fn post(url: &str, body: &str) -> (u16, Value) {
    let r = within(
        url,
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send(),
    )
    .await
    .expect("POST");
    let code = r.status().as_u16();
    let text = within(url, r.text()).await.expect("body");
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn config(http: u16) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_health_metrics_and_publish() {
    let http = free_tcp_port();
    let hub = start_hub(&config(http)).await;
    let base = format!("http://{}", hub.admin_addr().unwrap());

    let (code, a) = get(&format!("{base}/api/adapters")).await;
    assert_eq!(code, 200);
    assert_eq!(a["hub"], "polyhub");
    let web = a["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "web")
        .unwrap()
        .clone();
    for key in [
        "kind",
        "state",
        "reason",
        "clients",
        "messages_in",
        "messages_out",
        "dropped",
        "errors",
        "reconnects",
        "events",
    ] {
        assert!(web.get(key).is_some(), "no `{key}` in {web}");
    }
    assert_eq!(web["state"], "up");
    assert_eq!(web["kind"], "http");

    let (code, h) = get(&format!("{base}/health")).await;
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["adapters"]["web"], "up");

    // Publish: bad requests are 400 with a JSON error; a good one is 202
    // and becomes the topic's last value, from origin `admin`.
    for bad in [
        "not json",
        r#"{"payload":"x"}"#,
        r#"{"topic":"a/+","payload":"x"}"#,
        r#"{"topic":"a","payload":"x","qos":7}"#,
        r#"{"topic":"a","payload":"x","colour":"red"}"#,
    ] {
        let (code, e) = post(&format!("{base}/api/publish"), bad).await;
        assert_eq!(code, 400, "{bad}: {e}");
        assert!(e["error"].is_string(), "{e}");
    }
    let (code, r) = post(
        &format!("{base}/api/publish"),
        r#"{"topic":"lamp/1","payload":"on","qos":1,"retain":true}"#,
    )
    .await;
    assert_eq!(code, 202, "{r}");
    let lv = hub
        .router()
        .last_value(&Topic::new("lamp/1").unwrap())
        .unwrap();
    assert_eq!(&lv.payload[..], b"on");
    assert!(lv.retain);
    assert_eq!(&*lv.origin.adapter, "admin");

    let r = within("metrics", reqwest::get(format!("{base}/metrics")))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = within("metrics body", r.text()).await.unwrap();
    assert!(
        text.contains(
            "polyhub_messages_in_total{hub=\"polyhub\",adapter=\"admin\",kind=\"admin\"} 1"
        ),
        "{text}"
    );

    let (code, e) = get(&format!("{base}/api/nothing")).await;
    assert_eq!(code, 404);
    assert!(e["error"].as_str().unwrap().contains("/api/topics"), "{e}");

    // The dashboard itself, from the binary.
    let r = within("dashboard", reqwest::get(format!("{base}/")))
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = within("dashboard body", r.text()).await.unwrap();
    assert!(html.contains("EventSource(\"/api/events\")"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the dashboard loads nothing from elsewhere"
    );
    within("shutdown", hub.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_paged_in_order_and_searchable_by_prefix() {
    let http = free_tcp_port();
    let hub = start_hub(&config(http)).await;
    let base = format!("http://{}", hub.admin_addr().unwrap());
    let loader = hub.attach("loader", "test");
    for i in 0..250 {
        let group = if i % 2 == 0 { "even" } else { "odd" };
        let t = Topic::new(&format!("load/{group}/{i:03}")).unwrap();
        within("publish", loader.publish(Envelope::new(t, format!("v{i}"))))
            .await
            .unwrap();
    }
    within(
        "binary",
        loader.publish(Envelope::new(
            Topic::new("bin").unwrap(),
            vec![0xffu8, 0, 1],
        )),
    )
    .await
    .unwrap();

    let mut seen: Vec<String> = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let (code, p) = get(&format!(
            "{base}/api/topics?prefix=load/&limit=100&after={after}"
        ))
        .await;
        assert_eq!(code, 200, "{p}");
        assert_eq!(p["total"], 251);
        let items = p["topics"].as_array().unwrap();
        assert!(items.len() <= 100);
        for t in items {
            for key in [
                "topic",
                "payload",
                "encoding",
                "size",
                "qos",
                "retain",
                "timestamp",
                "origin",
            ] {
                assert!(t.get(key).is_some(), "no `{key}` in {t}");
            }
            seen.push(t["topic"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match p["next"].as_str() {
            Some(n) => {
                assert_eq!(n, seen.last().unwrap());
                after = n.to_owned();
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages are in topic order without repeats");

    let (_, p) = get(&format!("{base}/api/topics?prefix=load/odd/&limit=1000")).await;
    assert_eq!(p["topics"].as_array().unwrap().len(), 125);
    assert!(p["next"].is_null());
    assert_eq!(p["topics"][0]["payload"], "v1");
    assert_eq!(p["topics"][0]["encoding"], "utf8");
    assert_eq!(p["topics"][0]["origin"]["adapter"], "loader");

    let (_, p) = get(&format!("{base}/api/topics?prefix=bin")).await;
    assert_eq!(p["topics"][0]["encoding"], "base64");
    assert_eq!(p["topics"][0]["payload"], "/wAB");

    for bad in ["limit=0", "limit=1001", "limit=many"] {
        let (code, e) = get(&format!("{base}/api/topics?{bad}")).await;
        assert_eq!(code, 400, "{bad}: {e}");
    }

    // The HTTP adapter's own listing: GET /topics, paged the same way.
    let (code, p) = get(&format!(
        "http://127.0.0.1:{http}/topics?prefix=load/even/&limit=100"
    ))
    .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["topics"].as_array().unwrap().len(), 100);
    assert_eq!(p["topics"][0]["topic"], "load/even/000");
    assert_eq!(p["next"], "load/even/198");
    let (_, p) = get(&format!(
        "http://127.0.0.1:{http}/topics?prefix=load/even/&after=load/even/198"
    ))
    .await;
    assert_eq!(p["topics"].as_array().unwrap().len(), 25);
    assert!(p["next"].is_null());
    let (code, _) = get(&format!("http://127.0.0.1:{http}/topics?limit=0")).await;
    assert_eq!(code, 400);
    within("shutdown", hub.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_subscriptions_and_live_ticks() {
    let http = free_tcp_port();
    let hub = start_hub(&config(http)).await;
    let base = format!("http://{}", hub.admin_addr().unwrap());

    // Two SSE clients of the HTTP adapter (reqwest, streaming).
    let mut streams = Vec::new();
    for filter in ["a%2F%23", "b%2F%23"] {
        let r = within(
            "sse",
            reqwest::get(format!("http://127.0.0.1:{http}/events?filter={filter}")),
        )
        .await
        .unwrap();
        streams.push(r);
    }
    wait_until("two clients listed", TIMEOUT, || hub.clients().len() == 2).await;
    let (code, c) = get(&format!("{base}/api/clients?limit=1")).await;
    assert_eq!(code, 200);
    assert_eq!(c["total"], 2);
    let first = &c["clients"][0];
    for key in [
        "id",
        "adapter",
        "protocol",
        "client_id",
        "peer",
        "user",
        "since",
        "messages_in",
        "messages_out",
    ] {
        assert!(first.get(key).is_some(), "no `{key}` in {first}");
    }
    assert_eq!(first["adapter"], "web");
    assert_eq!(first["protocol"], "http-sse");
    assert!(first["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let next = c["next"].as_u64().expect("a next page");
    let (_, c2) = get(&format!("{base}/api/clients?limit=1&after={next}")).await;
    assert_eq!(c2["clients"].as_array().unwrap().len(), 1);
    assert_ne!(c2["clients"][0]["id"], first["id"]);
    assert!(c2["next"].is_null());

    // A message to the first stream counts as out on its client.
    let (code, _) = post(
        &format!("{base}/api/publish"),
        r#"{"topic":"a/x","payload":"1"}"#,
    )
    .await;
    assert_eq!(code, 202);
    // The stream opens with a `: subscribed` comment: skip comments.
    let chunk = within("sse event", async {
        loop {
            let chunk = streams[0].chunk().await.unwrap().unwrap();
            if !chunk.starts_with(b":") {
                return chunk;
            }
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&chunk).contains("a/x"));
    let mut out = 0;
    for _ in 0..100 {
        let (_, c) = get(&format!("{base}/api/clients")).await;
        out = c["clients"][0]["messages_out"].as_u64().unwrap();
        if out == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(out, 1);

    let (code, s) = get(&format!("{base}/api/subscriptions?limit=2")).await;
    assert_eq!(code, 200);
    let total = s["total"].as_u64().unwrap();
    assert!(total >= 3, "{s}"); // two streams and the admin's live feed
    for key in ["id", "adapter", "filters", "include_own", "queued", "depth"] {
        assert!(
            s["subscriptions"][0].get(key).is_some(),
            "no `{key}` in {s}"
        );
    }
    let filters: Vec<String> = {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (_, s) = get(&format!("{base}/api/subscriptions?limit=2&after={after}")).await;
            for x in s["subscriptions"].as_array().unwrap() {
                all.push(x["filters"][0].as_str().unwrap().to_owned());
            }
            match s["next"].as_u64() {
                Some(n) => after = n,
                None => break,
            }
        }
        all
    };
    assert_eq!(filters.len() as u64, total);
    assert!(filters.contains(&"a/#".to_owned()) && filters.contains(&"b/#".to_owned()));

    // Closing a stream deregisters its client.
    streams.pop();
    wait_until("one client left", TIMEOUT, || hub.clients().len() == 1).await;

    // Live: the first tick carries rates, adapters, counts, latest messages.
    let mut ev = within("events", reqwest::get(format!("{base}/api/events")))
        .await
        .unwrap();
    assert!(ev.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut text = String::new();
    within("a tick", async {
        while !text.contains("\n\n") {
            let c = ev.chunk().await.unwrap().expect("stream open");
            text.push_str(&String::from_utf8_lossy(&c));
        }
    })
    .await;
    assert!(text.starts_with("event: tick\n"), "{text}");
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let tick: Value = serde_json::from_str(data).unwrap();
    for key in [
        "hub",
        "sample",
        "adapters",
        "topics",
        "subscriptions",
        "clients",
        "recent",
    ] {
        assert!(tick.get(key).is_some(), "no `{key}` in {tick}");
    }
    assert_eq!(tick["clients"], 1);
    assert_eq!(tick["recent"][0]["topic"], "a/x");
    let (_, r) = get(&format!("{base}/api/rates")).await;
    assert!(!r["samples"].as_array().unwrap().is_empty());
    within("shutdown", hub.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_without_an_http_adapter() {
    let mqtt = free_tcp_port();
    let hub = start_hub(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{mqtt}\"\n"
    ))
    .await;
    let base = format!("http://{}", hub.admin_addr().unwrap());
    let (code, h) = get(&format!("{base}/health")).await;
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["adapters"]["mqtt"], "up");
    let r = within("metrics", reqwest::get(format!("{base}/metrics")))
        .await
        .unwrap();
    let text = within("metrics body", r.text()).await.unwrap();
    assert!(
        text.contains("polyhub_adapter_up{hub=\"polyhub\",adapter=\"mqtt\",state=\"up\"} 1"),
        "{text}"
    );
    within("shutdown", hub.shutdown()).await.unwrap();
}

#[tokio::test]
async fn an_admin_port_in_use_fails_the_start_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let http = free_tcp_port();
    let e = within(
        "start",
        polyhub::start_str(&format!(
            "[admin]\nbind = \"127.0.0.1:{port}\"\n\
             [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{http}\"\n"
        )),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("[admin] cannot listen on 127.0.0.1:{port}")),
        "{e}"
    );
}

fn mqtt_listed(hub: &polyhub::Hub, client_id: &str) -> Option<polyhub_sdk::ClientSnapshot> {
    hub.clients()
        .page(None, 1000)
        .into_iter()
        .find(|c| c.info.client_id.as_deref() == Some(client_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_devices_are_listed_while_connected_with_their_messages() {
    use std::io::Write;

    let mqtt = free_tcp_port();
    let hub = start_hub(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\n\
         listen = \"127.0.0.1:{mqtt}\"\nusers = {{ dev = \"pw\" }}\n"
    ))
    .await;
    let base = format!("http://{}", hub.admin_addr().unwrap());
    let login = ["-u", "dev", "-P", "pw"];
    let mut sub = mqtt_devices::Sub::start(
        mqtt,
        "adm/#",
        &[&login[..], &["-i", "sensor-7", "-V", "5"]].concat(),
    )
    .await;
    // A publisher that stays connected: `mosquitto_pub -l` sends a line of
    // its stdin per message.
    let mut publisher = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt.to_string(),
            "-t",
            "adm/x",
            "-l",
        ])
        .args(["-i", "lamp-3", "-q", "1", "-V", "311"])
        .args(login)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    wait_until("both devices listed", TIMEOUT, || {
        mqtt_listed(&hub, "sensor-7").is_some() && mqtt_listed(&hub, "lamp-3").is_some()
    })
    .await;
    let stdin = publisher.stdin.as_mut().unwrap();
    stdin.write_all(b"one\ntwo\n").unwrap();
    stdin.flush().unwrap();
    for want in ["one", "two"] {
        assert_eq!(sub.next().await.payload, want);
    }
    wait_until("messages counted on both devices", TIMEOUT, || {
        mqtt_listed(&hub, "lamp-3").is_some_and(|c| c.messages_in == 2)
            && mqtt_listed(&hub, "sensor-7").is_some_and(|c| c.messages_out == 2)
    })
    .await;

    let (code, c) = get(&format!("{base}/api/clients")).await;
    assert_eq!(code, 200);
    let listed = c["clients"].as_array().unwrap();
    let by_id = |id: &str| {
        listed
            .iter()
            .find(|x| x["client_id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {c}"))
            .clone()
    };
    let s7 = by_id("sensor-7");
    assert_eq!(
        (&s7["adapter"], &s7["protocol"], &s7["user"]),
        (
            &Value::from("mqtt"),
            &Value::from("mqtt"),
            &Value::from("dev")
        )
    );
    assert!(
        s7["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{s7}"
    );
    assert!(s7["since"].as_u64().is_some_and(|t| t > 0), "{s7}");
    assert_eq!(
        (&s7["messages_in"], &s7["messages_out"]),
        (&Value::from(0), &Value::from(2))
    );
    let l3 = by_id("lamp-3");
    assert_eq!(
        (&l3["messages_in"], &l3["messages_out"]),
        (&Value::from(2), &Value::from(0))
    );

    // Gone from the list when they disconnect: the publisher cleanly (end
    // of its stdin), the subscriber killed.
    drop(publisher.stdin.take());
    let _ = within(
        "mosquitto_pub exits",
        tokio::task::spawn_blocking(move || publisher.wait()),
    )
    .await;
    wait_until("publisher gone", TIMEOUT, || {
        mqtt_listed(&hub, "lamp-3").is_none()
    })
    .await;
    drop(sub);
    wait_until("subscriber gone", TIMEOUT, || {
        mqtt_listed(&hub, "sensor-7").is_none()
    })
    .await;
    let (_, c) = get(&format!("{base}/api/clients")).await;
    assert_eq!(c["total"], 0, "{c}");
    hub.shutdown().await.unwrap();
}

/// `curl` against the admin listener: (status code, headers and body).
async fn curl(args: &[&str]) -> (u16, String) {
    let out = within(
        "curl",
        tokio::process::Command::new("curl")
            .args(["-s", "-i", "--max-time", "10"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line from curl {args:?}: {text}"));
    (code, text)
}

/// With `[auth]`, the admin listener lets in only `admin_users`, with their
/// password-file passwords (HTTP Basic, `curl -u`): 401 with a Basic
/// challenge without or with wrong credentials, 403 for a user not listed,
/// even with `allow_anonymous`; every refusal counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_only_admin_users_reach_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwords");
    for (user, password) in [("ops", "ops-secret"), ("device", "device-secret")] {
        polyhub_passwd(env!("CARGO_BIN_EXE_polyhub"), &pw, user, password);
    }
    let hub = start_hub(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [auth]\npassword_file = \"{}\"\nallow_anonymous = true\nadmin_users = [\"ops\"]\n",
        pw.display()
    ))
    .await;
    let base = format!("http://{}", hub.admin_addr().unwrap());
    let adapters = format!("{base}/api/adapters");

    for (what, args) in [
        ("no credentials", vec![adapters.as_str()]),
        (
            "a wrong password",
            vec!["-u", "ops:wrong", adapters.as_str()],
        ),
        ("an unknown user", vec!["-u", "nobody:x", adapters.as_str()]),
    ] {
        let (code, text) = curl(&args).await;
        assert_eq!(code, 401, "{what}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("www-authenticate: basic realm=\"polyhub admin\""),
            "{what}: {text}"
        );
    }
    // A good password, but not an admin.
    let (code, text) = curl(&["-u", "device:device-secret", &adapters]).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("not one of [auth] admin_users"), "{text}");
    // Nor can it publish, or read the dashboard or metrics.
    for path in ["/", "/metrics", "/health", "/api/topics"] {
        let (code, _) = curl(&["-u", "device:device-secret", &format!("{base}{path}")]).await;
        assert_eq!(code, 403, "{path}");
    }
    let (code, text) = curl(&[
        "-u",
        "device:device-secret",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"topic":"a/b","payload":"x"}"#,
        &format!("{base}/api/publish"),
    ])
    .await;
    assert_eq!(code, 403, "{text}");
    assert!(hub
        .router()
        .last_value(&Topic::new("a/b").unwrap())
        .is_none());

    // The admin gets everything.
    let (code, text) = curl(&["-u", "ops:ops-secret", &adapters]).await;
    assert_eq!(code, 200, "{text}");
    let (code, text) = curl(&[
        "-u",
        "ops:ops-secret",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"topic":"a/b","payload":"from ops"}"#,
        &format!("{base}/api/publish"),
    ])
    .await;
    assert_eq!(code, 202, "{text}");
    wait_until(
        "the admin's publish is stored",
        Duration::from_secs(5),
        || {
            hub.router()
                .last_value(&Topic::new("a/b").unwrap())
                .is_some()
        },
    )
    .await;
    let (code, metrics) = curl(&["-u", "ops:ops-secret", &format!("{base}/metrics")]).await;
    assert_eq!(code, 200, "{metrics}");
    let count = |action: &str| -> u64 {
        let key = format!(
            "polyhub_auth_denied_total{{hub=\"polyhub\",adapter=\"admin\",action=\"{action}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("connect"), 3, "{metrics}");
    assert_eq!(count("admin"), 6, "{metrics}");
    within("shutdown", hub.shutdown()).await.unwrap();
}

/// `[admin] tls`: the dashboard and API over HTTPS (certificates from
/// `examples/secure/make-certs.sh`, paths relative to the config file),
/// trusted by `curl --cacert`; plain HTTP on that port gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/secure/make-certs.sh");
    let out = std::process::Command::new(script)
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("hub.toml");
    std::fs::write(
        &file,
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"certs/server.pem\", key = \"certs/server.key\" }}\n\
             [[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{}\"\n",
            free_tcp_port()
        ),
    )
    .unwrap();
    let config = polyhub::Config::load(&file, &polyhub::Registry::builtin()).unwrap();
    let hub = within("hub start", polyhub::Hub::start(config))
        .await
        .unwrap();
    let port = hub.admin_addr().unwrap().port();
    let ca = dir.path().join("certs/ca.pem");
    let (code, text) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://localhost:{port}/api/adapters"),
    ])
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"hub\":\"polyhub\""), "{text}");
    // Without the CA, curl refuses the certificate; plain HTTP gets no answer.
    let out = within(
        "curl without the CA",
        tokio::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                &format!("https://localhost:{port}/health"),
            ])
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(60),
        "curl should refuse an unknown CA"
    );
    let out = within(
        "plain HTTP to the TLS port",
        tokio::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(format!("http://127.0.0.1:{port}/health"))
            .output(),
    )
    .await
    .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
    within("shutdown", hub.shutdown()).await.unwrap();
}
