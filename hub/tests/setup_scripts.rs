//! `scripts/setup/*.sh` install what they use before they use it, as on a
//! fresh Debian machine with nothing but bash and apt: each script is read in
//! the order `scripts/test.sh` sources them, and every tool a line runs must
//! come from a package an earlier `apt_install` line installed (or be
//! guarded by `command -v TOOL ||`, which installs it on that line).

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Tools the setup scripts may run, and the Debian package providing each.
const TOOLS: &[(&str, &str)] = &[
    ("python3 -m pip", "python3-pip"),
    ("pip3", "python3-pip"),
    ("pip", "python3-pip"),
    ("python3", "python3"),
    ("npm", "npm"),
    ("node", "nodejs"),
    ("chromium", "chromium"),
    ("prosodyctl", "prosody"),
    ("rabbitmq-server", "rabbitmq-server"),
    ("mosquitto", "mosquitto"),
    ("openssl", "openssl"),
    ("socat", "socat"),
    ("curl", "curl"),
];

/// What a script set uses before installing it: `(script, line, tool)`.
fn used_before_installed(scripts: &[(String, String)]) -> Vec<(String, usize, String)> {
    let mut installed: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, text) in scripts {
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split(" #").next().unwrap_or("").trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.split("apt_install ").nth(1) {
                installed.extend(
                    rest.split_whitespace()
                        .take_while(|w| !w.starts_with(['|', '&', ';', ')']))
                        .map(str::to_owned),
                );
                if line.starts_with("apt_install") {
                    continue;
                }
            }
            // `command -v X ... || apt_install P` installs on this line.
            if line.starts_with("command -v") && line.contains("apt_install") {
                continue;
            }
            let mut rest = line.to_owned();
            for (tool, package) in TOOLS {
                if uses(&rest, tool) {
                    if !installed.contains(*package) {
                        problems.push((name.clone(), n + 1, tool.to_string()));
                    }
                    rest = rest.replace(tool, " ");
                }
            }
        }
    }
    problems
}

/// Whether `line` runs `tool` as a command (a whole word, not inside a
/// path, a file name or `import x`).
fn uses(line: &str, tool: &str) -> bool {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(i) = line[from..].find(tool) {
        let start = from + i;
        let end = start + tool.len();
        let before = start.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(end).copied();
        let word_before = matches!(
            before,
            None | Some(b' ' | b'(' | b'$' | b'\'' | b'"' | b'`' | b';' | b'&' | b'|')
        );
        let word_after = matches!(after, None | Some(b' ' | b')' | b';' | b'"' | b'\''));
        let quoted_name = matches!(before, Some(b'"' | b'\'')) && !line[..start].contains("$(");
        if word_before && word_after && !quoted_name {
            return true;
        }
        from = end;
    }
    false
}

fn setup_scripts() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scripts/setup")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read script");
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

#[test]
fn setup_scripts_install_what_they_use_before_using_it() {
    let scripts = setup_scripts();
    assert!(scripts.len() >= 5, "found {} setup scripts", scripts.len());
    let problems = used_before_installed(&scripts);
    assert!(
        problems.is_empty(),
        "used before installed (script, line, tool): {problems:?}"
    );
}

#[test]
fn the_check_catches_pip_before_python3_pip() {
    // What 40-amqp.sh used to do on a fresh machine.
    let bad = vec![(
        "40-amqp.sh".to_owned(),
        "apt_install rabbitmq-server\nif ! python3 -c 'import pika'; then\n  python3 -m pip install pika\nfi\n"
            .to_owned(),
    )];
    let problems = used_before_installed(&bad);
    let tools: Vec<&str> = problems.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(tools, ["python3", "python3 -m pip"], "{problems:?}");
    let good = vec![(
        "x.sh".to_owned(),
        "apt_install python3 python3-pip\npython3 -m pip install pika\ncommand -v node >/dev/null || apt_install nodejs\nnode x.js\n".to_owned(),
    )];
    assert!(used_before_installed(&good).is_empty());
}
