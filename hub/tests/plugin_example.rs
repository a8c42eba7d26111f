//! The out-of-tree example plugin (`examples/tcp-line-plugin`) as a user
//! would use it: built with cargo in its own target dir, loaded with the
//! config snippet next to it (`plugin.toml`), and talked to by real TCP
//! devices while an in-process client stands in for the rest of the hub.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{free_tcp_port, wait_until, within};
use polyhub::{Config, Hub, Registry};
use polyhub_sdk::{AdapterState, Envelope, Topic, TopicFilter};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

#[path = "plugins/build.rs"]
mod plugin_build;

fn example_plugin() -> PathBuf {
    plugin_build::build(
        &plugin_build::manifest("examples/tcp-line-plugin"),
        "libtcp_line_plugin.so",
        "",
        false,
    )
}

/// The example's `plugin.toml`, pointed at `lib` and a free port.
fn snippet(lib: &std::path::Path, port: u16) -> String {
    let path = plugin_build::workspace().join("examples/tcp-line-plugin/plugin.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("plugin = \"target/release/libtcp_line_plugin.so\""));
    assert!(text.contains("listen = \"127.0.0.1:7070\""));
    text.replace(
        "target/release/libtcp_line_plugin.so",
        &lib.display().to_string(),
    )
    .replace("127.0.0.1:7070", &format!("127.0.0.1:{port}"))
}

struct Device {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Device {
    async fn connect(port: u16) -> Device {
        let stream = within("connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .unwrap();
        let (r, w) = stream.into_split();
        Device {
            lines: BufReader::new(r).lines(),
            writer: w,
        }
    }

    async fn send(&mut self, line: &str) {
        within("device write", self.writer.write_all(line.as_bytes()))
            .await
            .unwrap();
    }

    async fn next_line(&mut self) -> String {
        within("device line", self.lines.next_line())
            .await
            .unwrap()
            .expect("connection open")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_line_plugin_bridges_tcp_devices_and_the_hub() {
    let lib = example_plugin();
    let port = free_tcp_port();
    let config = Config::parse(&snippet(&lib, port), "plugin.toml", &Registry::new(), None)
        .unwrap_or_else(|e| panic!("the example snippet is refused: {e}"));
    let hub = within("hub start", Hub::start(config)).await.unwrap();
    let snap = hub.snapshot();
    assert_eq!(snap.adapters[0].name, "lab-sockets");
    assert_eq!(snap.adapters[0].kind, "tcp-line");
    assert_eq!(snap.adapters[0].state, AdapterState::Up);

    let client = hub.attach("client", "test");
    let mut sensors = client
        .subscribe([TopicFilter::new("sensors/#").unwrap()])
        .unwrap();
    let mut hello = client
        .subscribe([TopicFilter::new("hello/#").unwrap()])
        .unwrap();
    let mut a = Device::connect(port).await;
    let mut b = Device::connect(port).await;
    // A device is registered once the hub got a line from it (a topic no
    // device subscribes to, so no device sees these).
    a.send("hello/a 1\n").await;
    within("device a registered", hello.recv()).await.unwrap();
    b.send("hello/b 1\n").await;
    within("device b registered", hello.recv()).await.unwrap();
    within(
        "publish",
        client.publish(Envelope::new(Topic::new("actuators/sync").unwrap(), "1")),
    )
    .await
    .unwrap();
    assert_eq!(a.next_line().await, "actuators/sync 1");
    assert_eq!(b.next_line().await, "actuators/sync 1");

    // Device → hub.
    a.send("sensors/t1 21.5 C\r\n").await;
    let e = within("hub receives the line", sensors.recv())
        .await
        .unwrap();
    assert_eq!(e.topic.as_str(), "sensors/t1");
    assert_eq!(&e.payload[..], b"21.5 C");
    assert_eq!(&*e.origin.adapter, "lab-sockets");
    assert_eq!(&*e.origin.protocol, "tcp-line");
    assert!(e
        .origin
        .peer
        .as_deref()
        .unwrap_or("")
        .starts_with("127.0.0.1:"));
    // ... and to the adapter's other device, not back to the sender.
    assert_eq!(b.next_line().await, "sensors/t1 21.5 C");

    // Hub → every device.
    within(
        "publish",
        client.publish(Envelope::new(Topic::new("actuators/led").unwrap(), "on")),
    )
    .await
    .unwrap();
    assert_eq!(a.next_line().await, "actuators/led on");
    assert_eq!(b.next_line().await, "actuators/led on");

    // Outside the configured filters: not sent to devices.
    within(
        "publish",
        client.publish(Envelope::new(Topic::new("other/x").unwrap(), "no")),
    )
    .await
    .unwrap();
    within(
        "publish",
        client.publish(Envelope::new(Topic::new("actuators/led").unwrap(), "off")),
    )
    .await
    .unwrap();
    assert_eq!(a.next_line().await, "actuators/led off");

    // Malformed and oversized lines are dropped and counted; the device
    // stays connected and its next line goes through.
    a.send("bad/+/topic 1\n").await;
    a.send(&format!("sensors/big {}\n", "x".repeat(5000))).await;
    a.send("sensors/t2 ok\n").await;
    let e = within("line after bad ones", sensors.recv()).await.unwrap();
    assert_eq!(e.topic.as_str(), "sensors/t2");
    wait_until("plugin counters reported", Duration::from_secs(5), || {
        let s = hub.snapshot();
        let named = &s.adapters[0].metrics.named;
        let get = |k: &str| named.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
        get("bad_lines") == 1 && get("oversized_lines") == 1
    })
    .await;

    within("shutdown", hub.shutdown()).await.unwrap();
    assert_eq!(
        within("device sees the close", a.lines.next_line())
            .await
            .unwrap_or(None),
        None
    );
}
