//! Reliable transmission parameters of RFC 7252 §4.2 and §4.8: message ids,
//! tokens, the randomised first timeout and its doubling.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Retransmission;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random 64-bit number (std's randomly keyed SipHash over a counter: not
/// for cryptography, enough for message ids, tokens and jitter).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Message ids for messages this endpoint originates, starting at a random
/// value (RFC 7252 §4.4).
#[derive(Debug)]
pub struct MessageIds(AtomicU16);

impl Default for MessageIds {
    fn default() -> Self {
        MessageIds(AtomicU16::new(random_u64() as u16))
    }
}

impl MessageIds {
    /// The next message id.
    pub fn next(&self) -> u16 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// A fresh random token of 4 bytes.
pub fn token() -> Vec<u8> {
    (random_u64() as u32).to_be_bytes().to_vec()
}

/// The timeouts before each retransmission of a CON message: the first drawn
/// between ACK_TIMEOUT and ACK_TIMEOUT × ACK_RANDOM_FACTOR, each next one
/// doubled; `max_retransmit + 1` waits in all.
pub fn timeouts(r: &Retransmission) -> impl Iterator<Item = Duration> {
    let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let first = r.ack_timeout.mul_f64(1.0 + (r.random_factor - 1.0) * unit);
    (0..=r.max_retransmit).map(move |i| first * 2u32.saturating_pow(i))
}

/// MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2): the longest a sender waits for an
/// acknowledgement or reset.
pub fn max_transmit_wait(r: &Retransmission) -> Duration {
    let n = 2u32.saturating_pow(r.max_retransmit + 1).saturating_sub(1);
    (r.ack_timeout * n).mul_f64(r.random_factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_double_from_a_randomised_start() {
        let r = Retransmission {
            ack_timeout: Duration::from_secs(2),
            random_factor: 1.5,
            max_retransmit: 4,
        };
        let t: Vec<Duration> = timeouts(&r).collect();
        assert_eq!(t.len(), 5);
        assert!(t[0] >= Duration::from_secs(2) && t[0] <= Duration::from_secs(3));
        for w in t.windows(2) {
            assert_eq!(w[1], w[0] * 2);
        }
        assert_eq!(max_transmit_wait(&r), Duration::from_secs(93));
    }

    #[test]
    fn message_ids_advance() {
        let ids = MessageIds::default();
        let a = ids.next();
        assert_eq!(ids.next(), a.wrapping_add(1));
        assert_ne!(token(), token());
    }
}
