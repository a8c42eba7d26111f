//! Routing benchmark: matching one topic against 10, 1k and 10k subscriptions
//! with the hub's topic trie, against a naive matcher that scans every filter,
//! in the same run. Targets: ≥ 5M matches/s per core and ≥ 20× the scan at 10k
//! filters. Also the router's whole publish path (store + match + queue).
//!
//! `cargo bench -p polyhub --bench routing`; the ratio is printed at the end.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use polyhub::{Router, TopicTrie};
use polyhub_sdk::{AdapterMetrics, Envelope, Origin, Topic, TopicFilter};

/// A deterministic mix of filters shaped like a real deployment: mostly
/// per-device exact topics, some `+` per site, a few `#`.
fn filters(n: usize) -> Vec<TopicFilter> {
    (0..n)
        .map(|i| {
            let site = i % 50;
            let dev = i / 3;
            let s = match i % 10 {
                0..=5 => format!("site/{site}/dev/{dev}/temp"),
                6 | 7 => format!("site/{site}/dev/+/temp"),
                8 => format!("site/{site}/dev/{dev}/#"),
                _ => format!("site/+/dev/{dev}/humidity"),
            };
            TopicFilter::new(&s).unwrap()
        })
        .collect()
}

/// Topics that hit (and miss) those filters.
fn topics(n: usize) -> Vec<Topic> {
    (0..1024)
        .map(|i| {
            let dev = (i * 7919) % n.max(1) / 3;
            let site = (i * 31) % 50;
            let kind = if i % 4 == 0 { "humidity" } else { "temp" };
            Topic::new(&format!("site/{site}/dev/{dev}/{kind}")).unwrap()
        })
        .collect()
}

fn trie_of(filters: &[TopicFilter]) -> TopicTrie<usize> {
    let mut trie = TopicTrie::new();
    for (i, f) in filters.iter().enumerate() {
        trie.insert(f, i);
    }
    trie
}

fn trie_count(trie: &TopicTrie<usize>, topic: &Topic) -> usize {
    let mut n = 0;
    trie.for_each_match(topic, |_| n += 1);
    n
}

fn scan_count(filters: &[TopicFilter], topic: &Topic) -> usize {
    filters.iter().filter(|f| f.matches(topic)).count()
}

fn bench_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000, 10_000] {
        let fs = filters(n);
        let ts = topics(n);
        let trie = trie_of(&fs);
        // The two matchers must agree, or the comparison means nothing.
        for t in &ts {
            assert_eq!(trie_count(&trie, t), scan_count(&fs, t), "{t}");
        }
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("trie", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(trie_count(&trie, &ts[i]))
            })
        });
        let mut j = 0;
        group.bench_with_input(BenchmarkId::new("scan", n), &n, |b, _| {
            b.iter(|| {
                j = (j + 1) & 1023;
                black_box(scan_count(&fs, &ts[j]))
            })
        });
    }
    group.finish();
}

fn bench_publish(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("router_publish");
    group.throughput(Throughput::Elements(1));
    for n in [10usize, 10_000] {
        let router = Router::new(1 << 16);
        let fs = filters(n);
        let mut receivers = Vec::new();
        for (i, f) in fs.iter().enumerate() {
            let (_, rx) = router
                .subscribe(
                    Arc::from(format!("a{}", i % 4)),
                    Arc::new(AdapterMetrics::default()),
                    std::slice::from_ref(f),
                    Some(1),
                )
                .unwrap();
            receivers.push(rx);
        }
        let ts = topics(n);
        let pm = AdapterMetrics::default();
        let origin = Origin {
            adapter: Arc::from("publisher"),
            ..Default::default()
        };
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("qos0_full_queues", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let e = Envelope::new(ts[i].clone(), "21.5").with_origin(origin.clone());
                rt.block_on(router.publish(e, &pm)).unwrap();
            })
        });
    }
    group.finish();
}

/// Prints matches/s of both matchers and their ratio at each size, measured
/// back to back in this process.
fn report_ratio() {
    println!("\nrouting summary (same process, same topics):");
    println!(
        "{:>8} {:>16} {:>16} {:>10}",
        "filters", "trie matches/s", "scan matches/s", "ratio"
    );
    for n in [10usize, 1_000, 10_000] {
        let fs = filters(n);
        let ts = topics(n);
        let trie = trie_of(&fs);
        let rate = |f: &dyn Fn(&Topic) -> usize| {
            let budget = Duration::from_millis(600);
            let start = Instant::now();
            let mut count = 0u64;
            let mut k = 0;
            while start.elapsed() < budget {
                for _ in 0..64 {
                    k = (k + 1) & 1023;
                    black_box(f(&ts[k]));
                    count += 1;
                }
            }
            count as f64 / start.elapsed().as_secs_f64()
        };
        let t = rate(&|topic| trie_count(&trie, topic));
        let s = rate(&|topic| scan_count(&fs, topic));
        println!("{n:>8} {t:>16.0} {s:>16.0} {:>9.1}x", t / s);
    }
}

criterion_group!(benches, bench_matching, bench_publish);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report_ratio();
}
