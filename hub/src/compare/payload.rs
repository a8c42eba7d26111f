//! The test payloads: ASCII text that carries a sequence number and the
//! send time, so latency is measured from the payload itself and the same
//! bytes go unencoded through text-only carriers (an XMPP `<body>`, the JSON
//! of an SSE event). A binary payload would cost 4/3 there (base64).

use std::time::{Duration, Instant};

/// Smallest payload that holds the sequence number and the timestamp.
pub const MIN_PAYLOAD: usize = 16;

/// Highest sequence number a payload can carry (5 hex digits).
pub const MAX_SEQ: u32 = 0xF_FFFF;

/// Builds a `size`-byte payload: `{seq:05x}{nanos since base:011x}` padded
/// with `.`. `size` must be at least [`MIN_PAYLOAD`].
pub fn encode(seq: u32, base: Instant, size: usize) -> Vec<u8> {
    let nanos = base.elapsed().as_nanos() as u64 & 0xFFF_FFFF_FFFF;
    let mut p = format!("{:05x}{:011x}", seq & MAX_SEQ, nanos).into_bytes();
    p.resize(size.max(MIN_PAYLOAD), b'.');
    p
}

/// `(seq, one-way latency)` of a payload received at `at`, or `None` when it
/// is not one of ours.
pub fn decode(payload: &[u8], base: Instant, at: Instant) -> Option<(u32, Duration)> {
    let head = std::str::from_utf8(payload.get(..MIN_PAYLOAD)?).ok()?;
    let seq = u32::from_str_radix(&head[..5], 16).ok()?;
    let sent = u64::from_str_radix(&head[5..], 16).ok()?;
    let received = at.saturating_duration_since(base).as_nanos() as u64;
    Some((seq, Duration::from_nanos(received.saturating_sub(sent))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_seq_and_time_at_every_size() {
        let base = Instant::now();
        for size in [16, 17, 256, 4096] {
            let p = encode(0x1234, base, size);
            assert_eq!(p.len(), size);
            assert!(p.is_ascii());
            let later = Instant::now() + Duration::from_millis(3);
            let (seq, lat) = decode(&p, base, later).unwrap();
            assert_eq!(seq, 0x1234);
            assert!(lat >= Duration::from_millis(3));
        }
    }

    #[test]
    fn foreign_payloads_are_not_decoded() {
        let base = Instant::now();
        assert_eq!(decode(b"short", base, base), None);
        assert_eq!(decode(b"not hex at all, really", base, base), None);
    }
}
