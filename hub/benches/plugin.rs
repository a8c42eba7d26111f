//! Envelopes per second through a loaded plugin versus the same adapter
//! built in: the `testbed` relay (hub/tests/plugins/testbed/src/testbed.rs)
//! is compiled into this benchmark and, from the same source, built as a
//! plugin library in release mode. An in-process client publishes QoS 1
//! envelopes to `in/…`; the relay republishes each to `out/…`, where the
//! client receives it — two boundary crossings per envelope for the plugin
//! (hub → plugin delivery, plugin → hub publish).
//!
//! Run: `cargo bench -p polyhub --no-default-features --bench plugin`.
//! Prints envelopes/s for each and the ratio plugin / built-in (target ≥ 0.9).

use std::time::{Duration, Instant};

use polyhub::{Config, Hub, Registry};
use polyhub_sdk::{Envelope, QoS, Topic, TopicFilter};

#[path = "../tests/plugins/testbed/src/testbed.rs"]
#[allow(dead_code)]
mod testbed;

#[path = "../tests/plugins/build.rs"]
mod plugin_build;

const ENVELOPES: usize = 100_000;
const ROUNDS: usize = 5;

async fn run_once(config_text: &str, registry: &Registry) -> f64 {
    let config = Config::parse(config_text, "bench.toml", registry, None).expect("config");
    let hub = Hub::start(config).await.expect("hub starts");
    let client = hub.attach("client", "bench");
    let mut out = client
        .subscribe_with_depth([TopicFilter::new("out/#").unwrap()], Some(1024))
        .unwrap();
    let topic = Topic::new("in/bench/t1").unwrap();
    let payload = polyhub_sdk::Bytes::from_static(b"0123456789abcdef0123456789abcdef");
    let start = Instant::now();
    let sender = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..ENVELOPES {
                let e = Envelope::new(topic.clone(), payload.clone()).with_qos(QoS::AtLeastOnce);
                client.publish(e).await.expect("publish");
            }
        })
    };
    for i in 0..ENVELOPES {
        match tokio::time::timeout(Duration::from_secs(10), out.recv()).await {
            Ok(Some(_)) => {}
            other => panic!("envelope {i} missing: {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    sender.await.expect("sender");
    drop(out);
    hub.shutdown().await.expect("shutdown");
    ENVELOPES as f64 / elapsed.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful: only run the measurement under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("plugin benchmark: run with `cargo bench --bench plugin`");
        return;
    }
    eprintln!("building the testbed plugin (release)...");
    let lib = plugin_build::build(
        &plugin_build::manifest("hub/tests/plugins/testbed"),
        "libpolyhub_testbed_plugin.so",
        "",
        true,
    );
    let mut registry = Registry::new();
    registry.add(testbed::Factory);
    let builtin = "[[adapters]]\nname = \"bed\"\ntype = \"testbed\"\n";
    let plugin = format!(
        "[[adapters]]\nname = \"bed\"\nplugin = \"{}\"\n",
        lib.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Warm up both paths once.
        run_once(builtin, &registry).await;
        run_once(&plugin, &registry).await;
        let mut b = Vec::new();
        let mut p = Vec::new();
        for _ in 0..ROUNDS {
            b.push(run_once(builtin, &registry).await);
            p.push(run_once(&plugin, &registry).await);
        }
        let (b, p) = (median(b), median(p));
        println!("relay of {ENVELOPES} QoS 1 envelopes, median of {ROUNDS} alternating rounds:");
        println!("  built-in adapter : {b:>12.0} envelopes/s");
        println!("  loaded plugin    : {p:>12.0} envelopes/s");
        println!("  ratio plugin / built-in = {:.3} (target >= 0.9)", p / b);
    });
}
