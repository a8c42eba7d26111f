//! A fast AMQP consumer for bench/amqp: binds an exclusive queue to an
//! exchange, prints `ready`, counts deliveries and prints `done N` once it
//! has COUNT of them (or `timeout N` after 60 s without one). Both bridges
//! of the benchmark are measured with it, so the consumer is the same and
//! not the bottleneck (a Python pika consumer tops out near 15 000 msg/s
//! here, and slows down further on messages with more properties).
//!
//!   amqp_sink URL EXCHANGE ROUTING_KEY COUNT

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, exchange, key, count] = args.as_slice() else {
        return Err("usage: amqp_sink URL EXCHANGE ROUTING_KEY COUNT".into());
    };
    let count: u64 = count.parse()?;
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    if exchange != "amq.topic" {
        // The same declaration the hub makes: whoever comes first creates it.
        ch.exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    ch.queue_bind(
        queue.name().clone(),
        exchange.as_str().into(),
        key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.basic_qos(2000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.name().clone(),
            "amqp_sink".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut got = 0u64;
    while got < count {
        let next = tokio::time::timeout(Duration::from_secs(60), consumer.next()).await;
        let Ok(Some(delivery)) = next else { break };
        let delivery = delivery?;
        got += 1;
        // Acknowledge in batches, as the pika consumer did.
        if got % 100 == 0 || got == count {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    writeln!(
        out,
        "{} {got}",
        if got == count { "done" } else { "timeout" }
    )?;
    out.flush()?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
