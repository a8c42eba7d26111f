//! Publish→deliver latency through an MQTT broker at a fixed rate, for
//! bench/mqtt: one rumqttc client subscribes to a topic, another publishes
//! RATE messages a second for SECS seconds on it, each payload carrying its
//! sequence number and the publisher's send time; the subscriber stamps the
//! arrival. Both clients run in this one process, so the two timestamps come
//! from the same monotonic clock. The same program measures every broker.
//!
//!   mqtt_latency HOST:PORT RATE SECS QOS
//!
//! Prints one line: `sent=… received=… lost=… p50_us=… p90_us=… p99_us=…
//! p999_us=… max_us=…`. A one-second warm-up at the same rate goes first and
//! is not counted. Exits non-zero when the broker cannot be reached or
//! nothing arrives.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout};

/// Payload: sequence number (u64 BE), send time in ns since the origin (u64 BE).
const PAYLOAD: usize = 16;
/// Marks warm-up messages (their sequence numbers start here).
const WARMUP_BASE: u64 = 1 << 62;

fn options(id: String, host: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(1000);
    o
}

/// Polls `el` until its CONNACK (or an error).
async fn connected(el: &mut EventLoop) -> Result<(), String> {
    loop {
        match timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("connect: {e}")),
            Err(_) => return Err("connect: no CONNACK within 10 s".into()),
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, rate, secs, qos] = args.as_slice() else {
        return Err("usage: mqtt_latency HOST:PORT RATE SECS QOS".into());
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr}: not HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|e| format!("port {port}: {e}"))?;
    let rate: u64 = rate.parse().map_err(|e| format!("rate {rate}: {e}"))?;
    let secs: u64 = secs.parse().map_err(|e| format!("secs {secs}: {e}"))?;
    if rate == 0 || secs == 0 {
        return Err("RATE and SECS must be at least 1".into());
    }
    let qos = match qos.as_str() {
        "0" => QoS::AtMostOnce,
        "1" => QoS::AtLeastOnce,
        "2" => QoS::ExactlyOnce,
        q => return Err(format!("qos {q}: 0, 1 or 2")),
    };
    let topic = format!("bench/latency/{}", std::process::id());
    let origin = Instant::now();

    // The subscriber: stamps each arrival and hands (seq, latency) on.
    let (sub, mut sub_el) = AsyncClient::new(
        options(format!("lat-sub-{}", std::process::id()), host, port),
        64,
    );
    connected(&mut sub_el).await?;
    sub.subscribe(&topic, qos)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    loop {
        match timeout(Duration::from_secs(10), sub_el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("subscribe: {e}")),
            Err(_) => return Err("subscribe: no SUBACK within 10 s".into()),
        }
    }
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(u64, u64)>();
    tokio::spawn(async move {
        loop {
            match sub_el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = origin.elapsed().as_nanos() as u64;
                    if p.payload.len() != PAYLOAD {
                        continue;
                    }
                    let seq = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8]));
                    let sent = u64::from_be_bytes(p.payload[8..].try_into().unwrap_or([0; 8]));
                    if lat_tx.send((seq, now.saturating_sub(sent))).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    return;
                }
            }
        }
    });

    // The publisher.
    let (publ, mut pub_el) = AsyncClient::new(
        options(format!("lat-pub-{}", std::process::id()), host, port),
        1024,
    );
    connected(&mut pub_el).await?;
    tokio::spawn(async move {
        loop {
            if let Err(e) = pub_el.poll().await {
                eprintln!("publisher: {e}");
                return;
            }
        }
    });

    let period_ns = 1_000_000_000 / rate;
    let at = |start: Instant, i: u64| start + Duration::from_nanos(period_ns * i);
    let total = rate * secs;
    let send = |seq: u64| {
        let publ = publ.clone();
        let topic = topic.clone();
        async move {
            let mut payload = Vec::with_capacity(PAYLOAD);
            payload.extend_from_slice(&seq.to_be_bytes());
            let now = origin.elapsed().as_nanos() as u64;
            payload.extend_from_slice(&now.to_be_bytes());
            publ.publish(topic, qos, false, payload)
                .await
                .map_err(|e| format!("publish: {e}"))
        }
    };
    // Warm-up: one second at the same rate, not counted.
    let start = Instant::now();
    for i in 0..rate {
        sleep_until(at(start, i).into()).await;
        send(WARMUP_BASE + i).await?;
    }
    let start = Instant::now();
    for i in 0..total {
        sleep_until(at(start, i).into()).await;
        send(i).await?;
    }

    // Collect until every message is in or nothing came for 5 s.
    let mut lat: Vec<u64> = Vec::with_capacity(total as usize);
    let mut seen = vec![false; total as usize];
    while (lat.len() as u64) < total {
        match timeout(Duration::from_secs(5), lat_rx.recv()).await {
            Ok(Some((seq, l))) => {
                if let Some(s) = seen.get_mut(seq as usize) {
                    if !*s {
                        *s = true;
                        lat.push(l);
                    }
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    if lat.is_empty() {
        return Err("no message arrived".into());
    }
    lat.sort_unstable();
    let us = |ns: u64| ns / 1000;
    println!(
        "sent={total} received={} lost={} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        lat.len(),
        total - lat.len() as u64,
        us(percentile(&lat, 50.0)),
        us(percentile(&lat, 90.0)),
        us(percentile(&lat, 99.0)),
        us(percentile(&lat, 99.9)),
        us(*lat.last().unwrap_or(&0)),
    );
    Ok(())
}
