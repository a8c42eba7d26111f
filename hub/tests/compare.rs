//! `polyhub compare` end to end: a small run over the protocols whose
//! servers are up (real Mosquitto-free embedded broker, CoAP and HTTP
//! adapters, RabbitMQ, the private Prosody of scripts/prosody), checking
//! that every figure is there and positive, that the measured bytes are at
//! least the spec minimum, and that the protocols order as the specs say.
#![cfg(feature = "compare")]

mod common;

use std::path::Path;
use std::time::Duration;

use polyhub::compare::{self, Options, Protocol, Report, Row};

/// Creates the four XMPP accounts of `polyhub compare` on the private
/// Prosody (like scripts/prosody/instance.sh does for its own), when that
/// instance runs here. Returns its port.
fn prosody_with_compare_accounts() -> Option<u16> {
    let dir = Path::new("/tmp/polyhub-prosody");
    let port: u16 = std::fs::read_to_string(dir.join("port"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !common::service_up(port) {
        return None;
    }
    for user in [
        "polyhub-cmp-pub",
        "polyhub-cmp-sub",
        "polyhub-cmp-in",
        "polyhub-cmp-out",
    ] {
        if dir
            .join(format!(
                "data/localhost/accounts/{}.dat",
                user.replace('-', "%2d")
            ))
            .exists()
        {
            continue;
        }
        let _ = std::process::Command::new("prosodyctl")
            .arg("--config")
            .arg(dir.join("prosody.cfg.lua"))
            .args(["register", user, "localhost", "polyhub-cmp"])
            .output();
    }
    Some(port)
}

fn row<'a>(report: &'a Report, protocol: &str, size: usize) -> Option<&'a Row> {
    report
        .rows
        .iter()
        .find(|r| r.protocol == protocol && r.payload_size == size)
}

#[test]
fn small_compare_run_measures_every_protocol_that_is_up() {
    let mut options = Options {
        sizes: vec![16, 1024],
        messages: 20,
        out: Some(tempfile::tempdir().unwrap().keep()),
        ..Options::default()
    };
    match prosody_with_compare_accounts() {
        Some(port) => options.servers.xmpp.set_port(port),
        None => options.protocols.retain(|p| *p != Protocol::Xmpp),
    }
    if !common::service_up(5672) {
        options.protocols.retain(|p| *p != Protocol::Amqp);
    }
    // compare::run owns its runtimes and bounds every phase itself; this
    // thread bounds the whole run.
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = options.clone();
    std::thread::spawn(move || {
        let _ = tx.send(compare::run(&opts));
    });
    let report = rx
        .recv_timeout(Duration::from_secs(100))
        .expect("compare run finished within 100 s")
        .expect("compare run");
    println!("{}", report.to_table());

    // The embedded-broker, CoAP and HTTP adapters need no outside server:
    // they must have run.
    for p in ["mqtt", "coap", "http"] {
        assert!(
            report.rows.iter().any(|r| r.protocol == p),
            "{p} did not run: {:?}",
            report.skipped
        );
    }
    for p in &options.protocols {
        assert!(
            report
                .rows
                .iter()
                .filter(|r| r.protocol == p.as_str())
                .count()
                == 2,
            "{p} is missing rows; skipped: {:?}",
            report.skipped
        );
    }

    for r in &report.rows {
        let positive = [
            ("bytes_per_message", r.bytes_per_message),
            ("publisher_up_bytes", r.publisher_up_bytes),
            ("subscriber_down_bytes", r.subscriber_down_bytes),
            ("packets_per_message", r.packets_per_message),
            ("wire_bytes_per_message", r.wire_bytes_per_message),
            ("spec_min_bytes_per_message", r.spec_min_bytes_per_message),
            ("setup_bytes", r.setup_bytes as f64),
            ("setup_round_trips", r.setup_round_trips as f64),
            ("latency_p50_us", r.latency_p50_us),
            ("latency_p90_us", r.latency_p90_us),
            ("latency_p99_us", r.latency_p99_us),
            ("throughput_msg_per_s", r.throughput_msg_per_s),
            ("hub_cpu_us_per_message", r.hub_cpu_us_per_message),
            ("delivered", r.delivered as f64),
        ];
        for (name, v) in positive {
            assert!(v > 0.0, "{} {} B: {name} = {v}", r.protocol, r.payload_size);
        }
        assert!(r.publisher_down_bytes >= 0.0 && r.subscriber_up_bytes >= 0.0);
        assert!(
            r.bytes_per_message >= r.spec_min_bytes_per_message,
            "{} {} B: measured {} < spec minimum {}",
            r.protocol,
            r.payload_size,
            r.bytes_per_message,
            r.spec_min_bytes_per_message
        );
        assert!(r.latency_p50_us <= r.latency_p90_us && r.latency_p90_us <= r.latency_p99_us);
    }

    let bytes = |p: &str| row(&report, p, 16).map(|r| r.bytes_per_message);
    for (smaller, larger) in [
        ("mqtt", "http"),
        ("coap", "http"),
        ("mqtt", "xmpp"),
        ("mqtt", "amqp"),
    ] {
        if let (Some(a), Some(b)) = (bytes(smaller), bytes(larger)) {
            assert!(a < b, "at 16 B expected {smaller} ({a}) < {larger} ({b})");
        }
    }

    let dir = options.out.unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("compare.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), report.rows.len());
    for field in [
        "protocol",
        "payload_size",
        "bytes_per_message",
        "latency_p99_us",
    ] {
        assert!(
            rows.iter().all(|r| !r[field].is_null()),
            "compare.json lacks {field}"
        );
    }
    let csv = std::fs::read_to_string(dir.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), report.rows.len() + 1);
    assert!(csv.starts_with("protocol,payload_size,delivery,"));
    for svg in [
        "compare-bytes.svg",
        "compare-overhead.svg",
        "compare-latency.svg",
    ] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(text.contains("<svg") && text.contains("mqtt"), "{svg}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreachable_server_is_skipped_with_the_reason_and_the_rest_runs() {
    let mut options = Options {
        protocols: vec![Protocol::Amqp, Protocol::Mqtt],
        sizes: vec![16],
        messages: 5,
        ..Options::default()
    };
    // A port nobody listens on.
    options.servers.amqp.set_port(common::free_tcp_port());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(compare::run(&options));
    });
    let report = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("compare run finished within 60 s")
        .expect("compare run");
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert_eq!(report.skipped[0].protocol, "amqp");
    assert!(
        report.skipped[0].reason.contains("unreachable"),
        "{}",
        report.skipped[0].reason
    );
    assert!(report.rows.iter().any(|r| r.protocol == "mqtt"));
    assert!(report.to_table().contains("skipped amqp"));
}

#[test]
fn bad_options_are_refused_with_the_flag_named() {
    let e = compare::run(&Options {
        sizes: vec![8],
        ..Options::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("--sizes"), "{e}");
    let e = "smtp".parse::<Protocol>().unwrap_err();
    assert!(e.to_string().contains("mqtt, coap"), "{e}");
}
