//! `[auth]` on the embedded MQTT broker, against real Mosquitto: the lab
//! (see `lab/mod.rs`) asked of a private Mosquitto and of polyhub's broker
//! with the same `mosquitto_pub`/`mosquitto_sub` commands and the same two
//! files, row by row. Also: the CONNACK codes of a refused login at
//! `-V 311` and `-V 5` beside Mosquitto's, a refused SUBSCRIBE's SUBACK and
//! a refused PUBLISH's PUBACK at `-V 5`, the user in `/api/clients`-style
//! client listings, and a SIGHUP-style reload changing what a connected
//! subscriber receives without dropping it.
#![cfg(unix)]

mod common;
mod lab;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use lab::*;

/// A hub whose only adapter is the embedded broker, with `[auth]` on the
/// lab's files.
async fn lab_hub(dir: &Path, anonymous: bool) -> (polyhub::Hub, u16) {
    let port = free_tcp_port();
    let hub = start_hub(&format!(
        "[auth]\npassword_file = \"{}\"\nacl_file = \"{}\"\nallow_anonymous = {anonymous}\n\
         [[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\nlisten = \"127.0.0.1:{port}\"\n",
        dir.join("passwords").display(),
        dir.join("acl").display()
    ))
    .await;
    wait_until("the embedded broker", Duration::from_secs(10), || {
        service_up(port)
    })
    .await;
    (hub, port)
}

/// The `mqtt` column: the embedded broker, asked exactly as Mosquitto is.
struct Embedded {
    _hub: polyhub::Hub,
    broker: MqttBroker,
    admin: Sub,
}

impl Protocol for Embedded {
    fn name(&self) -> &str {
        "mqtt"
    }
    fn ask<'a>(&'a mut self, row: &'a Row, n: usize) -> Verdict<'a> {
        Box::pin(async move { Some(ask_mosquitto(&self.broker, &mut self.admin, row, n).await) })
    }
}

async fn columns(dir: PathBuf, anonymous: bool) -> Vec<Box<dyn Protocol>> {
    let (hub, port) = lab_hub(&dir, anonymous).await;
    let broker = MqttBroker { port };
    let admin = admin_subscriber(&broker).await;
    vec![
        Box::new(AuthModule(polyhub_auth(&dir, anonymous))),
        Box::new(Embedded {
            _hub: hub,
            broker,
            admin,
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_over_the_embedded_broker_without_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab, MQTT", LAB_ACL, false, &rows, columns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_over_the_embedded_broker_with_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab, MQTT", LAB_ACL, true, &rows, columns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_client_id_and_wildcard_rules_over_the_embedded_broker() {
    compare(
        "Extended ACL, MQTT",
        EXTENDED_ACL,
        true,
        &extended_rows(),
        columns,
    )
    .await;
}

/// `mosquitto_pub -d` output and exit status.
async fn pub_debug(port: u16, args: &[&str]) -> (bool, String) {
    let out = within(
        "mosquitto_pub -d",
        tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-d"])
            .args(args)
            .output(),
    )
    .await
    .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A refused login gets the CONNACK Mosquitto sends at 3.1.1 (5, not
/// authorized) and DESIGN's codes at 5 (0x86 bad user name or password,
/// 0x87 not authorized for an anonymous device); a refused PUBLISH is
/// acknowledged with 0x87 at 5 and never delivered; a refused SUBSCRIBE is
/// answered 0x87 (3.1.1: 0x80).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_protocol_codes() {
    let files = lab_files(LAB_ACL);
    let broker = Mosquitto::start(files.path(), false).await;
    let (hub, port) = lab_hub(files.path(), false).await;

    for (what, args) in [
        ("wrong password", vec!["-u", "user1", "-P", "nope"]),
        ("unknown user", vec!["-u", "user117", "-P", "x"]),
        ("anonymous", vec![]),
    ] {
        let mut v311 = vec!["-V", "mqttv311", "-t", "a", "-m", "x"];
        v311.extend(args.iter().copied());
        let (ok_m, text_m) = pub_debug(broker.port, &v311).await;
        let (ok_p, text_p) = pub_debug(port, &v311).await;
        assert!(!ok_m && !ok_p, "{what}: {text_m} / {text_p}");
        assert!(
            text_m.contains("not authorised"),
            "{what}: mosquitto: {text_m}"
        );
        assert!(
            text_p.contains("not authorised"),
            "{what}: polyhub: {text_p}"
        );

        let mut v5 = vec!["-V", "mqttv5", "-t", "a", "-m", "x"];
        v5.extend(args.iter().copied());
        let (ok, text) = pub_debug(port, &v5).await;
        assert!(!ok, "{what}: {text}");
        let expected = if what == "anonymous" {
            "received CONNACK (135)"
        } else {
            "received CONNACK (134)"
        };
        assert!(text.contains(expected), "{what}: {text}");
    }

    // user2 may not publish to sensor/fanspeed/data: PUBACK 0x87 at v5.
    let (_, text) = pub_debug(
        port,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            "user2",
            "-P",
            "user2-secret",
            "-t",
            "sensor/fanspeed/data",
            "-m",
            "x",
        ],
    )
    .await;
    assert!(text.contains("PUBACK"), "{text}");
    assert!(text.contains("RC:135"), "{text}");
    assert!(
        hub.router()
            .last_value(&polyhub_sdk::Topic::new("sensor/fanspeed/data").unwrap())
            .is_none(),
        "a refused publish reached the hub"
    );

    // user1 may not read other/#: SUBACK 0x87 (v5) / 0x80 (3.1.1).
    for (version, code) in [("mqttv5", "135"), ("mqttv311", "128")] {
        let out = within(
            "mosquitto_sub",
            tokio::process::Command::new("mosquitto_sub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-d",
                    "-V",
                    version,
                ])
                .args(["-u", "user1", "-P", "user1-secret", "-t", "other/#", "-E"])
                .output(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("SUBACK"), "{version}: {text}");
        assert!(
            text.contains(&format!("Subscribed (mid: 1): {code}")),
            "{version}: {text}"
        );
    }

    // The refusals are counted.
    let snap = hub.snapshot();
    let mqtt = snap.adapters.iter().find(|a| a.name == "mqtt").unwrap();
    let denied = |action: &str| {
        mqtt.metrics
            .denied
            .iter()
            .find(|(a, _)| a == action)
            .map_or(0, |(_, n)| *n)
    };
    assert!(denied("connect") >= 6, "{:?}", mqtt.metrics.denied);
    assert!(denied("write") >= 1, "{:?}", mqtt.metrics.denied);
    assert!(denied("subscribe") >= 2, "{:?}", mqtt.metrics.denied);
    within("shutdown", hub.shutdown()).await.unwrap();
}

/// A connected subscriber keeps its connection across a reload, and the new
/// rules decide what it receives from then on; the client listing shows its
/// user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_what_a_connected_subscriber_receives() {
    let files = lab_files(LAB_ACL);
    let (hub, port) = lab_hub(files.path(), false).await;
    let broker = MqttBroker { port };
    let mut sub = broker.subscribe(
        Some("user3"),
        "watcher",
        &["sensor/#", "lab/sentinel/watcher"],
    );
    // Ready once its sentinel comes through.
    let mut k = 0;
    loop {
        k += 1;
        assert!(
            broker
                .publish(
                    Some("labadmin"),
                    "p",
                    "lab/sentinel/watcher",
                    &format!("r{k}")
                )
                .await
        );
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.rx.recv()).await {
            break;
        }
        assert!(k < 50, "subscriber never ready");
    }
    let listed = hub
        .clients()
        .page(None, 1000)
        .into_iter()
        .find(|c| c.info.client_id.as_deref() == Some("watcher"))
        .expect("the subscriber is listed");
    assert_eq!(listed.info.user.as_deref(), Some("user3"));

    // sensor/+/data is readable by everyone; sensor/x/other is not.
    assert!(
        broker
            .publish(Some("labadmin"), "p", "sensor/fan/data", "one")
            .await
    );
    assert!(
        broker
            .publish(Some("labadmin"), "p", "sensor/x/other", "hidden")
            .await
    );
    assert!(
        broker
            .publish(Some("labadmin"), "p", "lab/sentinel/watcher", "d1")
            .await
    );
    let seen = sub.lines_until("lab/sentinel/watcher d1").await.unwrap();
    assert!(seen.contains(&"sensor/fan/data one".to_owned()), "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("hidden")), "{seen:?}");

    // New rules: user3 may read all of sensor/#, but no longer sensor/+/data.
    std::fs::write(
        files.path().join("acl"),
        format!("user user3\ntopic read sensor/x/#\n{TEST_RULES}"),
    )
    .unwrap();
    let summary = hub.reload_auth().await.unwrap().unwrap();
    assert!(summary.acl_users >= 2);
    assert!(
        broker
            .publish(Some("labadmin"), "p", "sensor/fan/data", "two")
            .await
    );
    assert!(
        broker
            .publish(Some("labadmin"), "p", "sensor/x/other", "now-visible")
            .await
    );
    assert!(
        broker
            .publish(Some("labadmin"), "p", "lab/sentinel/watcher", "d2")
            .await
    );
    let seen = sub.lines_until("lab/sentinel/watcher d2").await.unwrap();
    assert!(
        seen.contains(&"sensor/x/other now-visible".to_owned()),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|l| l.contains("two")), "{seen:?}");
    // Still the same connection.
    assert!(sub.child.try_wait().unwrap().is_none());
    within("shutdown", hub.shutdown()).await.unwrap();
}
