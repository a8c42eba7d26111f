//! Every config we ship (the quickstart `polyhub.toml` and `examples/*.toml`)
//! passes `polyhub check`, and a misspelled key fails naming file, adapter and key.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn shipped_configs() -> Vec<PathBuf> {
    let mut files = vec![root().join("polyhub.toml")];
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn every_shipped_config_passes_the_check() {
    // examples/secure.toml's certificates, made by its own script.
    let out = Command::new(root().join("examples/secure/make-certs.sh"))
        .output()
        .expect("examples/secure/make-certs.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registry = polyhub::Registry::builtin();
    let files = shipped_configs();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        if let Err(e) = polyhub::Config::load(&file, &registry) {
            panic!("{e}");
        }
    }
}

#[test]
fn polyhub_check_accepts_the_quickstart_and_names_a_misspelled_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .args(["check", root().join("polyhub.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(root().join("polyhub.toml")).unwrap();
    std::fs::write(&bad, text.replace("listen =", "lisen =")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("adapter \"mqtt\""), "{err}");
    assert!(err.contains("config.lisen"), "{err}");
}

#[test]
fn polyhub_check_reports_an_unknown_type_with_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[adapters]]\nname = \"z\"\ntype = \"zigbee\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown adapter type `zigbee`; known types: mqtt, coap, http, amqp, xmpp"),
        "{err}"
    );
}
