//! The results of a comparison: one [`Row`] per protocol × payload size,
//! printed as a table and written as `compare.json`, `compare.csv` and SVG
//! charts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::CompareError;

/// Measured figures for one protocol and payload size. Per-message figures
/// are averages over the paced phase's delivered messages, both hops
/// (publisher ↔ hub and hub ↔ subscriber), both directions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Protocol name.
    pub protocol: String,
    /// Payload bytes per message.
    pub payload_size: usize,
    /// What the delivery level means for this protocol.
    pub delivery: String,
    /// Messages sent in each phase.
    pub messages: usize,
    /// Messages delivered in the paced phase.
    pub delivered: usize,
    /// Messages delivered in the burst phase.
    pub burst_delivered: usize,
    /// Application bytes on the wire per message (measured by the relays).
    pub bytes_per_message: f64,
    /// Publisher → hub (or its broker) bytes per message.
    pub publisher_up_bytes: f64,
    /// Hub → publisher bytes per message (acks, responses).
    pub publisher_down_bytes: f64,
    /// Hub → subscriber bytes per message.
    pub subscriber_down_bytes: f64,
    /// Subscriber → hub bytes per message (acks).
    pub subscriber_up_bytes: f64,
    /// TCP segments (kernel `TCP_INFO`, incl. pure ACKs) or UDP datagrams
    /// per message.
    pub packets_per_message: f64,
    /// `bytes_per_message` + packets × IPv4/TCP (52 B with timestamps) or
    /// IPv4/UDP (28 B) headers.
    pub wire_bytes_per_message: f64,
    /// The specification's minimum application bytes for this message, end
    /// to end.
    pub spec_min_bytes_per_message: f64,
    /// `bytes_per_message - spec_min_bytes_per_message`.
    pub overhead_over_spec: f64,
    /// Where measured and spec minimum differ, and why.
    pub spec_note: String,
    /// Bytes of connection set-up and subscription (both devices), before
    /// the first message.
    pub setup_bytes: u64,
    /// Round trips for the subscribing device to be ready (TCP handshake +
    /// request/response turns, e.g. CONNECT/CONNACK + SUBSCRIBE/SUBACK).
    pub setup_round_trips: u64,
    /// Median one-way latency, publisher → subscriber, microseconds.
    pub latency_p50_us: f64,
    /// 90th percentile latency, microseconds.
    pub latency_p90_us: f64,
    /// 99th percentile latency, microseconds.
    pub latency_p99_us: f64,
    /// Messages per second delivered in the burst phase.
    pub throughput_msg_per_s: f64,
    /// CPU time of the hub per message, microseconds.
    pub hub_cpu_us_per_message: f64,
}

/// A protocol that did not run (or stopped), with the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Protocol name.
    pub protocol: String,
    /// Why.
    pub reason: String,
}

/// A whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Measured rows, protocol by protocol, size by size.
    pub rows: Vec<Row>,
    /// Protocols that were skipped.
    pub skipped: Vec<Skipped>,
    /// Messages per phase.
    pub messages: usize,
    /// Acknowledged delivery (`--qos 1`).
    pub acked: bool,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
}

const CSV_HEADER: &str = "protocol,payload_size,delivery,messages,delivered,burst_delivered,bytes_per_message,publisher_up_bytes,publisher_down_bytes,subscriber_down_bytes,subscriber_up_bytes,packets_per_message,wire_bytes_per_message,spec_min_bytes_per_message,overhead_over_spec,setup_bytes,setup_round_trips,latency_p50_us,latency_p90_us,latency_p99_us,throughput_msg_per_s,hub_cpu_us_per_message,spec_note";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Report {
    /// The rows as CSV (header line first).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.2},{:.1},{:.0},{:.1},{},{},{:.0},{:.0},{:.0},{:.0},{:.1},{}",
                r.protocol,
                r.payload_size,
                csv_field(&r.delivery),
                r.messages,
                r.delivered,
                r.burst_delivered,
                r.bytes_per_message,
                r.publisher_up_bytes,
                r.publisher_down_bytes,
                r.subscriber_down_bytes,
                r.subscriber_up_bytes,
                r.packets_per_message,
                r.wire_bytes_per_message,
                r.spec_min_bytes_per_message,
                r.overhead_over_spec,
                r.setup_bytes,
                r.setup_round_trips,
                r.latency_p50_us,
                r.latency_p90_us,
                r.latency_p99_us,
                r.throughput_msg_per_s,
                r.hub_cpu_us_per_message,
                csv_field(&r.spec_note),
            );
        }
        out
    }

    /// The terminal table, the delivery levels and the skipped protocols.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<5} {:>6} {:>9} {:>8} {:>7} {:>9} {:>8} {:>5} {:>8} {:>8} {:>8} {:>9} {:>7}",
            "proto",
            "size",
            "B/msg",
            "spec min",
            "pkt/msg",
            "wire B",
            "setup B",
            "RTTs",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "msg/s",
            "cpu µs"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<5} {:>6} {:>9.1} {:>8.0} {:>7.2} {:>9.1} {:>8} {:>5} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>7.1}",
                r.protocol,
                r.payload_size,
                r.bytes_per_message,
                r.spec_min_bytes_per_message,
                r.packets_per_message,
                r.wire_bytes_per_message,
                r.setup_bytes,
                r.setup_round_trips,
                r.latency_p50_us,
                r.latency_p90_us,
                r.latency_p99_us,
                r.throughput_msg_per_s,
                r.hub_cpu_us_per_message,
            );
        }
        let _ = writeln!(
            out,
            "\n{} messages per phase; delivery: {}",
            self.messages,
            if self.acked {
                "acknowledged (--qos 1)"
            } else {
                "at-most-once (--qos 0)"
            }
        );
        let mut seen = Vec::new();
        for r in &self.rows {
            if !seen.contains(&&r.protocol) {
                seen.push(&r.protocol);
                let _ = writeln!(
                    out,
                    "  {:<5} {}; above spec: {}",
                    r.protocol, r.delivery, r.spec_note
                );
            }
        }
        let _ = writeln!(
            out,
            "B/msg: application bytes per message, both hops and directions (relay-counted); wire B adds 52 B (TCP) / 28 B (UDP) per packet; TCP_NODELAY on every relay leg."
        );
        for s in &self.skipped {
            let _ = writeln!(out, "skipped {}: {}", s.protocol, s.reason);
        }
        let _ = writeln!(out, "run took {:.1} s", self.elapsed_secs);
        out
    }

    /// Writes `compare.json`, `compare.csv`, `compare-bytes.svg`,
    /// `compare-overhead.svg` and `compare-latency.svg` into `dir` (created
    /// if missing).
    pub fn write_files(&self, dir: &Path) -> Result<(), CompareError> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("compare.json"), json)?;
        std::fs::write(dir.join("compare.csv"), self.to_csv())?;
        super::chart::bytes_chart(self, &dir.join("compare-bytes.svg"))?;
        super::chart::overhead_chart(self, &dir.join("compare-overhead.svg"))?;
        super::chart::latency_chart(self, &dir.join("compare-latency.svg"))?;
        Ok(())
    }
}
