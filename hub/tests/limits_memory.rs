//! Memory bounds of the hub core under hostile volume: a flood of distinct
//! topics keeps the last-value store at `[hub] max_topics`, with the
//! evictions counted. Alone in its test binary, so that the process's RSS is
//! the hub's.

mod common;

use common::*;
use polyhub_sdk::{Envelope, Topic};

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_topics_keeps_the_store_at_max_topics_and_counts_evictions() {
    const MAX: usize = 10_000;
    const ROUNDS: usize = 8;
    let hub = start_hub(&format!("[hub]\nmax_topics = {MAX}\n")).await;
    let device = hub.attach("flood", "test");
    let publish_round = |round: usize| {
        let device = device.clone();
        async move {
            for i in 0..MAX {
                let topic = Topic::new(&format!("flood/{round}/{i}/value")).unwrap();
                device.publish(Envelope::new(topic, "12.5")).await.unwrap();
            }
        }
    };
    // The first round fills the store; measure from there.
    within_for(
        std::time::Duration::from_secs(120),
        "first round",
        publish_round(0),
    )
    .await;
    let filled = rss_kib();
    for round in 1..ROUNDS {
        within_for(
            std::time::Duration::from_secs(120),
            "flood round",
            publish_round(round),
        )
        .await;
    }
    let after = rss_kib();
    let snapshot = hub.snapshot();
    assert_eq!(snapshot.topics, MAX, "the store holds max_topics topics");
    assert_eq!(
        snapshot.last_value_evictions,
        (MAX * (ROUNDS - 1)) as u64,
        "every topic past max_topics evicted one, and was counted"
    );
    // Seven more rounds of new topics, each as large as the store, must not
    // grow memory by anything like another store's worth per round (a round
    // of 10 000 topics holds ~2 MB). Generous: allocator slack only.
    assert!(
        after < filled + 16 * 1024,
        "RSS grew from {filled} KiB to {after} KiB while the store stayed at {MAX} topics"
    );
    // The newest topics are the ones kept.
    let newest = Topic::new(&format!("flood/{}/0/value", ROUNDS - 1)).unwrap();
    assert!(device.last_value(&newest).is_some());
    let oldest = Topic::new("flood/0/0/value").unwrap();
    assert!(device.last_value(&oldest).is_none());
    hub.shutdown().await.unwrap();
}
