//! XMPP devices (tokio-xmpp, plaintext c2s on loopback): the publisher
//! sends `<message>` stanzas with a `<subject>` (the topic) and a `<body>`
//! (the payload) to the hub's inbound JID; the subscriber is a static
//! subscriber of the hub's outbound JID and reads the chat messages it gets.
//! tokio-xmpp enables stream management (XEP-0198) when the server offers
//! it; acknowledged delivery waits for the server's `<a/>` of each stanza.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::parsers::jid::{BareJid, Jid};
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::stanzastream::StanzaStage;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, Stanza};

use super::{Pair, Publisher, Received, RECEIVED_DEPTH};
use crate::compare::{client_err, CompareError};

const PROTOCOL: &str = "xmpp";
/// How long a login may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// An account on the XMPP server.
#[derive(Debug, Clone)]
pub struct Account {
    /// Bare JID.
    pub jid: String,
    /// Password.
    pub password: String,
}

async fn login(addr: SocketAddr, account: &Account) -> Result<Client, CompareError> {
    let jid = BareJid::from_str(&account.jid).map_err(|e| client_err(PROTOCOL, e))?;
    let mut client = Client::new_plaintext(
        jid,
        account.password.clone(),
        DnsConfig::addr(&addr.to_string()),
        Timeouts::default(),
    );
    let online = async {
        while let Some(event) = client.next().await {
            match event {
                Event::Online { .. } => return Ok(()),
                Event::Disconnected(e) => {
                    return Err(client_err(PROTOCOL, format!("{}: {e}", account.jid)))
                }
                Event::Stanza(_) => {}
            }
        }
        Err(client_err(PROTOCOL, "stream ended before login"))
    };
    tokio::time::timeout(LOGIN_TIMEOUT, online)
        .await
        .map_err(|_| client_err(PROTOCOL, format!("login of {} timed out", account.jid)))??;
    Ok(client)
}

struct XmppPublisher {
    client: Option<Client>,
    hub: Jid,
    topic: String,
    acked: bool,
    /// Tells the subscriber's task to end its session; it answers when done.
    close_subscriber: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl XmppPublisher {
    /// Reads what the server sent the publisher (acks, presence) so the
    /// client's event queue never fills and stalls its writes.
    fn drain(client: &mut Client) {
        while let Some(Some(_)) = client.next().now_or_never() {}
    }
}

impl Publisher for XmppPublisher {
    fn publish(
        &mut self,
        payload: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<(), CompareError>> {
        async move {
            let body = String::from_utf8(payload).map_err(|e| client_err(PROTOCOL, e))?;
            let client = self
                .client
                .as_mut()
                .ok_or_else(|| client_err(PROTOCOL, "publisher closed"))?;
            Self::drain(client);
            let mut m = Message::new(Some(self.hub.clone()));
            m.subjects.insert(Lang::default(), self.topic.clone());
            m.bodies.insert(Lang::default(), body);
            let mut token = client
                .send_stanza(Stanza::Message(m))
                .await
                .map_err(|e| client_err(PROTOCOL, e))?;
            if self.acked {
                // The ack arrives through the client's event stream.
                let acked = token.wait_for(StanzaStage::Acked);
                tokio::pin!(acked);
                loop {
                    tokio::select! {
                        _ = &mut acked => break,
                        ev = client.next() => if ev.is_none() {
                            return Err(client_err(PROTOCOL, "stream ended"));
                        },
                    }
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn close(&mut self) -> futures::future::BoxFuture<'_, ()> {
        async move {
            if let Some(client) = self.client.take() {
                let _ = client.send_end().await;
            }
            if let Some(tx) = self.close_subscriber.take() {
                let (done_tx, done_rx) = oneshot::channel();
                if tx.send(done_tx).is_ok() {
                    let _ = done_rx.await;
                }
            }
        }
        .boxed()
    }
}

/// Logs in the subscriber and the publisher through their relays.
#[allow(clippy::too_many_arguments)]
pub async fn connect(
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    publisher: &Account,
    subscriber: &Account,
    hub_in: &str,
    hub_out: &str,
    topic: &str,
    acked: bool,
) -> Result<Pair, CompareError> {
    let (tx, received) = mpsc::channel(RECEIVED_DEPTH);
    let mut sub = login(sub_addr, subscriber).await?;
    // Available to its contacts, and directly to the hub's outbound JID: the
    // hub sends nothing to a subscriber it has seen go offline.
    let hub_out = Jid::from_str(hub_out).map_err(|e| client_err(PROTOCOL, e))?;
    for presence in [
        Presence::new(PresenceType::None),
        Presence::new(PresenceType::None).with_to(hub_out),
    ] {
        sub.send_stanza(presence.into())
            .await
            .map_err(|e| client_err(PROTOCOL, e))?;
    }
    let (close_tx, mut close_rx) = oneshot::channel::<oneshot::Sender<()>>();
    let sub_task = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                done = &mut close_rx => {
                    let _ = sub.send_end().await;
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                event = sub.next() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            let at = Instant::now();
            match event {
                // The hub asks for the subscriber's presence: granted, as
                // any XMPP client of a user who wants the hub's messages would.
                Event::Stanza(Stanza::Presence(p)) if p.type_ == PresenceType::Subscribe => {
                    if let Some(from) = p.from.clone() {
                        let grant = Presence::new(PresenceType::Subscribed).with_to(from);
                        let _ = sub.send_stanza(grant.into()).await;
                    }
                }
                Event::Stanza(Stanza::Message(m)) if m.type_ != MessageType::Error => {
                    // The server stamps xml:lang on the stanza, so the body
                    // is keyed by that language, not by "".
                    if let Some((_, body)) = m.get_best_body(vec![]) {
                        let payload = Bytes::copy_from_slice(body.as_bytes());
                        if tx.send(Received { at, payload }).await.is_err() {
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
    });
    let client = login(pub_addr, publisher).await?;
    let hub = Jid::from_str(hub_in).map_err(|e| client_err(PROTOCOL, e))?;
    Ok(Pair {
        publisher: Box::new(XmppPublisher {
            client: Some(client),
            hub,
            topic: topic.to_owned(),
            acked,
            close_subscriber: Some(close_tx),
        }),
        received,
        tasks: vec![sub_task],
    })
}
