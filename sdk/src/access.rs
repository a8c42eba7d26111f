//! Who a peer is and what it may do: the [`Identity`] an adapter gets when a
//! peer authenticates, the [`Action`] it asks for, and the [`Access`] the hub
//! answers with (its `[auth]` section: Mosquitto's password and ACL files).
//!
//! Adapters call [`crate::AdapterContext::authenticate`] and
//! [`crate::AdapterContext::authorize`]; without `[auth]` in the hub's config
//! every peer is anonymous and everything is allowed.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Who a peer is: a user name, or anonymous. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Identity {
    user: Option<Arc<str>>,
}

impl Identity {
    /// A peer without a user name.
    pub fn anonymous() -> Self {
        Identity { user: None }
    }

    /// The user `name`, as established by the protocol itself (an XMPP
    /// server's authenticated JID, an AMQP `user_id` RabbitMQ validated, a
    /// DTLS pre-shared key's identity, an HTTP bearer token's user).
    /// Password checks go through [`Access::authenticate`] instead.
    pub fn user(name: &str) -> Self {
        Identity {
            user: Some(Arc::from(name)),
        }
    }

    /// The user name; `None` when anonymous.
    pub fn username(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the peer has no user name.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_none()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "Identity({u:?})"),
            None => f.write_str("Identity(anonymous)"),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.username().unwrap_or("(anonymous)"))
    }
}

/// What a peer asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Receive one message on a topic (checked for every delivery).
    Read,
    /// Publish on a topic.
    Write,
    /// Subscribe with a topic filter (checked once, when the subscription
    /// is made; each delivery is then checked with [`Action::Read`]).
    Subscribe,
}

impl Action {
    /// Lower-case name, as the `action` label of `polyhub_auth_denied_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Subscribe => "subscribe",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a peer could not authenticate. Tell the peer only that it was
/// refused (MQTT CONNACK 5, HTTP 401): which of these it was is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refused {
    /// No user name, and `allow_anonymous` is off.
    #[error("anonymous access is off")]
    AnonymousNotAllowed,
    /// The user is not in the password file.
    #[error("no such user")]
    UnknownUser,
    /// A user name without a password.
    #[error("no password given")]
    MissingPassword,
    /// The password does not match.
    #[error("wrong password")]
    WrongPassword,
}

/// Why the ACL refused an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Denied {
    /// No rule grants it.
    #[error("no ACL rule grants it")]
    NoRule,
    /// A `deny` rule matches.
    #[error("a deny rule matches")]
    DenyRule,
    /// The user name or client id holds `+` or `#`, which would turn
    /// `pattern` rules into wildcards: refused, as Mosquitto does.
    #[error("the user name or client id holds `+` or `#`")]
    UnsafeName,
    /// Publishing on `$SYS` (or on `$share`), which only the hub may do.
    #[error("reserved `$` topic")]
    Reserved,
}

/// The hub's answer to who a peer is and what it may do. The hub
/// implements it over its `[auth]` section; adapters use it through
/// [`crate::AdapterContext`].
pub trait Access: Send + Sync + 'static {
    /// Checks a user name and password (MQTT CONNECT, HTTP Basic). `None`
    /// as user name asks for anonymous access.
    fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, Refused>;

    /// Whether `identity`, connected as `client_id` (MQTT client id; a
    /// stable per-device name elsewhere, used by `%c` rules), may do
    /// `action` on `topic` (a topic filter for [`Action::Subscribe`]).
    fn authorize(
        &self,
        identity: &Identity,
        client_id: &str,
        topic: &str,
        action: Action,
    ) -> Result<(), Denied>;
}

/// How often a denial for one (user, topic) is logged: once per minute.
pub const DENIAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Most (user, topic) pairs remembered for [`DENIAL_LOG_INTERVAL`]; past it,
/// pairs older than the interval are forgotten, and if none is, new pairs
/// are counted but not logged until some are.
const DENIAL_LOG_CAPACITY: usize = 4096;

/// A denial's key: user (or anonymous) and topic.
type DenialKey = (Option<Arc<str>>, Box<str>);

/// Decides which denials are logged: once per (user, topic) per
/// [`DENIAL_LOG_INTERVAL`], in bounded memory.
#[derive(Debug, Default)]
pub(crate) struct DenialLog {
    /// When each (user, topic) was last logged.
    seen: parking_lot::Mutex<std::collections::HashMap<DenialKey, std::time::Instant>>,
}

impl DenialLog {
    /// Whether a denial of `topic` for `identity` should be logged now.
    pub(crate) fn should_log(&self, identity: &Identity, topic: &str) -> bool {
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock();
        let key = (identity.user.clone(), Box::from(topic));
        if let Some(last) = seen.get_mut(&key) {
            if now.duration_since(*last) < DENIAL_LOG_INTERVAL {
                return false;
            }
            *last = now;
            return true;
        }
        if seen.len() >= DENIAL_LOG_CAPACITY {
            seen.retain(|_, t| now.duration_since(*t) < DENIAL_LOG_INTERVAL);
            if seen.len() >= DENIAL_LOG_CAPACITY {
                return false;
            }
        }
        seen.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_print_their_user_or_anonymous() {
        assert_eq!(Identity::user("u1").to_string(), "u1");
        assert_eq!(Identity::anonymous().to_string(), "(anonymous)");
        assert!(Identity::default().is_anonymous());
        assert_eq!(Identity::user("u1").username(), Some("u1"));
    }

    #[test]
    fn a_denial_is_logged_once_per_user_and_topic() {
        let log = DenialLog::default();
        let u1 = Identity::user("u1");
        assert!(log.should_log(&u1, "a/b"));
        assert!(!log.should_log(&u1, "a/b"));
        assert!(log.should_log(&u1, "a/c"));
        assert!(log.should_log(&Identity::anonymous(), "a/b"));
        assert!(!log.should_log(&Identity::anonymous(), "a/b"));
    }

    #[test]
    fn the_denial_log_stays_bounded() {
        let log = DenialLog::default();
        let u = Identity::user("u");
        for i in 0..DENIAL_LOG_CAPACITY {
            assert!(log.should_log(&u, &format!("t/{i}")));
        }
        // Full of recent pairs: new ones are not logged, memory does not grow.
        assert!(!log.should_log(&u, "t/new"));
        assert_eq!(log.seen.lock().len(), DENIAL_LOG_CAPACITY);
    }
}
