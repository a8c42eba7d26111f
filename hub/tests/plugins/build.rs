//! Building plugin crates from tests and benchmarks, in a target dir of
//! their own; used as a module (`#[path]`) by hub/tests/plugin_*.rs and
//! hub/benches/plugin.rs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One build at a time: variants share a target dir and an output name.
static BUILD: Mutex<()> = Mutex::new(());

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("hub/ has a parent")
        .to_path_buf()
}

/// `Cargo.toml` of a crate, relative to the workspace root.
pub fn manifest(dir: &str) -> PathBuf {
    workspace().join(dir).join("Cargo.toml")
}

/// Where plugin crates are built: apart from the workspace's own target dir
/// (a build in the same dir would wait on the lock of the running `cargo test`).
pub fn target_dir() -> PathBuf {
    workspace().join("target").join("plugin-tests")
}

/// Builds the `cdylib` crate of `manifest` with `features` (comma-separated,
/// may be empty) and returns a private copy of `lib_name`, named after the
/// variant so that loaded libraries are never overwritten.
pub fn build(manifest: &Path, lib_name: &str, features: &str, release: bool) -> PathBuf {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if release {
        cmd.arg("--release");
    }
    if !features.is_empty() {
        cmd.arg("--features").arg(features);
    }
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building {} failed:\n{}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let profile = if release { "release" } else { "debug" };
    let built = target_dir().join(profile).join(lib_name);
    let variant = if features.is_empty() {
        "default"
    } else {
        features
    };
    let copies = target_dir().join("loaded");
    std::fs::create_dir_all(&copies).unwrap();
    remove_stale_copies(&copies);
    let copy = copies.join(format!(
        "{}-{}-{}-{}.so",
        lib_name.trim_end_matches(".so"),
        variant.replace(',', "+"),
        profile,
        std::process::id()
    ));
    if !copy.exists() {
        // Copy to a temporary name and rename: the copy appears whole.
        let tmp = copy.with_extension("tmp");
        std::fs::copy(&built, &tmp).unwrap();
        std::fs::rename(&tmp, &copy).unwrap();
    }
    copy
}

/// Removes copies left by earlier runs (older than an hour), once per process.
fn remove_stale_copies(dir: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600));
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    });
}
