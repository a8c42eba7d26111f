//! One client pair per protocol (a publisher and a subscriber device),
//! built on the protocol's usual client library, connected through the
//! measuring relays. Each `connect` returns when the subscriber's
//! subscription is in place; received payloads arrive on a channel stamped
//! with the instant they were read.

pub mod amqp;
pub mod coap;
pub mod http;
pub mod mqtt;
pub mod xmpp;

use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::CompareError;

/// A payload as the subscriber got it.
#[derive(Debug)]
pub struct Received {
    /// When the client library handed it over.
    pub at: Instant,
    /// The payload.
    pub payload: Bytes,
}

/// The publishing device: `publish` returns once the message is handed to
/// the protocol at the run's delivery level (written for at-most-once;
/// acknowledged by the server for acknowledged delivery).
pub trait Publisher: Send {
    /// Publishes one payload on the run's topic.
    fn publish(&mut self, payload: Vec<u8>) -> BoxFuture<'_, Result<(), CompareError>>;

    /// Ends the devices' sessions cleanly, where the protocol has a goodbye
    /// the server acts on (an XMPP server otherwise keeps a resumable
    /// session, and its presence, for minutes). Dropping is enough elsewhere.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A connected publisher and subscriber.
pub struct Pair {
    /// The publisher.
    pub publisher: Box<dyn Publisher>,
    /// What the subscriber receives.
    pub received: mpsc::Receiver<Received>,
    /// Background tasks (event loops, readers), aborted on drop.
    pub tasks: Vec<JoinHandle<()>>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Depth of the received-payload channel.
pub const RECEIVED_DEPTH: usize = 8192;
