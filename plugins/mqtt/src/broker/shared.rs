//! `$share/GROUP/FILTER` shared subscriptions: one hub subscription per
//! group and filter, whose task hands each message to one member session,
//! round robin, skipping members whose inbox is full (a message no member
//! can take is dropped and counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use polyhub_sdk::{SubscribeError, SubscribeOptions, TopicFilter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Broker, Msg, SESSION_QUEUE};

struct Group {
    members: Mutex<Vec<(Arc<str>, mpsc::Sender<Msg>)>>,
    next: AtomicUsize,
    stop: CancellationToken,
}

/// The broker's shared-subscription groups, by their full filter
/// (`$share/GROUP/FILTER`).
#[derive(Default)]
pub(crate) struct Groups {
    inner: Mutex<HashMap<Arc<str>, Arc<Group>>>,
}

impl Groups {
    /// Adds session `id` (inbox `tx`) to the group `key` over `filter`,
    /// creating the group's hub subscription if it is the first member.
    pub(crate) fn join(
        &self,
        broker: &Arc<Broker>,
        key: Arc<str>,
        filter: TopicFilter,
        id: Arc<str>,
        tx: mpsc::Sender<Msg>,
    ) -> Result<(), SubscribeError> {
        let mut groups = self.inner.lock().map_err(|_| SubscribeError::Closed)?;
        if let Some(g) = groups.get(&key) {
            if let Ok(mut m) = g.members.lock() {
                m.retain(|(i, _)| *i != id);
                m.push((id, tx));
            }
            return Ok(());
        }
        let sub = broker.ctx.subscribe_with(
            [filter],
            SubscribeOptions {
                depth: Some(SESSION_QUEUE),
                include_own: true,
                ..SubscribeOptions::default()
            },
        )?;
        let group = Arc::new(Group {
            members: Mutex::new(vec![(id, tx)]),
            next: AtomicUsize::new(0),
            stop: broker.stop.child_token(),
        });
        groups.insert(key.clone(), group.clone());
        tokio::spawn(dispatch(broker.clone(), key, group, sub));
        Ok(())
    }

    /// Removes session `id` from group `key`; the last member out ends the
    /// group.
    pub(crate) fn leave(&self, key: &str, id: &str) {
        let Ok(mut groups) = self.inner.lock() else {
            return;
        };
        let empty = match groups.get(key) {
            Some(g) => match g.members.lock() {
                Ok(mut m) => {
                    m.retain(|(i, _)| &**i != id);
                    m.is_empty()
                }
                Err(_) => true,
            },
            None => false,
        };
        if empty {
            if let Some(g) = groups.remove(key) {
                g.stop.cancel();
            }
        }
    }
}

async fn dispatch(
    broker: Arc<Broker>,
    key: Arc<str>,
    group: Arc<Group>,
    mut sub: polyhub_sdk::Subscription,
) {
    loop {
        let env = tokio::select! {
            _ = group.stop.cancelled() => return,
            e = sub.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        if !broker.deliverable(&env) {
            continue;
        }
        let members: Vec<mpsc::Sender<Msg>> = match group.members.lock() {
            Ok(m) => m.iter().map(|(_, tx)| tx.clone()).collect(),
            Err(_) => return,
        };
        let n = members.len();
        let mut taken = false;
        for _ in 0..n {
            let i = group.next.fetch_add(1, Ordering::Relaxed) % n;
            if members[i]
                .try_send(Msg::Shared {
                    env: env.clone(),
                    key: key.clone(),
                })
                .is_ok()
            {
                taken = true;
                break;
            }
        }
        if !taken {
            broker.ctx.metrics().record_drop();
            broker.ctx.metrics().incr("shared_dropped");
        }
    }
}
