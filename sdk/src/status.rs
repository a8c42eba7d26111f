//! The whole hub's `/health` JSON and `/metrics` Prometheus text, rendered
//! from a [`HubSnapshot`] (pure functions, unit tested). One copy, used by
//! the HTTP adapter and the admin listener alike.

use std::fmt::Write;

use crate::adapter::AdapterState;
use crate::metrics::HubSnapshot;
use serde_json::{Map, Value};

/// `Content-Type` of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/health`: whether every adapter is up, and the JSON body
/// `{"status":"ok"|"degraded","adapters":{"mqtt":"up",…}}`, plus
/// `"reasons":{"amqp":"…"}` naming why each adapter that has a reason is
/// not up (left out when there is none).
pub fn health(snapshot: &HubSnapshot) -> (bool, Value) {
    let ok = snapshot.all_up();
    let adapters: Map<String, Value> = snapshot
        .adapters
        .iter()
        .map(|a| (a.name.clone(), Value::from(a.state.as_str())))
        .collect();
    let reasons: Map<String, Value> = snapshot
        .adapters
        .iter()
        .filter_map(|a| Some((a.name.clone(), Value::from(a.reason.clone()?))))
        .collect();
    let mut body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "adapters": adapters,
    });
    if !reasons.is_empty() {
        body["reasons"] = Value::Object(reasons);
    }
    (ok, body)
}

/// `/metrics`: Prometheus text exposition format 0.0.4.
pub fn prometheus(snapshot: &HubSnapshot) -> String {
    let mut out = String::with_capacity(2048);
    let hub = escape(&snapshot.hub);
    type Field = fn(&crate::metrics::MetricsSnapshot) -> u64;
    let counters: [(&str, &str, Field); 5] = [
        (
            "polyhub_messages_in_total",
            "Envelopes an adapter published into the hub.",
            |m| m.messages_in,
        ),
        (
            "polyhub_messages_out_total",
            "Envelopes the hub handed to an adapter to send.",
            |m| m.messages_out,
        ),
        (
            "polyhub_dropped_total",
            "Messages dropped (full queues, undeliverable).",
            |m| m.dropped,
        ),
        ("polyhub_errors_total", "Errors an adapter recorded.", |m| {
            m.errors
        }),
        (
            "polyhub_reconnects_total",
            "Reconnects an adapter made to its server.",
            |m| m.reconnects,
        ),
    ];
    for (name, help, field) in counters {
        header(&mut out, name, help, "counter");
        for a in &snapshot.adapters {
            let _ = writeln!(
                out,
                "{name}{{hub=\"{hub}\",adapter=\"{}\",kind=\"{}\"}} {}",
                escape(&a.name),
                escape(&a.kind),
                field(&a.metrics)
            );
        }
    }

    header(
        &mut out,
        "polyhub_adapter_events_total",
        "Adapter-specific events (webhook retries, malformed input, ...).",
        "counter",
    );
    for a in &snapshot.adapters {
        for (event, n) in &a.metrics.named {
            let _ = writeln!(
                out,
                "polyhub_adapter_events_total{{hub=\"{hub}\",adapter=\"{}\",event=\"{}\"}} {n}",
                escape(&a.name),
                escape(event)
            );
        }
    }

    header(
        &mut out,
        "polyhub_rejected_total",
        "Requests, packets, datagrams or stanzas refused from a peer, by reason.",
        "counter",
    );
    for a in &snapshot.adapters {
        for (reason, n) in &a.metrics.rejected {
            let _ = writeln!(
                out,
                "polyhub_rejected_total{{hub=\"{hub}\",adapter=\"{}\",reason=\"{}\"}} {n}",
                escape(&a.name),
                escape(reason)
            );
        }
    }

    header(
        &mut out,
        "polyhub_auth_denied_total",
        "Peers refused by [auth]: failed logins (action connect) and ACL denials, by action.",
        "counter",
    );
    for a in &snapshot.adapters {
        for (action, n) in &a.metrics.denied {
            let _ = writeln!(
                out,
                "polyhub_auth_denied_total{{hub=\"{hub}\",adapter=\"{}\",action=\"{}\"}} {n}",
                escape(&a.name),
                escape(action)
            );
        }
    }

    header(
        &mut out,
        "polyhub_adapter_up",
        "1 when the adapter is up, else 0.",
        "gauge",
    );
    for a in &snapshot.adapters {
        let _ = writeln!(
            out,
            "polyhub_adapter_up{{hub=\"{hub}\",adapter=\"{}\",state=\"{}\"}} {}",
            escape(&a.name),
            a.state.as_str(),
            u8::from(a.state == AdapterState::Up)
        );
    }

    header(
        &mut out,
        "polyhub_topics",
        "Topics with a last value.",
        "gauge",
    );
    let _ = writeln!(out, "polyhub_topics{{hub=\"{hub}\"}} {}", snapshot.topics);
    header(
        &mut out,
        "polyhub_last_value_evictions_total",
        "Last values evicted because the store held [hub] max_topics topics.",
        "counter",
    );
    let _ = writeln!(
        out,
        "polyhub_last_value_evictions_total{{hub=\"{hub}\"}} {}",
        snapshot.last_value_evictions
    );
    header(
        &mut out,
        "polyhub_retained_quota_refusals_total",
        "Retained publishes refused: the store was full of retained values.",
        "counter",
    );
    let _ = writeln!(
        out,
        "polyhub_retained_quota_refusals_total{{hub=\"{hub}\"}} {}",
        snapshot.retained_quota_refusals
    );
    if let Some(store) = &snapshot.store {
        for (name, help, n) in [
            (
                "polyhub_store_commits_total",
                "Batches the data_dir store committed.",
                store.commits,
            ),
            (
                "polyhub_store_writes_total",
                "Topic values the data_dir store wrote.",
                store.writes,
            ),
            (
                "polyhub_store_errors_total",
                "Commits of the data_dir store that failed (retried).",
                store.errors,
            ),
        ] {
            header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name}{{hub=\"{hub}\"}} {n}");
        }
    }
    header(
        &mut out,
        "polyhub_subscriptions",
        "Live subscriptions.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "polyhub_subscriptions{{hub=\"{hub}\"}} {}",
        snapshot.subscriptions
    );

    let h = &snapshot.routing_latency;
    let name = "polyhub_routing_latency_seconds";
    header(
        &mut out,
        name,
        "Time the router took to accept an envelope and queue it to every subscriber.",
        "histogram",
    );
    for (bound, count) in h.bounds.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{hub=\"{hub}\",le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{hub=\"{hub}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "{name}_sum{{hub=\"{hub}\"}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{hub=\"{hub}\"}} {}", h.count);
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{AdapterSnapshot, HistogramSnapshot, MetricsSnapshot};

    fn snapshot(state: AdapterState) -> HubSnapshot {
        HubSnapshot {
            hub: "hub-1".into(),
            adapters: vec![
                AdapterSnapshot {
                    name: "web".into(),
                    kind: "http".into(),
                    state: AdapterState::Up,
                    reason: None,
                    metrics: MetricsSnapshot {
                        messages_in: 3,
                        messages_out: 2,
                        dropped: 1,
                        errors: 4,
                        reconnects: 0,
                        named: vec![("webhook_retries".into(), 7)],
                        rejected: vec![("body_too_large".into(), 2)],
                        denied: vec![("write".into(), 3)],
                    },
                },
                AdapterSnapshot {
                    name: "we\"ird".into(),
                    kind: "mqtt".into(),
                    state,
                    reason: (state != AdapterState::Up).then(|| "connection refused".into()),
                    metrics: MetricsSnapshot::default(),
                },
            ],
            routing_latency: HistogramSnapshot {
                bounds: vec![0.001, 0.01],
                cumulative: vec![2, 3],
                count: 4,
                sum: 0.5,
            },
            topics: 5,
            subscriptions: 6,
            last_value_evictions: 8,
            retained_quota_refusals: 9,
            store: Some(crate::metrics::StoreSnapshot {
                commits: 5,
                writes: 9,
                errors: 1,
            }),
        }
    }

    #[test]
    fn health_is_ok_only_when_every_adapter_is_up() {
        let (ok, body) = health(&snapshot(AdapterState::Up));
        assert!(ok);
        assert_eq!(
            body,
            serde_json::json!({"status":"ok","adapters":{"web":"up","we\"ird":"up"}})
        );
        let (ok, body) = health(&snapshot(AdapterState::Down));
        assert!(!ok);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["adapters"]["we\"ird"], "down");
        assert_eq!(body["reasons"]["we\"ird"], "connection refused");
    }

    #[test]
    fn prometheus_text_has_counters_and_a_histogram() {
        let text = prometheus(&snapshot(AdapterState::Down));
        for line in [
            "# TYPE polyhub_messages_in_total counter",
            "polyhub_messages_in_total{hub=\"hub-1\",adapter=\"web\",kind=\"http\"} 3",
            "polyhub_messages_out_total{hub=\"hub-1\",adapter=\"web\",kind=\"http\"} 2",
            "polyhub_dropped_total{hub=\"hub-1\",adapter=\"web\",kind=\"http\"} 1",
            "polyhub_errors_total{hub=\"hub-1\",adapter=\"web\",kind=\"http\"} 4",
            "polyhub_messages_in_total{hub=\"hub-1\",adapter=\"we\\\"ird\",kind=\"mqtt\"} 0",
            "polyhub_adapter_events_total{hub=\"hub-1\",adapter=\"web\",event=\"webhook_retries\"} 7",
            "polyhub_adapter_up{hub=\"hub-1\",adapter=\"we\\\"ird\",state=\"down\"} 0",
            "# TYPE polyhub_routing_latency_seconds histogram",
            "polyhub_routing_latency_seconds_bucket{hub=\"hub-1\",le=\"0.001\"} 2",
            "polyhub_routing_latency_seconds_bucket{hub=\"hub-1\",le=\"+Inf\"} 4",
            "polyhub_routing_latency_seconds_sum{hub=\"hub-1\"} 0.5",
            "polyhub_routing_latency_seconds_count{hub=\"hub-1\"} 4",
            "polyhub_store_commits_total{hub=\"hub-1\"} 5",
            "polyhub_store_writes_total{hub=\"hub-1\"} 9",
            "polyhub_store_errors_total{hub=\"hub-1\"} 1",
            "polyhub_topics{hub=\"hub-1\"} 5",
            "polyhub_rejected_total{hub=\"hub-1\",adapter=\"web\",reason=\"body_too_large\"} 2",
            "polyhub_last_value_evictions_total{hub=\"hub-1\"} 8",
            "# TYPE polyhub_auth_denied_total counter",
            "polyhub_auth_denied_total{hub=\"hub-1\",adapter=\"web\",action=\"write\"} 3",
            "polyhub_retained_quota_refusals_total{hub=\"hub-1\"} 9",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
