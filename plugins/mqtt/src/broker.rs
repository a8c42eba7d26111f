//! The embedded broker (rumqttd): its listeners run on a thread of their own
//! with a current-thread runtime, so stopping it closes every device
//! connection; the adapter is attached to the broker's router through an
//! in-process link and moves messages between it and the hub.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::Poll;
use std::thread;

use bytes::BytesMut;
use polyhub_sdk::{AdapterContext, AdapterError, AdapterState, Envelope, QoS, TopicFilter};
use polyhub_sdk::{AdapterMetrics, PublishError};
use rumqttd::local::LinkBuilder;
use rumqttd::protocol::{
    Error as ProtocolError, Filter, Packet, Protocol, PubAck, PubAckReason, RetainForwardRule,
    Subscribe,
};
use rumqttd::{
    ConnectionSettings, LinkType, Notification, Router, RouterConfig, Server, ServerSettings,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::BrokerSettings;
use crate::convert;
use crate::error::MqttError;

/// Size of one segment of a filter's in-memory log.
const SEGMENT_SIZE: usize = 4 << 20;
/// Segments kept per filter.
const SEGMENT_COUNT: usize = 4;
/// Devices the broker accepts at once.
const MAX_CONNECTIONS: usize = 10_000;
/// Unacknowledged QoS 1 messages per device.
const MAX_INFLIGHT: usize = 100;

/// rumqttd's MQTT 3.1.1 codec with the adapter's marks (a stop-gap until
/// the embedded broker is replaced): a device publish is read with its QoS
/// attached ([`convert::QOS_MARK`]), because rumqttd forwards at the
/// subscription's QoS; properties are dropped on the way out to a device.
/// Refused bytes are counted by reason before rumqttd drops the device.
#[derive(Debug, Clone)]
struct MarkedV4 {
    metrics: std::sync::Arc<AdapterMetrics>,
}

impl Protocol for MarkedV4 {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, ProtocolError> {
        let read = convert::read_device_packet(stream, max_size);
        if let Err(e) = &read {
            if let Some(reason) = convert::device_error_reason(e) {
                self.metrics.record_rejected(reason);
                debug!(reason, error = %e, "Refused a packet from a device.");
            }
        }
        read
    }

    fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, ProtocolError> {
        convert::write_device_packet(packet, out)
    }
}

/// Checks that `addr` can be bound, with an error that says what to do
/// when it cannot.
fn check_bind(addr: SocketAddr, key: &str) -> Result<(), AdapterError> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(AdapterError::Bind {
            addr: addr.to_string(),
            source: io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "port {port} is already in use by another program. Set another port \
                     in `{key}`; if that program is an MQTT broker (Mosquitto?), you can \
                     instead replace `listen` with `url = \"mqtt://127.0.0.1:{port}\"` to join it",
                    port = addr.port()
                ),
            ),
        }),
        Err(e) => Err(AdapterError::Bind {
            addr: addr.to_string(),
            source: e,
        }),
    }
}

fn server_settings(name: &str, listen: SocketAddr, s: &BrokerSettings) -> ServerSettings {
    let auth = if s.users.is_empty() {
        None
    } else {
        Some(
            s.users
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        )
    };
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: s.max_payload,
            max_inflight_count: MAX_INFLIGHT,
            auth,
            external_auth: None,
            dynamic_filters: false,
        },
    }
}

/// Runs the embedded broker and the adapter's link to it until shutdown.
pub(crate) async fn run(
    s: BrokerSettings,
    subscribe: Vec<TopicFilter>,
    forward: Vec<TopicFilter>,
    ctx: AdapterContext,
) -> Result<(), AdapterError> {
    check_bind(s.listen, "listen")?;

    let router = Router::new(
        0,
        RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: SEGMENT_COUNT,
            ..RouterConfig::default()
        },
    );
    let router_tx = router.spawn();

    // Listeners on their own thread and runtime: dropping that runtime at
    // shutdown closes the listeners and every device connection.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel::<()>();
    let (failed_tx, mut failed_rx) = mpsc::channel::<String>(2);
    let codec = MarkedV4 {
        metrics: ctx.metrics().clone(),
    };
    let mut v4 = Server::new(
        server_settings("v4", s.listen, &s),
        router_tx.clone(),
        codec,
    );
    let span = ctx.span().clone();
    let server_thread = thread::Builder::new()
        .name(format!("mqtt-{}", ctx.name()))
        .spawn(move || {
            let _enter = span.enter();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = failed_tx.try_send(format!("cannot start the listener runtime: {e}"));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut start = std::pin::pin!(v4.start(LinkType::Remote));
                // The first poll binds the listener (then waits to accept):
                // past it, devices can connect, and the adapter may say Up.
                let first = std::future::poll_fn(|cx| Poll::Ready(start.as_mut().poll(cx))).await;
                if let Poll::Ready(r) = first {
                    let _ = failed_tx.try_send(format!("MQTT 3.1.1 listener failed: {r:?}"));
                    return;
                }
                let _ = bound_tx.send(());
                tokio::select! {
                    _ = stop_rx => {}
                    r = start => {
                        let _ = failed_tx.try_send(format!("MQTT 3.1.1 listener stopped: {r:?}"));
                    }
                }
            });
        })?;

    let client_id = format!("polyhub-{}", ctx.name());
    let link_router = router_tx.clone();
    let built = tokio::task::spawn_blocking(move || {
        LinkBuilder::new(&client_id, link_router)
            .clean_session(true)
            .build()
            .map_err(MqttError::from)
    })
    .await
    .map_err(|e| MqttError::Broker(format!("link setup: {e}")))?;
    let (mut link_tx, mut link_rx, _connack) = built?;

    if !subscribe.is_empty() {
        let filters = subscribe
            .iter()
            .map(|f| Filter {
                path: f.as_str().to_owned(),
                // At QoS 0 rumqttd forwards without waiting for the link's
                // acks (a round trip through its router per batch, which held
                // the link to a few thousand messages a second). That loses
                // nothing a QoS 1 link would keep: rumqttd acks a device
                // when it appends to its log, not when the link took it. The
                // envelope gets the device's own QoS from the codec's mark.
                qos: rumqttd::protocol::QoS::AtMostOnce,
                nolocal: true,
                preserve_retain: true,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        link_tx
            .send(Packet::Subscribe(Subscribe { pkid: 1, filters }, None))
            .await
            .map_err(MqttError::from)?;
    }
    let mut hub_sub = if forward.is_empty() {
        None
    } else {
        Some(
            ctx.subscribe(forward.iter().cloned())
                .map_err(|_| AdapterError::HubClosed)?,
        )
    };

    if bound_rx.await.is_err() {
        // The listener thread ended before binding; it said why.
        let reason = failed_rx
            .try_recv()
            .unwrap_or_else(|_| "listener thread ended".to_owned());
        ctx.metrics().record_error();
        let _ = tokio::task::spawn_blocking(move || server_thread.join()).await;
        return Err(MqttError::Broker(reason).into());
    }
    info!(adapter = %ctx.name(), listen = %s.listen, "Embedded MQTT broker listening.");
    ctx.set_state(AdapterState::Up, None);

    let mut pkid: u16 = 0;
    let result: Result<(), AdapterError> = loop {
        tokio::select! {
            _ = ctx.shutdown().cancelled() => break Ok(()),
            failed = failed_rx.recv() => {
                let reason = failed.unwrap_or_else(|| "listener thread ended".to_owned());
                ctx.metrics().record_error();
                break Err(MqttError::Broker(reason).into());
            }
            note = link_rx.next() => {
                let note = match note {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    Err(e) => break Err(MqttError::from(e).into()),
                };
                match note {
                    Notification::Forward(fwd) => {
                        // The QoS rumqttd forwarded at (the subscription's), which
                        // decides the ack; the envelope gets the device's own.
                        let (qos, id) = convert::broker_header(&fwd.publish);
                        let origin = ctx.origin().with_peer("embedded broker");
                        let props = fwd.properties.as_ref();
                        if convert::is_own_echo(props) {
                            // Our own publish coming back: never into the hub again.
                        } else {
                            match convert::envelope_from_broker(&fwd.publish, props, origin) {
                                Ok(env) => match ctx.publish(env).await {
                                    Ok(()) => {}
                                    Err(PublishError::Quota) => {
                                        // 3.1.1 has no quota error: dropped as Mosquitto
                                        // drops a denied publish, and counted.
                                        ctx.metrics().record_rejected("quota_exceeded");
                                        debug!(adapter = %ctx.name(), "Refused a retained device message: the hub's retained store is full.");
                                    }
                                    Err(_) => break Ok(()),
                                },
                                Err(e) => {
                                    ctx.metrics().record_rejected(e.reason());
                                    warn!(adapter = %ctx.name(), error = %e, "Dropped invalid message from a device.");
                                }
                            }
                        }
                        if qos != QoS::AtMostOnce {
                            // Acked once the hub took it: the broker then sends the next.
                            let ack = Packet::PubAck(PubAck { pkid: id, reason: PubAckReason::Success }, None);
                            if let Err(e) = link_tx.send(ack).await {
                                break Err(MqttError::from(e).into());
                            }
                        }
                    }
                    Notification::Unschedule => {
                        if let Err(e) = link_rx.wake().await {
                            break Err(MqttError::from(e).into());
                        }
                    }
                    Notification::Disconnect(d, _) => {
                        ctx.metrics().record_error();
                        break Err(MqttError::Broker(format!("the broker dropped the adapter's link: {d:?}")).into());
                    }
                    other => debug!(adapter = %ctx.name(), notification = ?other, "Broker notification."),
                }
            }
            env = recv(&mut hub_sub) => {
                let Some(env) = env else { break Ok(()) };
                pkid = pkid.wrapping_add(1).max(1);
                if let Err(e) = send_to_broker(&mut link_tx, &env, pkid).await {
                    break Err(MqttError::from(e).into());
                }
            }
        }
    };

    // Closing the listeners' runtime drops every device connection.
    let _ = stop_tx.send(());
    let joined = tokio::task::spawn_blocking(move || server_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        warn!(adapter = %ctx.name(), "Embedded broker thread did not stop cleanly.");
    }
    info!(adapter = %ctx.name(), "Embedded MQTT broker stopped.");
    result
}

async fn recv(sub: &mut Option<polyhub_sdk::Subscription>) -> Option<std::sync::Arc<Envelope>> {
    match sub {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn send_to_broker(
    link_tx: &mut rumqttd::local::LinkTx,
    env: &Envelope,
    pkid: u16,
) -> Result<(), rumqttd::local::LinkError> {
    let publish = convert::broker_publish(env, pkid);
    // Marked, so that its echo on our own subscription is recognised.
    link_tx
        .send(Packet::Publish(publish, Some(convert::own_marks())))
        .await?;
    Ok(())
}
