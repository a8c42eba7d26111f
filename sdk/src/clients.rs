//! The registry of connected devices that `/api/clients` lists.
//!
//! An adapter reports a device when it connects with
//! [`AdapterContext::client_connected`](crate::AdapterContext::client_connected)
//! and keeps the returned [`ClientHandle`] for as long as the device is
//! connected: dropping the handle deregisters it. The handle counts the
//! device's messages in and out (two relaxed atomic increments, cheap on the
//! hot path).
//!
//! Links that have no registry (a loaded plugin across the C boundary, for
//! now) hand out detached handles: they count, but nobody lists them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

/// What an adapter knows about a connected device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// How the device talks to the hub (`mqtt`, `coap-observe`, `http-sse`,
    /// `xmpp`), finer than the adapter's kind.
    pub protocol: String,
    /// The device's own name for itself: MQTT client id, XMPP JID; `None`
    /// where the protocol has none (the peer address then identifies it).
    pub client_id: Option<String>,
    /// The device's address (`ip:port`), where known.
    pub peer: Option<String>,
    /// The authenticated user, if any.
    pub user: Option<String>,
}

impl ClientInfo {
    /// A device speaking `protocol` from `peer`.
    pub fn new(protocol: impl Into<String>) -> Self {
        ClientInfo {
            protocol: protocol.into(),
            ..ClientInfo::default()
        }
    }

    /// Sets the client id (MQTT client id, XMPP JID).
    pub fn with_client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Sets the peer address.
    pub fn with_peer(mut self, peer: impl Into<String>) -> Self {
        self.peer = Some(peer.into());
        self
    }

    /// Sets the authenticated user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

#[derive(Debug)]
struct Entry {
    adapter: Arc<str>,
    info: ClientInfo,
    since: SystemTime,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
}

/// Every connected device of every adapter, by registration order.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<Entry>>>,
}

impl ClientRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a device of `adapter`; the handle deregisters it on drop.
    pub fn register(self: &Arc<Self>, adapter: Arc<str>, info: ClientInfo) -> ClientHandle {
        // Ids start at 1: 0 is "before the first" for paging.
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            adapter,
            info,
            since: SystemTime::now(),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
        });
        self.clients.lock().insert(id, entry.clone());
        ClientHandle {
            id,
            entry,
            registry: Some(self.clone()),
        }
    }

    /// Number of connected devices.
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    /// Whether no device is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` devices registered after `after` (a [`ClientSnapshot::id`]),
    /// in registration order.
    pub fn page(&self, after: Option<u64>, limit: usize) -> Vec<ClientSnapshot> {
        let clients = self.clients.lock();
        let start = after.map_or(0, |a| a.saturating_add(1));
        clients
            .range(start..)
            .take(limit)
            .map(|(id, e)| snapshot(*id, e))
            .collect()
    }

    /// Number of connected devices per adapter.
    pub fn count_by_adapter(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.clients.lock().values() {
            *out.entry(e.adapter.to_string()).or_insert(0) += 1;
        }
        out
    }
}

fn snapshot(id: u64, e: &Entry) -> ClientSnapshot {
    ClientSnapshot {
        id,
        adapter: e.adapter.to_string(),
        info: e.info.clone(),
        since: e.since,
        messages_in: e.messages_in.load(Ordering::Relaxed),
        messages_out: e.messages_out.load(Ordering::Relaxed),
    }
}

/// One connected device at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// Registry id (for paging).
    pub id: u64,
    /// The adapter instance it is connected to.
    pub adapter: String,
    /// What the adapter reported.
    pub info: ClientInfo,
    /// When it connected.
    pub since: SystemTime,
    /// Messages it sent into the hub.
    pub messages_in: u64,
    /// Messages the hub sent to it.
    pub messages_out: u64,
}

/// A connected device's place in the registry: counts its messages, and
/// deregisters it when dropped.
#[derive(Debug)]
pub struct ClientHandle {
    id: u64,
    entry: Arc<Entry>,
    registry: Option<Arc<ClientRegistry>>,
}

impl ClientHandle {
    /// A handle that counts but is listed nowhere (for links without a registry).
    pub fn detached(adapter: Arc<str>, info: ClientInfo) -> Self {
        ClientHandle {
            id: 0,
            entry: Arc::new(Entry {
                adapter,
                info,
                since: SystemTime::now(),
                messages_in: AtomicU64::new(0),
                messages_out: AtomicU64::new(0),
            }),
            registry: None,
        }
    }

    /// One message from the device into the hub.
    pub fn record_in(&self) {
        self.entry.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// One message from the hub to the device.
    pub fn record_out(&self) {
        self.entry.messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// The device's current figures.
    pub fn snapshot(&self) -> ClientSnapshot {
        snapshot(self.id, &self.entry)
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        if let Some(r) = &self.registry {
            r.clients.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_register_count_and_deregister_on_drop() {
        let reg = Arc::new(ClientRegistry::new());
        let a = reg.register(
            Arc::from("web"),
            ClientInfo::new("http-sse").with_peer("127.0.0.1:5"),
        );
        let b = reg.register(
            Arc::from("mqtt"),
            ClientInfo::new("mqtt").with_client_id("dev-1"),
        );
        a.record_out();
        a.record_out();
        b.record_in();
        let page = reg.page(None, 10);
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].adapter, "web");
        assert_eq!(page[0].messages_out, 2);
        assert_eq!(page[1].info.client_id.as_deref(), Some("dev-1"));
        assert_eq!(page[1].messages_in, 1);
        assert_eq!(reg.page(Some(page[0].id), 10), vec![page[1].clone()]);
        assert_eq!(reg.count_by_adapter().get("web"), Some(&1));
        drop(a);
        assert_eq!(reg.len(), 1);
        drop(b);
        assert!(reg.is_empty());
    }

    #[test]
    fn a_detached_handle_counts_and_is_listed_nowhere() {
        let h = ClientHandle::detached(Arc::from("p"), ClientInfo::new("x"));
        h.record_in();
        assert_eq!(h.snapshot().messages_in, 1);
    }
}
