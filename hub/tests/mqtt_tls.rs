//! `mqtts://` with a private CA: a private Mosquitto serves TLS with a
//! certificate signed by a CA made for the test (openssl); the adapter that
//! trusts that CA (`ca_file`) connects and carries messages both ways, one
//! that trusts another CA stays down with the TLS error as its reason.

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
