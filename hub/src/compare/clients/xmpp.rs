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
use tokio::sync::mpsc;
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
    sender: tokio_xmpp::ClientSender,
    hub: Jid,
    topic: String,
    acked: bool,
}

impl Publisher for XmppPublisher {
    fn publish(
        &mut self,
        payload: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<(), CompareError>> {
        async move {
            let body = String::from_utf8(payload).map_err(|e| client_err(PROTOCOL, e))?;
            let mut m = Message::new(Some(self.hub.clone()));
            m.subjects
                .insert(Lang::default(), self.topic.clone().into());
            m.bodies.insert(Lang::default(), body);
            let mut token = self
                .sender
                .send_stanza(Stanza::Message(m))
                .await
                .map_err(|e| client_err(PROTOCOL, e))?;
            if self.acked {
                token.wait_for(StanzaStage::Acked).await;
            }
            Ok(())
        }
        .boxed()
    }
}

/// Logs in the subscriber and the publisher through their relays.
pub async fn connect(
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    publisher: &Account,
    subscriber: &Account,
    hub_in: &str,
    topic: &str,
    acked: bool,
) -> Result<Pair, CompareError> {
    let (tx, received) = mpsc::channel(RECEIVED_DEPTH);
    let sub = login(sub_addr, subscriber).await?;
    let (sub_tx, mut sub_rx) = sub.split();
    sub_tx
        .send_stanza(Presence::new(PresenceType::None).into())
        .await
        .map_err(|e| client_err(PROTOCOL, e))?;
    let sub_task = tokio::spawn(async move {
        let _keep = sub_tx;
        while let Some(event) = sub_rx.next().await {
            let at = Instant::now();
            if let Event::Stanza(Stanza::Message(m)) = event {
                if m.type_ == MessageType::Error {
                    continue;
                }
                if let Some(body) = m.bodies.get("") {
                    let payload = Bytes::copy_from_slice(body.as_bytes());
                    if tx.send(Received { at, payload }).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let client = login(pub_addr, publisher).await?;
    let (sender, mut pub_rx) = client.split();
    let drain = tokio::spawn(async move { while pub_rx.next().await.is_some() {} });
    let hub = Jid::from_str(hub_in).map_err(|e| client_err(PROTOCOL, e))?;
    Ok(Pair {
        publisher: Box::new(XmppPublisher {
            sender,
            hub,
            topic: topic.to_owned(),
            acked,
        }),
        received,
        tasks: vec![sub_task, drain],
    })
}
