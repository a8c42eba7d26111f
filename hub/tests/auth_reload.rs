//! `polyhub run` with `[auth]`: SIGHUP re-reads the password and ACL files,
//! keeps the old ones (and runs on) when the new ones are wrong, and
//! `polyhub check` names the file and line of a mistake.
#![cfg(all(unix, feature = "http"))]

mod common;

use std::process::Stdio;

use common::{free_tcp_port, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("polyhub.toml");
    std::fs::write(
        &path,
        format!(
            "[auth]\npassword_file = \"passwords\"\nacl_file = \"acl\"\n\n\
             [[adapters]]\nname = \"http\"\ntype = \"http\"\n[adapters.config]\nbind = \"127.0.0.1:{}\"\n",
            free_tcp_port()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("passwords"),
        "# written by hand\nuser1:$6$QTbn8jY9G60YGmHt$+9fcThEC7KhcskZXS9ypUwJvF2148cK7tcn26+ekDjV0S1fMjqM8oI/gExiV7x7DogI8qOmo9cRnaZUfN63Cyw==\n",
    )
    .unwrap();
    std::fs::write(dir.join("acl"), "user user1\ntopic readwrite a/#\n").unwrap();
    path
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// The first log line holding `needle`.
async fn until(lines: &mut Lines, needle: &str) -> String {
    within(needle, async {
        loop {
            match lines.next_line().await.unwrap() {
                Some(l) if l.contains(needle) => return l,
                Some(_) => {}
                None => panic!("polyhub exited before logging `{needle}`"),
            }
        }
    })
    .await
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_auth_files_and_keeps_the_old_ones_when_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // Run from elsewhere: the file paths are relative to the config's directory.
    let mut child = Command::new(env!("CARGO_BIN_EXE_polyhub"))
        .arg("run")
        .arg(config(dir.path()))
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    until(&mut lines, "Hub running.").await;

    std::fs::write(dir.path().join("acl"), "user user1\ntopic raedwrite a/#\n").unwrap();
    signal(pid, "HUP");
    let line = until(&mut lines, "Kept the previous [auth] users and rules").await;
    assert!(line.contains("acl:2: unknown access `raedwrite`"), "{line}");

    std::fs::write(
        dir.path().join("acl"),
        "user user1\ntopic readwrite a/#\nuser user2\ntopic read b\n",
    )
    .unwrap();
    signal(pid, "HUP");
    let line = until(&mut lines, "Reloaded the [auth] password and ACL files.").await;
    assert!(
        line.contains("users=1") && line.contains("acl_users=2"),
        "{line}"
    );

    signal(pid, "TERM");
    let status = within("polyhub exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn check_names_the_file_and_line_of_a_bad_password_or_acl_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path());
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyhub"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check();
    assert!(ok, "{out}");
    assert!(
        out.contains("[auth]: 1 user(s), ACL for 1 user(s), anonymous refused"),
        "{out}"
    );

    std::fs::write(dir.path().join("acl"), "user user1\n\ntopic read a/+b\n").unwrap();
    let (ok, out) = check();
    assert!(!ok);
    let acl = dir.path().join("acl");
    assert!(
        out.contains(&format!(
            "key `auth.acl_file`: {}:3: `a/+b`: invalid topic filter",
            acl.display()
        )),
        "{out}"
    );

    std::fs::write(dir.path().join("acl"), "user user1\n").unwrap();
    std::fs::write(dir.path().join("passwords"), "user1:secret\n").unwrap();
    let (ok, out) = check();
    assert!(!ok);
    assert!(out.contains("key `auth.password_file`"), "{out}");
    assert!(
        out.contains("passwords:1: user `user1`: the password is not hashed"),
        "{out}"
    );

    std::fs::remove_file(dir.path().join("passwords")).unwrap();
    let (ok, out) = check();
    assert!(!ok);
    assert!(out.contains("cannot read the password file"), "{out}");
}

/// Adapters reach `[auth]` through their context: refusals and denials are
/// counted per adapter and action on `/metrics`; without `[auth]` everything
/// is allowed.
#[tokio::test]
async fn adapters_authorize_through_their_context_and_denials_are_counted() {
    use polyhub_sdk::{Action, Identity};
    let dir = tempfile::tempdir().unwrap();
    config(dir.path());
    let hub = common::start_hub(&format!(
        "[auth]\npassword_file = \"{0}/passwords\"\nacl_file = \"{0}/acl\"\n",
        dir.path().display()
    ))
    .await;
    let ctx = hub.attach("dev", "test");
    assert!(ctx.auth_enabled());
    // The fixed `$6$` line in `config` is for the password `user6pw`.
    let user1 = ctx
        .authenticate(Some("user1"), Some(b"user6pw"), Some("peer-1"))
        .unwrap();
    assert_eq!(user1, Identity::user("user1"));
    assert!(ctx
        .authenticate(Some("user1"), Some(b"nope"), None)
        .is_err());
    assert!(ctx.authenticate(None, None, None).is_err());
    assert!(ctx.authorize(&user1, "c1", "a/b", Action::Write));
    assert!(!ctx.authorize(&user1, "c1", "b/c", Action::Write));
    assert!(!ctx.authorize(&user1, "c1", "b/c", Action::Write));
    assert!(!ctx.authorize(&user1, "c1", "b/#", Action::Subscribe));
    let snapshot = hub.snapshot();
    let m = &snapshot
        .adapters
        .iter()
        .find(|a| a.name == "dev")
        .unwrap()
        .metrics;
    assert_eq!(
        (
            m.denied("connect"),
            m.denied("write"),
            m.denied("subscribe")
        ),
        (2, 2, 1)
    );
    let text = polyhub_sdk::status::prometheus(&snapshot);
    assert!(
        text.contains(
            "polyhub_auth_denied_total{hub=\"polyhub\",adapter=\"dev\",action=\"write\"} 2"
        ),
        "{text}"
    );
    hub.shutdown().await.unwrap();

    let open = common::start_hub("").await;
    let ctx = open.attach("dev", "test");
    assert!(!ctx.auth_enabled());
    let anyone = ctx.authenticate(Some("x"), None, None).unwrap();
    assert!(ctx.authorize(&anyone, "c", "$SYS/x", Action::Write));
    open.shutdown().await.unwrap();
}
