//! TLS with a private CA made for the test (openssl), both sides of the
//! MQTT adapter:
//! - client (`url = "mqtts://…"`): a private Mosquitto serves TLS with a
//!   certificate signed by that CA; the adapter that trusts it (`ca_file`)
//!   connects and carries messages both ways, one that trusts another CA
//!   stays down with the TLS error as its reason;
//! - embedded broker (`tls_listen`): `mosquitto_pub`/`mosquitto_sub
//!   --cafile`, `-V 311` and `-V 5`, reach each other and plain-TCP devices;
//!   with `ca_file` a device without a client certificate (or with one of
//!   another CA) is refused and counted, one with a certificate signed by
//!   that CA gets in;
//! - `wss_listen`: paho-mqtt over WebSocket over TLS (v3.1.1, v5) reaches a
//!   TCP device and back.

mod common;
mod mqtt_devices;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use mqtt_devices::{publish, PrivateMosquitto, Sub};
use polyhub_sdk::{AdapterState, Envelope, QoS, Topic, TopicFilter};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`{name}.pem`, `{name}.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A server certificate for localhost / 127.0.0.1 signed by `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    for f in ["server.key", "server.pem", &format!("{ca}.pem")] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// A client certificate `{name}.pem` / `{name}.key` signed by `ca`.
fn make_client_cert(dir: &Path, ca: &str, name: &str) {
    std::fs::write(
        dir.join("client-ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            "client-ext.cnf",
        ],
    );
}

fn adapter(name: &str, port: u16, ca: &Path) -> String {
    format!(
        "[[adapters]]\nname = \"{name}\"\ntype = \"mqtt\"\n[adapters.config]\n\
         url = \"mqtts://localhost:{port}\"\nca_file = \"{}\"\nclient_id = \"{name}\"\n\
         subscribe = [\"tls/in/#\"]\nforward = [\"tls/out/#\"]\nreconnect_max_ms = 500\n",
        ca.display()
    )
}

fn state(hub: &polyhub::Hub, name: &str) -> (AdapterState, Option<String>) {
    hub.snapshot()
        .adapters
        .iter()
        .find(|a| a.name == name)
        .map(|a| (a.state, a.reason.clone()))
        .unwrap_or((AdapterState::Failed, None))
}

#[tokio::test]
async fn mqtts_with_private_ca_carries_messages_and_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_server_cert(d, "ca");
    let port = free_tcp_port();
    let tls = format!(
        "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
        d.display()
    );
    let _broker = PrivateMosquitto::start_with(d, port, &tls).await;

    let hub = start_hub(&format!(
        "{}{}",
        adapter("good", port, &d.join("ca.pem")),
        adapter("bad", port, &d.join("other-ca.pem"))
    ))
    .await;
    wait_until("trusted adapter up", TIMEOUT, || {
        state(&hub, "good").0 == AdapterState::Up
    })
    .await;
    wait_until("untrusting adapter down", TIMEOUT, || {
        state(&hub, "bad").0 == AdapterState::Down
    })
    .await;
    let reason = state(&hub, "bad").1.unwrap_or_default();
    assert!(
        reason.contains("TLS") || reason.to_lowercase().contains("certificate"),
        "{reason}"
    );

    let cafile = d.join("ca.pem").display().to_string();
    let tls_args = ["--cafile", cafile.as_str(), "-q", "1"];
    // Device → broker (TLS) → hub.
    let probe = hub.attach("probe", "test");
    let mut hub_in = probe
        .subscribe([TopicFilter::new("tls/in/#").unwrap()])
        .unwrap();
    within("TLS device publish reaches the hub", async {
        loop {
            publish(port, "tls/in/t", "secure", &tls_args).await;
            if let Ok(Some(env)) =
                tokio::time::timeout(Duration::from_millis(300), hub_in.recv()).await
            {
                assert_eq!(
                    (env.topic.as_str(), &env.payload[..]),
                    ("tls/in/t", &b"secure"[..])
                );
                return;
            }
        }
    })
    .await;

    // Hub → broker (TLS) → device.
    let mut device = Sub::start(port, "tls/out/#", &["--cafile", cafile.as_str()]).await;
    probe
        .publish(Envelope::new(Topic::new("tls/out/led").unwrap(), "on").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    let m = device.next().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_str()),
        ("tls/out/led", "on")
    );
    hub.shutdown().await.unwrap();
}

/// An embedded broker on `port` (plain) and `tls_port` (TLS, certificate of
/// `dir`), `extra` more config lines.
fn embedded_tls(port: u16, tls_port: u16, dir: &Path, extra: &str) -> String {
    format!(
        "[[adapters]]\nname = \"mqtt\"\ntype = \"mqtt\"\n[adapters.config]\n\
         listen = \"127.0.0.1:{port}\"\ntls_listen = \"127.0.0.1:{tls_port}\"\n\
         cert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\n{extra}\n",
        d = dir.display()
    )
}

fn rejected(hub: &polyhub::Hub, reason: &str) -> u64 {
    hub.snapshot()
        .adapters
        .iter()
        .find(|a| a.name == "mqtt")
        .map(|a| a.metrics.rejected(reason))
        .unwrap_or(0)
}

/// Runs `mosquitto_pub` once at QoS 1 (so it waits for the broker's
/// acknowledgement) and tells whether it succeeded, with its stderr.
async fn try_publish(port: u16, topic: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-m", "x", "-q", "1"])
        .args(args);
    let out = within(
        "mosquitto_pub",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("join")
    .expect("mosquitto_pub runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn embedded_broker_tls_listen_serves_mosquitto_clients_v311_and_v5() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_server_cert(d, "ca");
    let (port, tls_port) = (free_tcp_port(), free_tcp_port());
    let hub = start_hub(&embedded_tls(port, tls_port, d, "")).await;
    let cafile = d.join("ca.pem").display().to_string();
    let ca = ["--cafile", cafile.as_str()];

    let mut v5 = Sub::start(tls_port, "sec/#", &[&ca[..], &["-V", "5"]].concat()).await;
    let mut v311 = Sub::start(tls_port, "sec/#", &[&ca[..], &["-V", "311"]].concat()).await;
    let mut plain = Sub::start(port, "sec/#", &["-V", "5"]).await;
    publish(
        tls_port,
        "sec/a",
        "tls5",
        &[&ca[..], &["-V", "5", "-q", "1"]].concat(),
    )
    .await;
    publish(
        tls_port,
        "sec/b",
        "tls311",
        &[&ca[..], &["-V", "311", "-q", "2"]].concat(),
    )
    .await;
    publish(port, "sec/c", "plain", &["-V", "311", "-q", "1"]).await;
    for sub in [&mut v5, &mut v311, &mut plain] {
        let got: Vec<(String, String)> = [sub.next().await, sub.next().await, sub.next().await]
            .into_iter()
            .map(|m| (m.topic, m.payload))
            .collect();
        assert_eq!(
            got,
            [("sec/a", "tls5"), ("sec/b", "tls311"), ("sec/c", "plain")]
                .map(|(t, p)| (t.to_owned(), p.to_owned()))
        );
    }

    // A device that trusts another CA refuses the broker's certificate; a
    // device speaking plain MQTT to the TLS port fails the handshake, which
    // the broker counts.
    let other = d.join("other-ca.pem").display().to_string();
    let before = rejected(&hub, "tls_handshake");
    let (ok, err) = try_publish(tls_port, "sec/x", &["--cafile", other.as_str()]).await;
    assert!(!ok, "a device trusting another CA must not connect: {err}");
    wait_until("handshake the device aborted counted", TIMEOUT, || {
        rejected(&hub, "tls_handshake") > before
    })
    .await;
    let before = rejected(&hub, "tls_handshake");
    let (ok, _) = try_publish(tls_port, "sec/x", &[]).await;
    assert!(!ok, "plain MQTT on the TLS port must not connect");
    wait_until("plain MQTT on the TLS port counted", TIMEOUT, || {
        rejected(&hub, "tls_handshake") > before
    })
    .await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn embedded_broker_with_ca_file_admits_only_devices_with_a_certificate_of_that_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_server_cert(d, "ca");
    make_client_cert(d, "ca", "device");
    make_client_cert(d, "other-ca", "stranger");
    let (port, tls_port) = (free_tcp_port(), free_tcp_port());
    let hub = start_hub(&embedded_tls(
        port,
        tls_port,
        d,
        &format!("ca_file = \"{}/ca.pem\"", d.display()),
    ))
    .await;
    let path = |f: &str| d.join(f).display().to_string();
    let (cafile, cert, key) = (path("ca.pem"), path("device.pem"), path("device.key"));
    let (s_cert, s_key) = (path("stranger.pem"), path("stranger.key"));
    let with_cert = [
        "--cafile",
        cafile.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];

    for version in ["311", "5"] {
        let before = rejected(&hub, "tls_handshake");
        let (ok, err) = try_publish(
            tls_port,
            "cert/x",
            &["--cafile", cafile.as_str(), "-V", version],
        )
        .await;
        assert!(
            !ok,
            "-V {version}: a device without a certificate got in: {err}"
        );
        wait_until(
            "refused device without a certificate counted",
            TIMEOUT,
            || rejected(&hub, "tls_handshake") > before,
        )
        .await;

        let before = rejected(&hub, "tls_handshake");
        let stranger = [
            "--cafile",
            cafile.as_str(),
            "--cert",
            s_cert.as_str(),
            "--key",
            s_key.as_str(),
            "-V",
            version,
        ];
        let (ok, err) = try_publish(tls_port, "cert/x", &stranger).await;
        assert!(
            !ok,
            "-V {version}: a certificate of another CA got in: {err}"
        );
        wait_until("refused certificate of another CA counted", TIMEOUT, || {
            rejected(&hub, "tls_handshake") > before
        })
        .await;

        let args = [&with_cert[..], &["-V", version]].concat();
        let mut sub = Sub::start(tls_port, "cert/#", &args).await;
        let topic = format!("cert/v{version}");
        publish(
            tls_port,
            &topic,
            "signed",
            &[&args[..], &["-q", "1"]].concat(),
        )
        .await;
        let m = sub.next().await;
        assert_eq!(
            (m.topic.as_str(), m.payload.as_str()),
            (topic.as_str(), "signed")
        );
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn embedded_broker_wss_listen_serves_paho_over_websocket_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_server_cert(d, "ca");
    let (port, tls_port, wss) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let hub = start_hub(&embedded_tls(
        port,
        tls_port,
        d,
        &format!("wss_listen = \"127.0.0.1:{wss}\""),
    ))
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt_broker/paho_cases.py");
    for case in ["v311:websocket", "v5:websocket"] {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([case, &port.to_string(), "wss", &wss.to_string()])
            .arg(d.join("ca.pem"));
        let out = within_for(
            Duration::from_secs(60),
            case,
            tokio::task::spawn_blocking(move || cmd.output()),
        )
        .await
        .unwrap()
        .expect("python3 with paho-mqtt");
        assert!(
            out.status.success(),
            "{case} over wss failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    hub.shutdown().await.unwrap();
}
