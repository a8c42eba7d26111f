//! One comparison run: for each protocol, a hub with a generated config on
//! free ports, relays in front of it, a client pair, then the measured
//! phases for every payload size.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::runtime::Handle;

use super::clients::{self, Pair};
use super::relay::Relay;
use super::report::{Report, Row, Skipped};
use super::{payload, spec, stats, CompareError, Options, Protocol};
use crate::{Config, Hub, Registry};

/// The topic every message goes to (10 bytes, as in OVERHEADS.md).
pub const TOPIC: &str = "sensors/t1";
/// How long one protocol may take in all, before it is cut short.
const PROTOCOL_LIMIT: Duration = Duration::from_secs(60);
/// How long to wait for one message in the paced phase.
const MESSAGE_WAIT: Duration = Duration::from_secs(2);
/// How long connecting and subscribing may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(20);
/// Pause before reading counters, so delayed TCP ACKs (40 ms on Linux) of
/// the last message are counted too.
const SETTLE: Duration = Duration::from_millis(60);
/// IPv4 + TCP header with Linux's default timestamps option.
pub const TCP_HEADER: u64 = 52;
/// IPv4 + UDP header.
pub const UDP_HEADER: u64 = 28;

/// Names used in one protocol's run (they enter the spec minimum).
struct Names {
    amqp_in: String,
    amqp_out: String,
    xmpp_pub: String,
    xmpp_sub: String,
    xmpp_in: String,
    xmpp_out: String,
}

impl Names {
    fn new(options: &Options) -> Names {
        let tag = format!(
            "{:x}",
            std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
        );
        let d = &options.servers.xmpp_domain;
        Names {
            amqp_in: format!("polyhub-cmp-in-{tag}"),
            amqp_out: format!("polyhub-cmp-out-{tag}"),
            xmpp_pub: format!("polyhub-cmp-pub@{d}"),
            xmpp_sub: format!("polyhub-cmp-sub@{d}"),
            xmpp_in: format!("polyhub-cmp-in@{d}"),
            xmpp_out: format!("polyhub-cmp-out@{d}"),
        }
    }
}

/// Runs every protocol of `options` in turn.
pub(super) async fn run_all(options: &Options, hub_rt: Handle) -> Report {
    let total = (options.protocols.len() * options.sizes.len()) as u64;
    let bar = if options.progress {
        let b = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
        {
            b.set_style(style);
        }
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for &protocol in &options.protocols {
        bar.set_message(protocol.to_string());
        let before = rows.len();
        let names = Names::new(options);
        let outcome = tokio::time::timeout(
            PROTOCOL_LIMIT,
            run_protocol(protocol, options, &names, &hub_rt, &bar, &mut rows),
        )
        .await;
        let reason = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("did not finish within {PROTOCOL_LIMIT:?}")),
        };
        let done = rows.len() - before;
        if let Some(reason) = reason {
            tracing::warn!(protocol = %protocol, reason = %reason, "Protocol skipped.");
            bar.inc((options.sizes.len() - done) as u64);
            let reason = if done > 0 {
                format!("{reason} (after {done} payload size(s))")
            } else {
                reason
            };
            // XMPP needs accounts that only a test setup creates: say which.
            let reason = if protocol == Protocol::Xmpp && done == 0 {
                format!(
                    "{reason}; XMPP needs the accounts {}, {}, {} and {} with password `{}` on {}: \
                     create them (Prosody: prosodyctl register polyhub-cmp-pub {} PASSWORD, and so on) \
                     or pass --xmpp, --xmpp-domain and --xmpp-password (the test setup's private \
                     Prosody has them: --xmpp 127.0.0.1:$(cat /tmp/polyhub-prosody/port))",
                    names.xmpp_pub, names.xmpp_sub, names.xmpp_in, names.xmpp_out,
                    options.servers.xmpp_password, options.servers.xmpp, options.servers.xmpp_domain
                )
            } else {
                reason
            };
            skipped.push(Skipped {
                protocol: protocol.to_string(),
                reason,
            });
        }
    }
    bar.finish_and_clear();
    Report {
        rows,
        skipped,
        messages: options.messages,
        acked: options.acked,
        elapsed_secs: started.elapsed().as_secs_f64(),
    }
}

fn free_tcp() -> Result<SocketAddr, CompareError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_udp() -> Result<SocketAddr, CompareError> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

async fn reachable(what: &str, addr: SocketAddr) -> Result<(), CompareError> {
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(CompareError::Client {
            protocol: "server",
            message: format!("{what} at {addr} is unreachable: {e}"),
        }),
        Err(_) => Err(CompareError::Timeout(format!("{what} at {addr}"))),
    }
}

/// The generated hub config of one protocol: an inbound instance the
/// publisher talks to and an outbound one the subscriber talks to.
fn hub_config(
    protocol: Protocol,
    options: &Options,
    names: &Names,
    in_addr: SocketAddr,
    out_addr: SocketAddr,
) -> String {
    let qos = u8::from(options.acked);
    let head = "[hub]\nname = \"polyhub-compare\"\n";
    match protocol {
        Protocol::Mqtt => format!(
            "{head}
[[adapters]]
name = \"mqtt_in\"
type = \"mqtt\"
[adapters.config]
listen = \"{in_addr}\"
subscribe = [\"{TOPIC}\"]
forward = []

[[adapters]]
name = \"mqtt_out\"
type = \"mqtt\"
[adapters.config]
listen = \"{out_addr}\"
subscribe = []
forward = [\"{TOPIC}\"]
"
        ),
        Protocol::Coap => format!(
            "{head}
[[adapters]]
name = \"coap_in\"
type = \"coap\"
[adapters.config]
bind = \"{in_addr}\"

[[adapters]]
name = \"coap_out\"
type = \"coap\"
[adapters.config]
bind = \"{out_addr}\"
"
        ),
        Protocol::Http => format!(
            "{head}
[[adapters]]
name = \"http_in\"
type = \"http\"
[adapters.config]
bind = \"{in_addr}\"

[[adapters]]
name = \"http_out\"
type = \"http\"
[adapters.config]
bind = \"{out_addr}\"
"
        ),
        Protocol::Amqp => {
            let (user, pass) = &options.servers.amqp_login;
            let url = format!("amqp://{user}:{pass}@{}/%2f", options.servers.amqp);
            format!(
                "{head}
[[adapters]]
name = \"amqp_in\"
type = \"amqp\"
[adapters.config]
url = \"{url}\"
exchange = \"{}\"
bindings = [\"{TOPIC}\"]
forward = []
qos = {qos}

[[adapters]]
name = \"amqp_out\"
type = \"amqp\"
[adapters.config]
url = \"{url}\"
exchange = \"{}\"
bindings = []
forward = [\"{TOPIC}\"]
qos = {qos}
",
                names.amqp_in, names.amqp_out
            )
        }
        Protocol::Xmpp => {
            let server = options.servers.xmpp;
            let pw = &options.servers.xmpp_password;
            format!(
                "{head}
[[adapters]]
name = \"xmpp_in\"
type = \"xmpp\"
[adapters.config]
jid = \"{}/polyhub\"
password = \"{pw}\"
server = \"{server}\"
tls = \"none\"

[[adapters]]
name = \"xmpp_out\"
type = \"xmpp\"
[adapters.config]
jid = \"{}/polyhub\"
password = \"{pw}\"
server = \"{server}\"
tls = \"none\"
subscribers = [{{ jid = \"{}\", filter = \"{TOPIC}\" }}]
",
                names.xmpp_in, names.xmpp_out, names.xmpp_sub
            )
        }
    }
}

/// Shuts the hub down on its own runtime when dropped (also when a
/// protocol's run is cut short).
struct HubGuard {
    hub: Option<Hub>,
    rt: Handle,
}

impl HubGuard {
    async fn stop(mut self) {
        if let Some(hub) = self.hub.take() {
            let _ = self.rt.spawn(async move { hub.shutdown().await }).await;
        }
    }
}

impl Drop for HubGuard {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.take() {
            self.rt.spawn(async move {
                let _ = hub.shutdown().await;
            });
        }
    }
}

async fn start_hub(text: String, rt: &Handle) -> Result<HubGuard, CompareError> {
    let config = Config::parse(&text, "<compare>", &Registry::builtin(), None)
        .map_err(|e| CompareError::Hub(e.to_string()))?;
    let hub = rt
        .spawn(async move { Hub::start(config).await })
        .await
        .map_err(|e| CompareError::Hub(e.to_string()))?
        .map_err(|e| CompareError::Hub(e.to_string()))?;
    Ok(HubGuard {
        hub: Some(hub),
        rt: rt.clone(),
    })
}

/// The spec minimum, end to end (both hops), in application bytes.
fn spec_min(protocol: Protocol, names: &Names, host: &str, size: usize, acked: bool) -> usize {
    let key = clients::amqp::routing_key(TOPIC);
    let mut path = vec!["ps"];
    path.extend(TOPIC.split('/'));
    match protocol {
        Protocol::Mqtt => 2 * spec::mqtt_hop(TOPIC, size, acked),
        Protocol::Coap => {
            spec::coap_post(&path, 2, size, acked) + spec::coap_notification(2, 1, size, acked)
        }
        Protocol::Http => {
            spec::http_post(&format!("/topics/{TOPIC}"), host, size)
                + spec::http_sse_event(TOPIC, size)
        }
        Protocol::Amqp => {
            spec::amqp_publish(&names.amqp_in, &key, size, acked)
                + spec::amqp_deliver(
                    clients::amqp::CONSUMER_TAG,
                    &names.amqp_out,
                    &key,
                    size,
                    acked,
                )
        }
        Protocol::Xmpp => {
            let sm_ack = if acked {
                2 * "<a xmlns='urn:xmpp:sm:3' h='1'/>".len()
            } else {
                0
            };
            spec::xmpp_message("to", &names.xmpp_in, TOPIC, size)
                + spec::xmpp_message("from", &names.xmpp_out, TOPIC, size)
                + sm_ack
        }
    }
}

/// Why measured and spec figures differ, per protocol.
fn difference_note(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Mqtt => "PUBLISH is all there is; any excess is the broker's choice of QoS/packet id",
        Protocol::Coap => "hub responses to NON, Observe sequence (up to 3 B) and Content-Format in notifications; >1024 B goes block-wise (a 2.31 round trip per block)",
        Protocol::Http => "client and server headers beyond Host/Content-Length/Date (accept, content-type), SSE chunk framing, the JSON's content_type/timestamp fields",
        Protocol::Amqp => "the hub's AMQP properties (content-type, x-polyhub-origin header, delivery mode), a generated consumer tag, the server's frame choices",
        Protocol::Xmpp => "server-stamped full JIDs, id/type/xmlns attributes, XEP-0198 <r/>/<a/> when stream management is on",
    }
}

async fn run_protocol(
    protocol: Protocol,
    options: &Options,
    names: &Names,
    hub_rt: &Handle,
    bar: &ProgressBar,
    rows: &mut Vec<Row>,
) -> Result<(), CompareError> {
    if Registry::builtin().get(protocol.as_str()).is_none() {
        return Err(CompareError::Hub(format!(
            "this polyhub was built without the \"{protocol}\" adapter"
        )));
    }
    let udp = protocol == Protocol::Coap;
    // Adapter addresses (the hub listens there) or the external server.
    let (pub_server, sub_server, in_addr, out_addr) = match protocol {
        Protocol::Amqp => {
            reachable("RabbitMQ", options.servers.amqp).await?;
            let a = options.servers.amqp;
            (a, a, a, a)
        }
        Protocol::Xmpp => {
            reachable("the XMPP server", options.servers.xmpp).await?;
            let a = options.servers.xmpp;
            (a, a, a, a)
        }
        Protocol::Coap => {
            let (i, o) = (free_udp()?, free_udp()?);
            (i, o, i, o)
        }
        _ => {
            let (i, o) = (free_tcp()?, free_tcp()?);
            (i, o, i, o)
        }
    };
    let hub = start_hub(
        hub_config(protocol, options, names, in_addr, out_addr),
        hub_rt,
    )
    .await?;

    let (pub_relay, sub_relay) = if udp {
        (Relay::udp(pub_server).await?, Relay::udp(sub_server).await?)
    } else {
        (Relay::tcp(pub_server).await?, Relay::tcp(sub_server).await?)
    };
    let (p, s) = (pub_relay.addr, sub_relay.addr);
    let acked = options.acked;
    let connect = async {
        match protocol {
            Protocol::Mqtt => clients::mqtt::connect(p, s, TOPIC, acked).await,
            Protocol::Coap => clients::coap::connect(p, s, TOPIC, acked).await,
            Protocol::Http => clients::http::connect(p, s, TOPIC).await,
            Protocol::Amqp => {
                let (u, pw) = &options.servers.amqp_login;
                clients::amqp::connect(p, s, (u, pw), &names.amqp_in, &names.amqp_out, TOPIC, acked)
                    .await
            }
            Protocol::Xmpp => {
                let account = |jid: &str| clients::xmpp::Account {
                    jid: jid.to_owned(),
                    password: options.servers.xmpp_password.clone(),
                };
                clients::xmpp::connect(
                    p,
                    s,
                    &account(&names.xmpp_pub),
                    &account(&names.xmpp_sub),
                    &names.xmpp_in,
                    &names.xmpp_out,
                    TOPIC,
                    acked,
                )
                .await
            }
        }
    };
    let mut pair = tokio::time::timeout(CONNECT_LIMIT, connect)
        .await
        .map_err(|_| CompareError::Timeout(format!("{protocol} clients connecting")))??;
    tokio::time::sleep(SETTLE).await;
    let setup = pub_relay.meter.snapshot().plus(&sub_relay.meter.snapshot());
    let sub_setup = sub_relay.meter.snapshot();
    let setup_round_trips = sub_setup.round_trips + sub_setup.connections;

    let header = if udp { UDP_HEADER } else { TCP_HEADER };
    let mut seq: u32 = 0;
    let base = Instant::now();
    for &size in &options.sizes {
        bar.set_message(format!("{protocol} {size} B"));
        warm_up(&mut pair, &mut seq, base, size).await?;

        let cpu0 = stats::hub_cpu_sample();
        let before_pub = pub_relay.meter.snapshot();
        let before_sub = sub_relay.meter.snapshot();
        let (delivered, mut latencies) =
            paced(&mut pair, &mut seq, base, size, options.messages).await?;
        tokio::time::sleep(SETTLE).await;
        let pub_leg = pub_relay.meter.snapshot().since(&before_pub);
        let sub_leg = sub_relay.meter.snapshot().since(&before_sub);
        let (burst_delivered, throughput) =
            burst(&mut pair, &mut seq, base, size, options.messages).await?;
        let cpu = stats::hub_cpu_sample().since(&cpu0);
        if delivered == 0 {
            return Err(CompareError::Timeout(format!(
                "no message of {size} B arrived"
            )));
        }
        let pct = stats::percentiles(&mut latencies);
        let n = delivered as f64;
        let per = |v: u64| v as f64 / n;
        let both = pub_leg.plus(&sub_leg);
        rows.push(Row {
            protocol: protocol.to_string(),
            payload_size: size,
            delivery: protocol.delivery(acked).to_owned(),
            messages: options.messages,
            delivered,
            burst_delivered,
            bytes_per_message: per(both.bytes()),
            publisher_up_bytes: per(pub_leg.up_bytes),
            publisher_down_bytes: per(pub_leg.down_bytes),
            subscriber_down_bytes: per(sub_leg.down_bytes),
            subscriber_up_bytes: per(sub_leg.up_bytes),
            packets_per_message: per(both.packets()),
            wire_bytes_per_message: per(both.bytes() + both.packets() * header),
            spec_min_bytes_per_message: spec_min(protocol, names, &p.to_string(), size, acked)
                as f64,
            overhead_over_spec: 0.0,
            spec_note: difference_note(protocol).to_owned(),
            setup_bytes: setup.bytes(),
            setup_round_trips,
            latency_p50_us: pct.p50,
            latency_p90_us: pct.p90,
            latency_p99_us: pct.p99,
            throughput_msg_per_s: throughput,
            hub_cpu_us_per_message: cpu.as_secs_f64() * 1e6
                / (delivered + burst_delivered).max(1) as f64,
        });
        if let Some(r) = rows.last_mut() {
            r.overhead_over_spec = r.bytes_per_message - r.spec_min_bytes_per_message;
        }
        bar.inc(1);
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), pair.publisher.close()).await;
    drop(pair);
    drop((pub_relay, sub_relay));
    hub.stop().await;
    Ok(())
}

/// Sends until one message comes through (subscriptions in place all the
/// way), then drains what is left.
async fn warm_up(
    pair: &mut Pair,
    seq: &mut u32,
    base: Instant,
    size: usize,
) -> Result<(), CompareError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        *seq += 1;
        pair.publisher
            .publish(payload::encode(*seq, base, size))
            .await?;
        match tokio::time::timeout(Duration::from_millis(300), pair.received.recv()).await {
            Ok(Some(_)) => break,
            Ok(None) => {
                return Err(CompareError::Timeout(
                    "subscriber closed during warm-up".into(),
                ))
            }
            Err(_) if Instant::now() > deadline => {
                return Err(CompareError::Timeout(
                    "no message came through the hub in 10 s".into(),
                ))
            }
            Err(_) => {}
        }
    }
    tokio::time::sleep(SETTLE).await;
    while pair.received.try_recv().is_ok() {}
    Ok(())
}

/// One message at a time, each awaited at the subscriber: bytes, packets
/// and latency without queueing.
async fn paced(
    pair: &mut Pair,
    seq: &mut u32,
    base: Instant,
    size: usize,
    n: usize,
) -> Result<(usize, Vec<Duration>), CompareError> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        *seq += 1;
        let want = *seq;
        pair.publisher
            .publish(payload::encode(want, base, size))
            .await?;
        let wait = async {
            while let Some(r) = pair.received.recv().await {
                if let Some((got, lat)) = payload::decode(&r.payload, base, r.at) {
                    if got == want {
                        return Some(lat);
                    }
                }
            }
            None
        };
        if let Ok(Some(lat)) = tokio::time::timeout(MESSAGE_WAIT, wait).await {
            latencies.push(lat);
        }
    }
    Ok((latencies.len(), latencies))
}

/// `n` messages back to back: `(delivered, messages per second)` from the
/// first send to the last delivery.
async fn burst(
    pair: &mut Pair,
    seq: &mut u32,
    base: Instant,
    size: usize,
    n: usize,
) -> Result<(usize, f64), CompareError> {
    let first = *seq + 1;
    let last = *seq + n as u32;
    *seq = last;
    let start = Instant::now();
    let mut got = 0usize;
    let mut last_at = start;
    let Pair {
        publisher,
        received,
        ..
    } = pair;
    let send = async {
        for s in first..=last {
            publisher.publish(payload::encode(s, base, size)).await?;
        }
        Ok::<(), CompareError>(())
    };
    let recv = async {
        loop {
            match tokio::time::timeout(MESSAGE_WAIT, received.recv()).await {
                Ok(Some(r)) => {
                    if let Some((s, _)) = payload::decode(&r.payload, base, r.at) {
                        if (first..=last).contains(&s) {
                            got += 1;
                            last_at = r.at;
                            if got == n {
                                return;
                            }
                        }
                    }
                }
                _ => return,
            }
        }
    };
    let (sent, ()) = tokio::join!(send, recv);
    sent?;
    let secs = last_at.saturating_duration_since(start).as_secs_f64();
    let rate = if secs > 0.0 { got as f64 / secs } else { 0.0 };
    Ok((got, rate))
}
