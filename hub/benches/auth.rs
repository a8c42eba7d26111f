//! `[auth]` benchmark: `Auth::authorize` on the access-control lab's rules
//! (two patterns, one with `%u`) for 10k users, each with the lab's own
//! rules (`topic readwrite sensor/+/data` or `topic write
//! sensor/temperature/data`), so a check looks up one user among 10k and
//! walks its rules and the patterns. Also a password check (`$7$`, 101
//! iterations), which happens once per connection, not per message.
//!
//! `cargo bench -p polyhub --bench auth`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use polyhub::auth::{Auth, AuthSettings};
use polyhub_sdk::{Action, Identity};

const USERS: usize = 10_000;

fn lab(dir: &std::path::Path) -> Auth {
    let mut acl = String::from("pattern read sensor/+/data\npattern write sensor/%u/+/data\n");
    for i in 0..USERS {
        if i % 2 == 0 {
            acl.push_str(&format!("user user{i}\ntopic readwrite sensor/+/data\n"));
        } else {
            acl.push_str(&format!(
                "user user{i}\ntopic write sensor/temperature/data\n"
            ));
        }
    }
    std::fs::write(dir.join("acl"), acl).unwrap();
    polyhub::auth::password::set_password(&dir.join("passwords"), "user0", b"pw", 101).unwrap();
    Auth::load(AuthSettings {
        password_file: Some(dir.join("passwords")),
        acl_file: Some(dir.join("acl")),
        allow_anonymous: false,
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let auth = lab(dir.path());
    let ids: Vec<Identity> = (0..1024)
        .map(|i| Identity::user(&format!("user{}", (i * 7919) % USERS)))
        .collect();
    let asks: Vec<(String, Action)> = (0..1024)
        .map(|i| match i % 4 {
            0 => ("sensor/fanspeed/data".to_owned(), Action::Write),
            1 => ("sensor/temperature/data".to_owned(), Action::Read),
            2 => (
                format!("sensor/user{}/temperature/data", (i * 7919) % USERS),
                Action::Write,
            ),
            _ => ("other/topic".to_owned(), Action::Read),
        })
        .collect();
    let mut group = c.benchmark_group("auth");
    group.bench_function("authorize/10k-users-lab-rules", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            let (topic, action) = &asks[i];
            black_box(auth.authorize(&ids[i], "client-1", topic, *action).is_ok())
        })
    });
    group.bench_function("authorize/subscribe-filter", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(
                auth.authorize(&ids[i], "client-1", "sensor/#", Action::Subscribe)
                    .is_ok(),
            )
        })
    });
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("authenticate/pbkdf2-101", |b| {
        b.iter(|| black_box(auth.authenticate(Some("user0"), Some(b"pw")).is_ok()))
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
