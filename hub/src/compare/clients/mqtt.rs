//! MQTT 3.1.1 devices (rumqttc): the publisher publishes at QoS 0 or 1, the
//! subscriber subscribes at the same QoS and acks what it gets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use super::{Pair, Publisher, Received, RECEIVED_DEPTH};
use crate::compare::{client_err, CompareError};

const PROTOCOL: &str = "mqtt";

fn options(id: &str, addr: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    // No PINGREQ within a run: keep-alive longer than any run.
    o.set_keep_alive(Duration::from_secs(600));
    o.set_clean_session(true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

async fn connected(eventloop: &mut EventLoop) -> Result<(), CompareError> {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(client_err(PROTOCOL, e)),
        }
    }
}

struct MqttPublisher {
    client: AsyncClient,
    topic: String,
    qos: QoS,
    acks: mpsc::Receiver<()>,
}

impl Publisher for MqttPublisher {
    fn publish(
        &mut self,
        payload: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<(), CompareError>> {
        async move {
            self.client
                .publish(self.topic.as_str(), self.qos, false, payload)
                .await
                .map_err(|e| client_err(PROTOCOL, e))?;
            if self.qos == QoS::AtLeastOnce {
                self.acks
                    .recv()
                    .await
                    .ok_or_else(|| client_err(PROTOCOL, "publisher connection closed"))?;
            }
            Ok(())
        }
        .boxed()
    }
}

/// Connects a publisher to `pub_addr` and a subscriber to `sub_addr`.
pub async fn connect(
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    topic: &str,
    acked: bool,
) -> Result<Pair, CompareError> {
    let qos = if acked {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let (tx, received) = mpsc::channel(RECEIVED_DEPTH);

    let (sub, mut sub_loop) = AsyncClient::new(options("cmp-sub", sub_addr), 64);
    connected(&mut sub_loop).await?;
    sub.subscribe(topic, qos)
        .await
        .map_err(|e| client_err(PROTOCOL, e))?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let sub_task = tokio::spawn(async move {
        let _keep = sub;
        let mut ready = Some(ready_tx);
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let r = Received {
                        at: Instant::now(),
                        payload: p.payload,
                    };
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(protocol = PROTOCOL, error = %e, "Subscriber connection failed.");
                    return;
                }
            }
        }
    });
    ready_rx
        .await
        .map_err(|_| client_err(PROTOCOL, "subscriber closed before SUBACK"))?;

    let (client, mut pub_loop) = AsyncClient::new(options("cmp-pub", pub_addr), 1024);
    connected(&mut pub_loop).await?;
    let (ack_tx, acks) = mpsc::channel(1024);
    let pub_task = tokio::spawn(async move {
        loop {
            match pub_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if ack_tx.send(()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(protocol = PROTOCOL, error = %e, "Publisher connection failed.");
                    return;
                }
            }
        }
    });
    Ok(Pair {
        publisher: Box::new(MqttPublisher {
            client,
            topic: topic.to_owned(),
            qos,
            acks,
        }),
        received,
        tasks: vec![sub_task, pub_task],
    })
}
