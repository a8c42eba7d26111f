//! The REST side of the HTTP adapter against real clients (`curl` and
//! reqwest): publish, last value, delete, binary payloads, every error code,
//! `/health`, `/metrics`, bearer tokens and HTTPS.

mod support;

use polyhub_sdk::{AdapterState, QoS, Topic, TopicFilter};
use support::*;

#[tokio::test]
async fn curl_publishes_reads_and_deletes_a_topic() {
    let web = start_web("").await;
    let url = web.url("/topics/sensors/kitchen/temp");

    let r = curl(&[&url]).await;
    assert_eq!(r.status, 404, "no value yet");
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("sensors/kitchen/temp"));

    let r = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        "21.5",
        &url,
    ])
    .await;
    assert_eq!(r.status, 202);

    let r = curl(&[&url]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "21.5");
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));

    // PUT publishes too; HEAD answers like GET without a body.
    let r = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        "{\"t\":22}",
        &url,
    ])
    .await;
    assert_eq!(r.status, 202);
    let r = curl(&["-I", &url]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.header("content-length").as_deref(), Some("8"));

    let r = curl(&["-X", "DELETE", &url]).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(curl(&[&url]).await.status, 404);
    web.stop().await;
}

#[tokio::test]
async fn binary_payloads_are_byte_exact_both_ways() {
    let web = start_web("").await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let client = reqwest::Client::new();
    let url = web.url("/topics/blobs/b1");
    let resp = within(
        "POST",
        client
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(payload.clone())
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = within("GET", client.get(&url).send()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        within("body", resp.bytes()).await.unwrap().as_ref(),
        &payload[..]
    );

    // curl from a file, read back into a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    let reversed: Vec<u8> = payload.iter().rev().copied().collect();
    std::fs::write(&file, &reversed).unwrap();
    let arg = format!("@{}", file.display());
    let r = curl(&["--data-binary", &arg, &url]).await;
    assert_eq!(r.status, 202);
    let r = curl(&[&url]).await;
    assert_eq!(r.body, reversed);
    web.stop().await;
}

#[tokio::test]
async fn publish_carries_qos_retain_content_type_headers_and_peer() {
    let web = start_web("").await;
    let device = web.hub.attach("device", "test");
    let mut sub = device
        .subscribe([TopicFilter::new("cmd/#").unwrap()])
        .unwrap();
    let r = curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        "X-Device: lamp-7",
        "--data-binary",
        "{\"on\":true}",
        &web.url("/topics/cmd/lamp%2F7?retain=true&qos=1"),
    ])
    .await;
    assert_eq!(r.status, 202);
    let e = within("envelope", sub.recv()).await.unwrap();
    assert_eq!(e.topic.as_str(), "cmd/lamp/7", "%2F is a level separator");
    assert_eq!(&e.payload[..], b"{\"on\":true}");
    assert_eq!(e.qos, QoS::AtLeastOnce);
    assert!(e.retain);
    assert_eq!(e.content_type.as_deref(), Some("application/json"));
    assert_eq!(e.header("x-device"), Some("lamp-7"));
    assert_eq!(&*e.origin.protocol, "http");
    assert!(e.origin.peer.as_deref().unwrap().starts_with("127.0.0.1:"));
    let retained = device.retained(&TopicFilter::new("cmd/#").unwrap());
    assert_eq!(retained.len(), 1);

    // Without options: QoS 0, not retained.
    curl(&["--data-binary", "x", &web.url("/topics/cmd/other")]).await;
    let e = within("envelope", sub.recv()).await.unwrap();
    assert_eq!((e.qos, e.retain), (QoS::AtMostOnce, false));
    web.stop().await;
}

#[tokio::test]
async fn a_topic_published_elsewhere_is_read_over_http() {
    let web = start_web("").await;
    let device = web.hub.attach("device", "test");
    device
        .publish(
            polyhub_sdk::Envelope::new(Topic::new("lights/hall").unwrap(), "on")
                .with_content_type("text/plain"),
        )
        .await
        .unwrap();
    let r = curl(&[&web.url("/topics/lights/hall")]).await;
    assert_eq!((r.status, r.text()), (200, "on".to_owned()));
    web.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_code() {
    let web = start_web("max_body_bytes = 1024").await;
    let cases: &[(&[&str], u16)] = &[
        (&["--data-binary", "x", "/topics/a/+/b"], 400),
        (&["--data-binary", "x", "/topics/a/%23"], 400),
        (&["/topics/a/%2B"], 400),
        (&["--data-binary", "x", "/topics/"], 400),
        (&["--data-binary", "x", "/topics"], 400),
        (&["--data-binary", "x", "/topics/a%zz"], 400),
        (&["--data-binary", "x", "/topics/a%C3"], 400),
        (&["--data-binary", "x", "/topics/a%00b"], 400),
        (&["--data-binary", "x", "/topics/ok?qos=3"], 400),
        (&["--data-binary", "x", "/topics/ok?retain=maybe"], 400),
        (&["-X", "PATCH", "--data-binary", "x", "/topics/ok"], 405),
        (&["-X", "POST", "/health"], 405),
        (&["-X", "DELETE", "/events"], 405),
        (&["/nowhere"], 404),
        (&["/events?filter=a/%23/b"], 400),
        (&["/events?filter=%"], 400),
    ];
    for (args, code) in cases {
        let (path, flags) = args.split_last().unwrap();
        let url = web.url(path);
        let mut all: Vec<&str> = flags.to_vec();
        all.push(&url);
        let r = curl(&all).await;
        assert_eq!(r.status, *code, "{args:?}: {}", r.text());
        let json = r.json();
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{args:?}: {json}"
        );
        if *code == 405 {
            assert!(r.header("allow").is_some(), "{args:?} has Allow");
        }
    }

    // Oversized bodies: with Content-Length, and chunked.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'x'; 64 * 1024]).unwrap();
    let arg = format!("@{}", file.display());
    let url = web.url("/topics/big");
    let r = curl(&["--data-binary", &arg, &url]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("1024"));
    let r = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &arg,
        &url,
    ])
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // Exactly at the limit is fine.
    std::fs::write(&file, vec![b'y'; 1024]).unwrap();
    assert_eq!(curl(&["--data-binary", &arg, &url]).await.status, 202);
    assert_eq!(curl(&[&url]).await.body.len(), 1024);

    // Garbage on the socket is answered 400, and the server goes on.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", web.port))
        .await
        .unwrap();
    s.write_all(b"\x16\x03\x01 NOT HTTP \xff\xfe\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = within("garbage answer", s.read_to_end(&mut buf)).await;
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        buf.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert_eq!(curl(&[&url]).await.status, 200);
    web.stop().await;
}

#[tokio::test]
async fn default_body_limit_is_one_mebibyte() {
    let web = start_web("").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mib");
    let url = web.url("/topics/big");
    std::fs::write(&file, vec![b'z'; 1024 * 1024]).unwrap();
    let arg = format!("@{}", file.display());
    assert_eq!(curl(&["--data-binary", &arg, &url]).await.status, 202);
    std::fs::write(&file, vec![b'z'; 1024 * 1024 + 1]).unwrap();
    assert_eq!(curl(&["--data-binary", &arg, &url]).await.status, 413);
    web.stop().await;
}

#[tokio::test]
async fn health_reports_every_adapter_and_turns_503_when_one_is_down() {
    let web = start_web("").await;
    let r = curl(&[&web.url("/health")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"status": "ok", "adapters": {"web": "up"}})
    );
    let other = web.hub.attach("mqtt", "mqtt");
    other.set_state(AdapterState::Down, Some("broker gone".into()));
    let r = curl(&[&web.url("/health")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "status": "degraded",
            "adapters": {"web": "up", "mqtt": "down"},
            "reasons": {"mqtt": "broker gone"}
        })
    );
    other.set_state(AdapterState::Up, None);
    assert_eq!(curl(&[&web.url("/health")]).await.status, 200);
    web.stop().await;
}

#[tokio::test]
async fn metrics_show_messages_drops_errors_and_routing_latency() {
    let web = start_web("").await;
    let device = web.hub.attach("device", "test");
    let _sub = device
        .subscribe([TopicFilter::new("m/#").unwrap()])
        .unwrap();
    for i in 0..3 {
        let r = curl(&["--data-binary", &i.to_string(), &web.url("/topics/m/x")]).await;
        assert_eq!(r.status, 202);
    }
    let r = curl(&[&web.url("/metrics")]).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for line in [
        "polyhub_messages_in_total{hub=\"test-hub\",adapter=\"web\",kind=\"http\"} 3",
        "polyhub_messages_out_total{hub=\"test-hub\",adapter=\"device\",kind=\"test\"} 3",
        "polyhub_dropped_total{hub=\"test-hub\",adapter=\"web\",kind=\"http\"} 0",
        "polyhub_errors_total{hub=\"test-hub\",adapter=\"web\",kind=\"http\"} 0",
        "polyhub_routing_latency_seconds_count{hub=\"test-hub\"} 3",
        "# TYPE polyhub_routing_latency_seconds histogram",
        "polyhub_routing_latency_seconds_bucket{hub=\"test-hub\",le=\"+Inf\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    web.stop().await;
}

#[tokio::test]
async fn bearer_tokens_guard_topics_and_events_but_not_health() {
    let web = start_web("tokens = [\"s3cret\", \"other\"]").await;
    let url = web.url("/topics/secure/a");
    let r = curl(&["--data-binary", "x", &url]).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert!(r.json()["error"].is_string());
    let r = curl(&[
        "-H",
        "Authorization: Bearer wrong",
        "--data-binary",
        "x",
        &url,
    ])
    .await;
    assert_eq!(r.status, 401);
    let r = curl(&[
        "-H",
        "Authorization: Bearer s3cret",
        "--data-binary",
        "x",
        &url,
    ])
    .await;
    assert_eq!(r.status, 202);
    let r = curl(&["-H", "Authorization: bearer other", &url]).await;
    assert_eq!((r.status, r.text()), (200, "x".to_owned()));
    assert_eq!(curl(&[&web.url("/events")]).await.status, 401);
    assert_eq!(curl(&[&web.url("/health")]).await.status, 200);
    assert_eq!(curl(&[&web.url("/metrics")]).await.status, 200);

    // EventSource-style ?access_token= on /events.
    let resp = within(
        "SSE with token",
        reqwest::Client::new()
            .get(web.url("/events?filter=secure%2F%23&access_token=s3cret"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    web.stop().await;
}

/// Makes a CA and a `localhost`/`127.0.0.1` server certificate with the
/// real `openssl` binary; returns (ca.pem, cert.pem, key.pem).
fn make_certs(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=polyhub test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[tokio::test]
async fn https_serves_curl_and_reqwest_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let web = start_web(&format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    ))
    .await;
    let url = format!("https://localhost:{}/topics/tls/t", web.port);
    let ca_s = ca.display().to_string();
    let r = curl(&["--cacert", &ca_s, "--data-binary", "secure", &url]).await;
    assert_eq!(r.status, 202);
    let r = curl(&["--cacert", &ca_s, &url]).await;
    assert_eq!((r.status, r.text()), (200, "secure".to_owned()));

    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()])
        .build()
        .unwrap();
    let resp = within(
        "reqwest over TLS",
        client
            .get(format!("https://127.0.0.1:{}/health", web.port))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);

    // Plain HTTP on the TLS port gets nowhere, and the server goes on.
    let plain = curl(&[&format!("http://127.0.0.1:{}/health", web.port)]).await;
    assert_ne!(plain.status, 200);
    let r = curl(&["--cacert", &ca_s, &url]).await;
    assert_eq!(r.status, 200);
    web.stop().await;
}

#[tokio::test]
async fn config_mistakes_fail_the_start_naming_the_key() {
    let bad = [
        ("bind = \"nowhere\"", "bind"),
        ("max_body = 5", "max_body"),
        (
            "tls = { cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }",
            "tls.cert",
        ),
        (
            "webhooks = [{ filter = \"a/#\", url = \"not a url\" }]",
            "webhooks[0].url",
        ),
    ];
    for (line, key) in bad {
        let toml =
            format!("[[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\n{line}\n");
        let err = within("start", polyhub::start_str(&toml))
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(key) && msg.contains("web"), "{line}: {msg}");
    }
}

#[tokio::test]
async fn a_port_in_use_fails_the_hub_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let toml = format!(
        "[[adapters]]\nname = \"web\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{port}\"\n"
    );
    let err = within("start", polyhub::start_str(&toml))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains(&port.to_string()), "{err:#}");
}
