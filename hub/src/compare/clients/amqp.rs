//! AMQP 0-9-1 devices (lapin) through RabbitMQ: the publisher publishes to
//! the hub's inbound exchange (with publisher confirms for acknowledged
//! delivery), the subscriber consumes an exclusive queue bound to the hub's
//! outbound exchange (`no_ack` for at-most-once, manual acks otherwise).

use std::net::SocketAddr;
use std::time::Instant;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;

use super::{Pair, Publisher, Received, RECEIVED_DEPTH};
use crate::compare::{client_err, CompareError};

const PROTOCOL: &str = "amqp";
/// The subscriber's consumer tag (part of every `basic.deliver`).
pub const CONSUMER_TAG: &str = "c";

/// Topic → routing key, as the hub maps it (`/` ↔ `.`).
pub fn routing_key(topic: &str) -> String {
    topic
        .chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        })
        .collect()
}

struct AmqpPublisher {
    _conn: Connection,
    channel: Channel,
    exchange: String,
    key: String,
}

impl Publisher for AmqpPublisher {
    fn publish(
        &mut self,
        payload: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<(), CompareError>> {
        async move {
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    self.key.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default(),
                )
                .await
                .map_err(|e| client_err(PROTOCOL, e))?;
            // Resolves at once when confirms are off.
            confirm.await.map_err(|e| client_err(PROTOCOL, e))?;
            Ok(())
        }
        .boxed()
    }
}

fn uri(addr: SocketAddr, user: &str, password: &str) -> String {
    format!("amqp://{user}:{password}@{addr}/%2f")
}

/// Connects a publisher (to `in_exchange` via `pub_addr`) and a consumer
/// (of `out_exchange` via `sub_addr`).
#[allow(clippy::too_many_arguments)]
pub async fn connect(
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    (user, password): (&str, &str),
    in_exchange: &str,
    out_exchange: &str,
    topic: &str,
    acked: bool,
) -> Result<Pair, CompareError> {
    let key = routing_key(topic);
    let (tx, received) = mpsc::channel(RECEIVED_DEPTH);
    let sub_conn = Connection::connect(
        &uri(sub_addr, user, password),
        ConnectionProperties::default(),
    )
    .await
    .map_err(|e| client_err(PROTOCOL, e))?;
    let ch = sub_conn
        .create_channel()
        .await
        .map_err(|e| client_err(PROTOCOL, e))?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| client_err(PROTOCOL, e))?;
    ch.queue_bind(
        q.name().clone(),
        out_exchange.into(),
        key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| client_err(PROTOCOL, e))?;
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            CONSUMER_TAG.into(),
            BasicConsumeOptions {
                no_ack: !acked,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| client_err(PROTOCOL, e))?;
    let sub_task = tokio::spawn(async move {
        let _keep = (sub_conn, ch);
        while let Some(d) = consumer.next().await {
            let at = Instant::now();
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(protocol = PROTOCOL, error = %e, "Consumer failed.");
                    return;
                }
            };
            if acked {
                if let Err(e) = d.ack(BasicAckOptions::default()).await {
                    tracing::warn!(protocol = PROTOCOL, error = %e, "Ack failed.");
                }
            }
            let payload = bytes::Bytes::from(d.data);
            if tx.send(Received { at, payload }).await.is_err() {
                return;
            }
        }
    });

    let conn = Connection::connect(
        &uri(pub_addr, user, password),
        ConnectionProperties::default(),
    )
    .await
    .map_err(|e| client_err(PROTOCOL, e))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| client_err(PROTOCOL, e))?;
    if acked {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| client_err(PROTOCOL, e))?;
    }
    Ok(Pair {
        publisher: Box::new(AmqpPublisher {
            _conn: conn,
            channel,
            exchange: in_exchange.to_owned(),
            key,
        }),
        received,
        tasks: vec![sub_task],
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn routing_key_swaps_slash_and_dot() {
        assert_eq!(super::routing_key("sensors/t1.x"), "sensors.t1/x");
    }
}
