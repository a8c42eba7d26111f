//! The run loop: a TCP listener, one task per connected device, and the
//! hub subscription whose envelopes are written to every device.
//!
//! A device's lines are published into the hub. The subscription includes
//! this adapter's own envelopes (`include_own`), so they come back to reach
//! the adapter's other devices, as on a broker; each is written to every
//! device but the one that sent it. Each device has a bounded queue: when
//! it is full, lines for that device are dropped and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use polyhub_sdk::plugin::tokio;
use polyhub_sdk::reexports::{async_trait, tracing};
use polyhub_sdk::{
    Adapter, AdapterContext, AdapterError, AdapterState, Bytes, Envelope, SubscribeOptions,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::TcpLineConfig;
use crate::convert::{format_line, parse_line, LineError};

/// A `tcp-line` adapter, ready to run.
pub struct TcpLineAdapter {
    config: TcpLineConfig,
}

impl TcpLineAdapter {
    pub fn new(config: TcpLineConfig) -> Self {
        TcpLineAdapter { config }
    }
}

/// The connected devices' peer addresses and queues, by connection number.
#[derive(Default)]
struct Devices {
    queues: Mutex<HashMap<u64, (String, mpsc::Sender<Bytes>)>>,
    next: AtomicU64,
}

impl Devices {
    fn len(&self) -> usize {
        self.queues.lock().map_or(0, |q| q.len())
    }

    fn add(&self, peer: SocketAddr, tx: mpsc::Sender<Bytes>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut q) = self.queues.lock() {
            q.insert(id, (peer.to_string(), tx));
        }
        id
    }

    fn remove(&self, id: u64) {
        if let Ok(mut q) = self.queues.lock() {
            q.remove(&id);
        }
    }

    /// Queues `line` to every device but the one at peer address `except`;
    /// returns how many were full.
    fn broadcast(&self, line: &Bytes, except: Option<&str>) -> u64 {
        let Ok(q) = self.queues.lock() else { return 0 };
        let mut full = 0;
        for (peer, tx) in q.values() {
            if Some(peer.as_str()) == except {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(line.clone()) {
                full += 1;
            }
        }
        full
    }
}

#[async_trait]
impl Adapter for TcpLineAdapter {
    async fn run(self: Box<Self>, ctx: AdapterContext) -> Result<(), AdapterError> {
        let config = Arc::new(self.config);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| AdapterError::Bind {
                    addr: config.listen.to_string(),
                    source,
                })?;
        let options = SubscribeOptions {
            depth: None,
            include_own: true,
            ..SubscribeOptions::default()
        };
        let mut sub = ctx
            .subscribe_with(config.subscribe.iter().cloned(), options)
            .map_err(AdapterError::protocol)?;
        let devices = Arc::new(Devices::default());
        let mut tasks = JoinSet::new();
        let local = listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
        ctx.set_state(AdapterState::Up, None);
        tracing::info!(adapter = %ctx.name(), listen = %local, "Listening for line devices.");

        loop {
            tokio::select! {
                _ = ctx.shutdown().cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if devices.len() >= config.max_devices {
                            ctx.metrics().incr("refused_devices");
                            tracing::warn!(adapter = %ctx.name(), peer = %peer, max = config.max_devices, "Refused a device: too many connected.");
                            continue;
                        }
                        let device = Device { ctx: ctx.clone(), config: config.clone(), devices: devices.clone(), peer };
                        tasks.spawn(device.serve(stream));
                    }
                    Err(e) => {
                        ctx.metrics().record_error();
                        tracing::warn!(adapter = %ctx.name(), error = %e, "Accept failed.");
                    }
                },
                envelope = sub.recv() => {
                    let Some(envelope) = envelope else { break };
                    // A device's own line is not written back to it.
                    let sender = (&*envelope.origin.adapter == ctx.name())
                        .then_some(envelope.origin.peer.as_deref())
                        .flatten();
                    match format_line(&envelope) {
                        Some(line) => {
                            let full = devices.broadcast(&line, sender);
                            for _ in 0..full {
                                ctx.metrics().record_drop();
                            }
                        }
                        None => ctx.metrics().incr("multiline_skipped"),
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.shutdown().await;
        Ok(())
    }
}

/// One connected device.
struct Device {
    ctx: AdapterContext,
    config: Arc<TcpLineConfig>,
    devices: Arc<Devices>,
    peer: SocketAddr,
}

impl Device {
    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (reader, mut writer) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(self.config.device_queue);
        let id = self.devices.add(self.peer, tx);
        tracing::info!(adapter = %self.ctx.name(), peer = %self.peer, "Device connected.");
        let writing = async {
            while let Some(line) = rx.recv().await {
                writer.write_all(&line).await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let reading = self.read_lines(reader);
        let outcome = tokio::select! {
            _ = self.ctx.shutdown().cancelled() => Ok(()),
            r = writing => r,
            r = reading => r,
        };
        self.devices.remove(id);
        match outcome {
            Ok(()) => {
                tracing::info!(adapter = %self.ctx.name(), peer = %self.peer, "Device disconnected.")
            }
            Err(e) => {
                self.ctx.metrics().record_error();
                tracing::warn!(adapter = %self.ctx.name(), peer = %self.peer, error = %e, "Device connection failed.");
            }
        }
    }

    async fn read_lines(&self, reader: tokio::net::tcp::OwnedReadHalf) -> std::io::Result<()> {
        let max = self.config.max_line;
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            let n = (&mut reader)
                .take(max as u64 + 1)
                .read_until(b'\n', &mut buf)
                .await?;
            if n == 0 {
                return Ok(());
            }
            if buf.last() != Some(&b'\n') {
                if buf.len() <= max {
                    // The device closed mid-line: take what it sent.
                    self.line(&buf).await;
                    return Ok(());
                }
                self.ctx.metrics().record_drop();
                self.ctx.metrics().incr("oversized_lines");
                tracing::warn!(adapter = %self.ctx.name(), peer = %self.peer, max_line = max, "Dropped an oversized line.");
                // Skip the rest of it.
                loop {
                    buf.clear();
                    let n = (&mut reader)
                        .take(max as u64)
                        .read_until(b'\n', &mut buf)
                        .await?;
                    if n == 0 {
                        return Ok(());
                    }
                    if buf.last() == Some(&b'\n') {
                        break;
                    }
                }
                continue;
            }
            buf.pop();
            self.line(&buf).await;
        }
    }

    async fn line(&self, line: &[u8]) {
        let (topic, payload) = match parse_line(line) {
            Ok(parts) => parts,
            Err(LineError::Empty) => return,
            Err(e) => {
                self.ctx.metrics().record_error();
                self.ctx.metrics().incr("bad_lines");
                tracing::warn!(adapter = %self.ctx.name(), peer = %self.peer, error = %e, "Dropped a malformed line.");
                return;
            }
        };
        let envelope = Envelope::new(topic, payload)
            .with_qos(self.config.qos)
            .with_origin(self.ctx.origin().with_peer(self.peer));
        if let Err(e) = self.ctx.publish(envelope).await {
            self.ctx.metrics().record_drop();
            tracing::warn!(adapter = %self.ctx.name(), peer = %self.peer, error = %e, "The hub refused a line.");
        }
    }
}
