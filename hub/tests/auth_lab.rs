//! `[auth]` against real Mosquitto: the access-control lab (see
//! `lab/mod.rs`), asked of a private Mosquitto and of polyhub's `Auth`
//! module, row by row; every verdict must agree. Also: password files
//! written by `polyhub passwd` log in to Mosquitto, and those written by
//! `mosquitto_passwd` (`$7$` and `$6$`) verify in polyhub.
#![cfg(unix)]

mod common;
mod lab;

use std::path::PathBuf;
use std::process::Stdio;

use common::within;
use lab::*;
use polyhub::auth::{Auth, AuthSettings};
use polyhub_sdk::Identity;
use tokio::process::Command;

async fn auth_column(dir: PathBuf, anonymous: bool) -> Vec<Box<dyn Protocol>> {
    vec![Box::new(AuthModule(polyhub_auth(&dir, anonymous)))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_gets_mosquittos_verdicts_without_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab", LAB_ACL, false, &rows, auth_column).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_table_gets_mosquittos_verdicts_with_anonymous_access() {
    let mut rows = lab_rows();
    rows.extend(anonymous_rows());
    compare("ACL lab", LAB_ACL, true, &rows, auth_column).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_client_id_and_wildcard_rules_get_mosquittos_verdicts() {
    compare(
        "Extended ACL",
        EXTENDED_ACL,
        true,
        &extended_rows(),
        auth_column,
    )
    .await;
}

/// A user `polyhub passwd` wrote logs in to Mosquitto; a wrong password
/// does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_accepts_a_password_file_written_by_polyhub() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwords");
    polyhub_passwd(env!("CARGO_BIN_EXE_polyhub"), &pw, "alice", "first");
    polyhub_passwd(
        env!("CARGO_BIN_EXE_polyhub"),
        &pw,
        "bob",
        &password_of("bob"),
    );
    // Replacing a password keeps one line for the user.
    polyhub_passwd(
        env!("CARGO_BIN_EXE_polyhub"),
        &pw,
        "alice",
        &password_of("alice"),
    );
    let text = std::fs::read_to_string(&pw).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.contains(":$7$101$")), "{text}");
    std::fs::write(dir.path().join("acl"), "pattern readwrite #\n").unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    for user in ["alice", "bob"] {
        assert!(broker.publish(Some(user), "c", "t", "x").await, "{user}");
    }
    let out = within(
        "mosquitto_pub with a wrong password",
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-u", "alice", "-P", "first", "-t", "t", "-m", "x"])
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success(), "the old password still works");
}

/// Lines `mosquitto_passwd` wrote, `$7$` (its default) and `$6$` (`-H
/// sha512`), verify in polyhub.
#[test]
fn polyhub_verifies_password_files_written_by_mosquitto_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwords");
    mosquitto_passwd(&pw, &[], "pbkdf2user", "pw-7");
    mosquitto_passwd(&pw, &["-H", "sha512"], "sha512user", "pw-6");
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(text.contains("pbkdf2user:$7$101$"), "{text}");
    assert!(text.contains("sha512user:$6$"), "{text}");
    let auth = Auth::load(AuthSettings {
        password_file: Some(pw.clone()),
        acl_file: None,
        allow_anonymous: false,
    })
    .unwrap();
    for (user, password) in [("pbkdf2user", "pw-7"), ("sha512user", "pw-6")] {
        assert_eq!(
            auth.authenticate(Some(user), Some(password.as_bytes())),
            Ok(Identity::user(user))
        );
        assert!(auth.authenticate(Some(user), Some(b"wrong")).is_err());
    }
}

/// `polyhub passwd` asks twice on a terminal and reads one line from stdin
/// otherwise; a user name with `:` is refused.
#[test]
fn polyhub_passwd_reads_the_password_from_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pw: PathBuf = dir.path().join("passwords");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .arg("passwd")
        .arg(&pw)
        .arg("carol")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from-stdin\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let auth = Auth::load(AuthSettings {
        password_file: Some(pw.clone()),
        acl_file: None,
        allow_anonymous: false,
    })
    .unwrap();
    assert!(auth
        .authenticate(Some("carol"), Some(b"from-stdin"))
        .is_ok());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .args(["passwd", "-b", "x"])
        .arg(&pw)
        .arg("bad:name")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`:`"));
}
