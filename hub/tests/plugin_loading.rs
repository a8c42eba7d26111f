//! Dynamic plugins end to end: the test-only `testbed` plugin
//! (`tests/plugins/testbed`) is built with cargo in its own target dir,
//! loaded from config, and exercised through an in-process client; libraries
//! that are not plugins, or not this ABI, are refused with clear errors; a
//! panicking plugin is marked failed while the hub runs on.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, within};
use polyhub::{Config, Hub, Registry};
use polyhub_sdk::{AdapterState, Envelope, QoS, Subscription, Topic, TopicFilter};

/// Builds the testbed plugin with `features` and returns a private copy of
/// the library (each variant gets its own file: a loaded library is never
/// unloaded, so a later build must not overwrite it).
fn testbed(features: &str) -> PathBuf {
    plugin_build::build(
        &plugin_build::manifest("hub/tests/plugins/testbed"),
        "libpolyhub_testbed_plugin.so",
        features,
        false,
    )
}

/// Shared with the example test and the benchmark.
#[path = "plugins/build.rs"]
mod plugin_build;

fn filter(f: &str) -> TopicFilter {
    TopicFilter::new(f).unwrap()
}

fn config(text: &str) -> Result<Config, polyhub::ConfigFileError> {
    Config::parse(text, "test.toml", &Registry::new(), None)
}

async fn start(text: &str) -> Hub {
    let config = config(text).unwrap_or_else(|e| panic!("config refused: {e}"));
    within("hub start", Hub::start(config))
        .await
        .unwrap_or_else(|e| panic!("hub failed to start: {e}"))
}

fn relay(name: &str, lib: &Path, extra: &str) -> String {
    format!(
        "[[adapters]]\nname = \"{name}\"\nplugin = \"{}\"\n[adapters.config]\n{extra}\n",
        lib.display()
    )
}

async fn next(sub: &mut Subscription, what: &str) -> Arc<Envelope> {
    within(what, sub.recv())
        .await
        .unwrap_or_else(|| panic!("subscription closed waiting for {what}"))
}

async fn ask(
    client: &polyhub_sdk::AdapterContext,
    sub: &mut Subscription,
    cmd: &str,
    arg: &str,
) -> String {
    let topic = Topic::new(&format!("in/cmd/{cmd}")).unwrap();
    within(
        "publish",
        client.publish(Envelope::new(topic, arg.to_owned())),
    )
    .await
    .unwrap();
    let e = next(sub, cmd).await;
    assert_eq!(e.topic.as_str(), format!("out/{cmd}"));
    String::from_utf8_lossy(&e.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_plugin_relays_envelopes_and_reaches_the_whole_hub_link() {
    let lib = testbed("");
    let hub = start(&format!("[hub]\nname = \"h1\"\n{}", relay("bed", &lib, ""))).await;
    let snap = hub.snapshot();
    assert_eq!(snap.adapters[0].kind, "testbed");
    assert_eq!(snap.adapters[0].state, AdapterState::Up);

    let client = hub.attach("client", "test");
    let mut out = client.subscribe([filter("out/#")]).unwrap();

    // A relayed envelope keeps payload, content type, headers and QoS.
    let e = Envelope::new(Topic::new("in/sensors/t1").unwrap(), &b"\x00\xff21.5"[..])
        .with_content_type("application/octet-stream")
        .with_header("unit", "C")
        .with_qos(QoS::AtLeastOnce);
    within("publish", client.publish(e)).await.unwrap();
    let got = next(&mut out, "relayed envelope").await;
    assert_eq!(got.topic.as_str(), "out/in/sensors/t1");
    assert_eq!(&got.payload[..], b"\x00\xff21.5");
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(got.header("unit"), Some("C"));
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(&*got.origin.adapter, "bed");
    assert_eq!(&*got.origin.protocol, "testbed");

    // Last values, retained values and clearing cross the boundary.
    let lv = Topic::new("probe/lv").unwrap();
    within(
        "publish",
        client.publish(Envelope::new(lv.clone(), "42").with_retain(true)),
    )
    .await
    .unwrap();
    assert_eq!(ask(&client, &mut out, "last", "probe/lv").await, "42");
    assert_eq!(ask(&client, &mut out, "last", "probe/none").await, "none");
    assert_eq!(ask(&client, &mut out, "retained", "probe/#").await, "1");
    assert_eq!(ask(&client, &mut out, "clear", "probe/lv").await, "true");
    assert_eq!(ask(&client, &mut out, "last", "probe/lv").await, "none");

    // The snapshot the plugin sees is the hub's.
    assert_eq!(
        ask(&client, &mut out, "snapshot", "").await,
        "hub=h1 adapters=2 self=up"
    );

    // Filters added and removed by the plugin change what it receives.
    assert_eq!(ask(&client, &mut out, "add", "extra/+").await, "added");
    within(
        "publish",
        client.publish(Envelope::new(Topic::new("extra/x").unwrap(), "e")),
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut out, "extra relay").await.topic.as_str(),
        "out/extra/x"
    );
    assert_eq!(ask(&client, &mut out, "remove", "extra/+").await, "true");

    // Counters the plugin records show up in the hub's snapshot.
    assert_eq!(ask(&client, &mut out, "count", "").await, "counted");
    wait_until("plugin counters reported", Duration::from_secs(5), || {
        let s = hub.snapshot();
        let m = &s.adapters[0].metrics;
        m.errors >= 1 && m.named.iter().any(|(k, v)| k == "probe_count" && *v == 1)
    })
    .await;
    assert!(hub.snapshot().adapters[0].metrics.messages_in >= 8);

    within("shutdown", hub.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_back_pressure_holds_through_a_plugin_with_a_tiny_queue() {
    let lib = testbed("");
    let hub = start(&relay("bed", &lib, "depth = 1")).await;
    let client = hub.attach("client", "test");
    let mut out = client
        .subscribe_with_depth([filter("out/#")], Some(1))
        .unwrap();
    // Far more QoS 1 envelopes than all queues hold together: none may be lost.
    let n = 500;
    let sender = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..n {
                let e = Envelope::new(Topic::new("in/seq").unwrap(), i.to_string())
                    .with_qos(QoS::AtLeastOnce);
                client.publish(e).await.unwrap();
            }
        })
    };
    for i in 0..n {
        let e = next(&mut out, "sequenced envelope").await;
        assert_eq!(String::from_utf8_lossy(&e.payload), i.to_string());
    }
    within("sender", sender).await.unwrap();
    let s = hub.snapshot();
    assert_eq!(s.adapters[0].metrics.dropped, 0);
    within("shutdown", hub.shutdown()).await.unwrap();
}

/// A shared library that surely exists and is not a plugin.
fn system_library() -> PathBuf {
    let candidates = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1",
        "/usr/lib/libz.so.1",
        "/lib64/libz.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libz.so.1 not found in the usual places")
}

fn refusal(path: &Path) -> String {
    let text = relay("bad", path, "");
    config(&text).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn libraries_that_are_not_plugins_are_refused_with_clear_errors() {
    let libz = system_library();
    let e = refusal(&libz);
    assert!(e.contains(&libz.display().to_string()), "{e}");
    assert!(e.contains("adapter \"bad\": key `plugin`"), "{e}");
    assert!(
        e.contains("not a polyhub plugin: no `polyhub_plugin_header` symbol"),
        "{e}"
    );

    let missing = Path::new("/nonexistent/libnothing.so");
    let e = refusal(missing);
    assert!(
        e.contains("/nonexistent/libnothing.so: cannot load the library"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("libfake.so");
    std::fs::write(&text_file, "not an ELF file").unwrap();
    let e = refusal(&text_file);
    assert!(e.contains("libfake.so: cannot load the library"), "{e}");
}

#[test]
fn a_plugin_with_another_abi_major_is_refused_with_both_values() {
    let lib = testbed("wrong-major");
    let e = refusal(&lib);
    assert!(e.contains(&lib.display().to_string()), "{e}");
    assert!(
        e.contains("plugin has ABI major 999, this hub has ABI major 1"),
        "{e}"
    );
}

#[test]
fn a_plugin_with_other_magic_is_refused_with_both_values() {
    let lib = testbed("wrong-magic");
    let e = refusal(&lib);
    assert!(e.contains(&lib.display().to_string()), "{e}");
    assert!(
        e.contains(r#"magic "NOTPLUGN", expected "PLYHUB\x00\x01""#),
        "{e}"
    );
}

#[test]
fn polyhub_check_runs_the_handshake_and_reports_the_refusal() {
    let good = testbed("");
    let bad = testbed("wrong-major");
    let dir = tempfile::tempdir().unwrap();
    let check = |text: String| {
        let file = dir.path().join("hub.toml");
        std::fs::write(&file, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_polyhub"))
            .arg("check")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = check(relay("bed", &good, "mode = \"relay\""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = check(relay("bed", &good, "mod = \"relay\""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("adapter \"bed\": key `config.mod`"),
        "{stderr}"
    );

    let out = check(relay("old", &bad, ""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ABI major 999, this hub has ABI major 1"),
        "{stderr}"
    );
}

#[test]
fn a_plugin_panicking_in_create_is_a_config_error_not_a_crash() {
    let lib = testbed("");
    let e = config(&relay("bed", &lib, "mode = \"panic-in-create\""))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter \"bed\": key `config`"), "{e}");
    assert!(e.contains("panicked while checking this config"), "{e}");
    // The library still serves other adapters.
    assert!(config(&relay("bed", &lib, "")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_panicking_in_run_fails_the_start_and_the_process_runs_on() {
    let lib = testbed("");
    let config = config(&relay("bed", &lib, "mode = \"panic-in-run\"")).unwrap();
    let e = within("hub start", Hub::start(config)).await.unwrap_err();
    let e = e.to_string();
    assert!(e.contains("adapter \"bed\" failed to start"), "{e}");
    assert!(
        e.contains("plugin panicked: testbed: asked to panic in run"),
        "{e}"
    );

    // Same process, same library: a working adapter still runs.
    let hub = start(&relay("bed", &lib, "")).await;
    let client = hub.attach("client", "test");
    let mut out = client.subscribe([filter("out/#")]).unwrap();
    within(
        "publish",
        client.publish(Envelope::new(Topic::new("in/a").unwrap(), "x")),
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut out, "relay after panic").await.topic.as_str(),
        "out/in/a"
    );
    within("shutdown", hub.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_panicking_on_a_message_is_marked_failed_and_the_hub_runs_on() {
    let lib = testbed("");
    let text = format!(
        "{}{}",
        relay(
            "fragile",
            &lib,
            "mode = \"panic-on-message\"\nsubscribe = \"boom/#\""
        ),
        relay("steady", &lib, "")
    );
    let hub = start(&text).await;
    let client = hub.attach("client", "test");
    let mut out = client.subscribe([filter("out/#")]).unwrap();

    within(
        "publish",
        client.publish(Envelope::new(Topic::new("boom/now").unwrap(), "x")),
    )
    .await
    .unwrap();
    wait_until("fragile marked failed", Duration::from_secs(5), || {
        hub.snapshot().adapters[0].state == AdapterState::Failed
    })
    .await;
    let snap = hub.snapshot();
    let fragile = &snap.adapters[0];
    let reason = fragile.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("plugin panicked: testbed: asked to panic on boom/now"),
        "{reason}"
    );
    assert!(fragile.metrics.errors >= 1);
    assert_eq!(snap.adapters[1].state, AdapterState::Up);

    // It receives nothing more: its subscription is gone, publishing on
    // does not reach it, and the other adapter of the same library works.
    wait_until(
        "failed adapter unsubscribed",
        Duration::from_secs(5),
        || hub.snapshot().subscriptions == 2,
    )
    .await;
    let before = hub.snapshot().adapters[0].metrics.messages_out;
    for _ in 0..3 {
        within(
            "publish",
            client.publish(Envelope::new(Topic::new("boom/again").unwrap(), "y")),
        )
        .await
        .unwrap();
    }
    within(
        "publish",
        client.publish(Envelope::new(Topic::new("in/ok").unwrap(), "z")),
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut out, "steady relay").await.topic.as_str(),
        "out/in/ok"
    );
    let after = hub.snapshot();
    assert_eq!(after.adapters[0].metrics.messages_out, before);
    assert_eq!(after.adapters[0].state, AdapterState::Failed);
    within("shutdown", hub.shutdown()).await.unwrap();
}
