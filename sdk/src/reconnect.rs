//! Reconnecting to an external server: one backoff and one supervisor for
//! every adapter that connects out (an MQTT broker, RabbitMQ, an XMPP server,
//! a webhook's endpoint).
//!
//! Every such adapter has the same two keys, `reconnect_min_ms` and
//! `reconnect_max_ms` ([`Backoff::from_ms`] checks them), and the same
//! behaviour, written once here:
//! - delays double from the minimum to the maximum, each one jittered into
//!   `[d/2, d]` so that many hubs restarting together do not reconnect in
//!   step (the "equal jitter" of AWS's backoff study);
//! - the [`Supervisor`] sets the adapter's state: `Up` on connect, `Down`
//!   with the server and the reason on a loss; it counts reconnects and
//!   errors, logs each change once, and waits out the delay or the hub's
//!   shutdown, whichever comes first;
//! - an error the server will give again on every attempt (bad credentials,
//!   an unknown virtual host, a protocol the server does not speak) stops the
//!   adapter when it comes before the first success: [`Retry::is_permanent`].
//!   After a first success every loss is retried, since it may be passing
//!   (a broker restarting with its user database not loaded yet).

use std::fmt;
use std::time::Duration;

use crate::adapter::{AdapterContext, AdapterError, AdapterState};

/// Default of `reconnect_min_ms`.
pub const DEFAULT_MIN_MS: u64 = 100;
/// Default of `reconnect_max_ms`.
pub const DEFAULT_MAX_MS: u64 = 5_000;

/// Serde default of `reconnect_min_ms`.
pub fn default_min_ms() -> u64 {
    DEFAULT_MIN_MS
}

/// Serde default of `reconnect_max_ms`.
pub fn default_max_ms() -> u64 {
    DEFAULT_MAX_MS
}

/// Exponential backoff with jitter between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max` (`max` below `min` is
    /// raised to `min`; a zero `min` to one millisecond).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// From the two config keys, checked: `0 < reconnect_min_ms <=
    /// reconnect_max_ms`. The error names the key and the rule.
    pub fn from_ms(min_ms: u64, max_ms: u64) -> Result<Self, (&'static str, String)> {
        if min_ms == 0 {
            return Err(("reconnect_min_ms", "must be at least 1".into()));
        }
        if max_ms < min_ms {
            return Err((
                "reconnect_max_ms",
                format!("must be at least reconnect_min_ms ({min_ms}), got {max_ms}"),
            ));
        }
        Ok(Self::new(
            Duration::from_millis(min_ms),
            Duration::from_millis(max_ms),
        ))
    }

    /// The smallest delay.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Back to the smallest delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt, jittered into `[d/2, d]`, and the
    /// one after doubled.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = d.saturating_mul(2).min(self.max);
        let half = d / 2;
        let spread = (d - half).as_nanos() as u64;
        half + Duration::from_nanos(if spread == 0 {
            0
        } else {
            fastrand::u64(0..=spread)
        })
    }
}

/// Errors that say whether trying again can help.
pub trait Retry {
    /// `true` when the server will answer the same on every attempt:
    /// refused credentials, an unknown account or virtual host, a protocol
    /// version it does not speak. Before a first success such an error stops
    /// the adapter; after one it is retried like any other.
    fn is_permanent(&self) -> bool;
}

/// What [`Supervisor::lost`] decided.
#[derive(Debug)]
pub enum Next {
    /// The delay is over: try again.
    Retry,
    /// The hub is shutting down: stop, without an error.
    Shutdown,
}

/// Watches one adapter's connection to one server: state, counters, logs
/// and the wait between attempts.
#[derive(Debug)]
pub struct Supervisor {
    ctx: AdapterContext,
    server: String,
    backoff: Backoff,
    ever_up: bool,
}

impl Supervisor {
    /// For the adapter of `ctx` connecting to `server` (host:port or URL
    /// without credentials; it appears in logs and in `/health`).
    pub fn new(ctx: &AdapterContext, server: impl Into<String>, backoff: Backoff) -> Self {
        Supervisor {
            ctx: ctx.clone(),
            server: server.into(),
            backoff,
            ever_up: false,
        }
    }

    /// The server this supervisor connects to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether a connection ever succeeded.
    pub fn ever_up(&self) -> bool {
        self.ever_up
    }

    /// A connection is up: the state goes `Up`, the delay back to its
    /// minimum; a reconnect (not the first connect) is counted. `detail`
    /// is added to the log line (what was resent, which queue, ...).
    pub fn connected(&mut self, detail: &dyn fmt::Display) {
        if self.ever_up {
            self.ctx.metrics().record_reconnect();
            tracing::info!(adapter = %self.ctx.name(), server = %self.server, "{}", Line("Reconnected", detail));
        } else {
            tracing::info!(adapter = %self.ctx.name(), server = %self.server, "{}", Line("Connected", detail));
        }
        self.ever_up = true;
        self.backoff.reset();
        self.ctx.set_state(AdapterState::Up, None);
    }

    /// A connection attempt failed or a connection was lost with `error`.
    /// A permanent error before any success gives `Err` (the adapter stops
    /// with it, logged at ERROR by the hub). Otherwise the error is counted
    /// and logged, the state goes `Down` with the server and the reason, and
    /// this waits out the next delay: [`Next::Retry`] after it, or
    /// [`Next::Shutdown`] if the hub stops first.
    pub async fn lost<E>(&mut self, error: &E) -> Result<Next, AdapterError>
    where
        E: fmt::Display + Retry + ?Sized,
    {
        self.ctx.metrics().record_error();
        if !self.ever_up && error.is_permanent() {
            tracing::warn!(adapter = %self.ctx.name(), server = %self.server, error = %error, "The server refused the adapter; not retrying.");
            return Err(AdapterError::protocol(format!("{}: {error}", self.server)));
        }
        let delay = self.backoff.next_delay();
        if self.ever_up {
            tracing::warn!(adapter = %self.ctx.name(), server = %self.server, error = %error, retry_in = ?delay, "Connection lost; reconnecting.");
        } else {
            tracing::warn!(adapter = %self.ctx.name(), server = %self.server, error = %error, retry_in = ?delay, "Cannot connect; retrying.");
        }
        self.ctx.set_state(
            AdapterState::Down,
            Some(format!("{}: {error}", self.server)),
        );
        Ok(self.wait(delay).await)
    }

    /// Waits `delay` or until the hub shuts down.
    pub async fn wait(&self, delay: Duration) -> Next {
        tokio::select! {
            _ = self.ctx.shutdown().cancelled() => Next::Shutdown,
            _ = tokio::time::sleep(delay) => Next::Retry,
        }
    }
}

/// "Connected to the server." with an optional detail.
struct Line<'a>(&'static str, &'a dyn fmt::Display);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = self.1.to_string();
        if detail.is_empty() {
            write!(f, "{} to the server.", self.0)
        } else {
            write!(f, "{} to the server ({detail}).", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let mut nominal = 100u64;
        for _ in 0..8 {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                d >= nominal / 2 && d <= nominal,
                "delay {d} ms outside [{}, {nominal}]",
                nominal / 2
            );
            nominal = (nominal * 2).min(800);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(Backoff::from_ms(0, 10).unwrap_err().0, "reconnect_min_ms");
        assert_eq!(Backoff::from_ms(10, 5).unwrap_err().0, "reconnect_max_ms");
        let b = Backoff::from_ms(10, 10).unwrap();
        assert_eq!(
            (b.min(), b.max()),
            (Duration::from_millis(10), Duration::from_millis(10))
        );
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_millis(1000));
            seen.insert(b.next_delay().as_millis());
        }
        assert!(seen.len() > 10, "50 delays gave only {} values", seen.len());
    }
}

#[cfg(test)]
mod supervisor_tests {
    use super::*;
    use crate::testing::TestHub;

    struct E(bool);
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.0 {
                "bad password"
            } else {
                "connection refused"
            })
        }
    }
    impl Retry for E {
        fn is_permanent(&self) -> bool {
            self.0
        }
    }

    fn supervisor(hub: &TestHub) -> Supervisor {
        let ctx = hub.context("up", "mqtt");
        Supervisor::new(
            &ctx,
            "broker:1883",
            Backoff::new(Duration::from_millis(1), Duration::from_millis(4)),
        )
    }

    #[tokio::test]
    async fn permanent_error_before_first_success_stops() {
        let hub = TestHub::new();
        let mut s = supervisor(&hub);
        let err = s.lost(&E(true)).await.unwrap_err();
        assert!(
            err.to_string().contains("broker:1883: bad password"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn losses_are_retried_counted_and_reported() {
        let hub = TestHub::new();
        let mut s = supervisor(&hub);
        assert!(matches!(s.lost(&E(false)).await, Ok(Next::Retry)));
        s.connected(&"");
        // After a first success even a "permanent" error is retried.
        assert!(matches!(s.lost(&E(true)).await, Ok(Next::Retry)));
        s.connected(&"resent 3");
        let states = hub.states("up");
        assert_eq!(
            states,
            vec![
                (
                    AdapterState::Down,
                    Some("broker:1883: connection refused".into())
                ),
                (AdapterState::Up, None),
                (AdapterState::Down, Some("broker:1883: bad password".into())),
                (AdapterState::Up, None),
            ]
        );
        let snap = hub.context("x", "x").snapshot();
        let m = &snap.adapters[0].metrics;
        assert_eq!((m.reconnects, m.errors), (1, 2));
    }

    #[tokio::test]
    async fn shutdown_cuts_the_wait() {
        let hub = TestHub::new();
        let ctx = hub.context("up", "amqp");
        let mut s = Supervisor::new(
            &ctx,
            "rabbit",
            Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600)),
        );
        hub.shutdown();
        let next = tokio::time::timeout(Duration::from_secs(5), s.lost(&E(false))).await;
        assert!(matches!(next, Ok(Ok(Next::Shutdown))));
    }
}
