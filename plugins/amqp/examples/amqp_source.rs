//! The ceiling line of bench/amqp: publishes COUNT persistent messages of
//! SIZE bytes straight to an exchange with publisher confirms (up to 256
//! unconfirmed, as the hub's AMQP adapter does by default), no MQTT and no
//! bridge. What a consumer receives from this is the most any MQTT → AMQP
//! bridge in front of the same broker can deliver.
//!
//!   amqp_source URL EXCHANGE ROUTING_KEY COUNT SIZE

use std::collections::VecDeque;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const WINDOW: usize = 256;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, exchange, key, count, size] = args.as_slice() else {
        return Err("usage: amqp_source URL EXCHANGE ROUTING_KEY COUNT SIZE".into());
    };
    let count: usize = count.parse()?;
    let body = vec![b'x'; size.parse()?];
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = VecDeque::with_capacity(WINDOW);
    for _ in 0..count {
        if pending.len() >= WINDOW {
            if let Some(confirm) = pending.pop_front() {
                let _ = confirm.await?;
            }
        }
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        let _ = confirm.await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
