//! One stanza's bytes as the XMPP server sends them on the hub's stream →
//! `polyhub_xmpp::convert::inbound_from_bytes` (the stanza guard, then the
//! parser tokio-xmpp uses, then the message classification and its
//! envelopes). Must return envelopes or an error, never panic or overflow
//! the stack, whatever the nesting or the token lengths. Also: the guard's
//! output does not depend on how the bytes are split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polyhub_xmpp::convert::inbound_from_bytes;
use polyhub_xmpp::stanza_guard::{Limits, StanzaGuard};
use xmpp_parsers::jid::BareJid;

/// Small limits, so that short inputs reach them too.
const SMALL: Limits = Limits {
    max_depth: 8,
    max_stanza_bytes: 1024,
};

/// The guard's output and refusals for `chunks` fed in order (`None` when
/// it found the bytes not to be XML).
fn guard(chunks: &[&[u8]]) -> Option<(Vec<u8>, Vec<&'static str>)> {
    let mut g = StanzaGuard::new(SMALL);
    let mut out = Vec::new();
    let mut why = Vec::new();
    g.feed(
        b"<stream:stream xmlns='jabber:client'>",
        &mut out,
        &mut |_| {},
    )
    .ok()?;
    for c in chunks {
        g.feed(c, &mut out, &mut |r| why.push(r.reason())).ok()?;
    }
    Some((out, why))
}

fuzz_target!(|data: &[u8]| {
    let Ok(from) = BareJid::new("fuzz@localhost") else {
        return;
    };
    let _ = inbound_from_bytes(data, &from, Limits::default());
    let _ = inbound_from_bytes(data, &from, SMALL);

    // First byte: where to split the rest into two reads.
    if let Some((&cut, rest)) = data.split_first() {
        let cut = usize::from(cut).min(rest.len());
        let (a, b) = rest.split_at(cut);
        let whole = guard(&[rest]);
        let split = guard(&[a, b]);
        // A split can only move where "not XML" is noticed, never what
        // comes out of XML.
        if let (Some(whole), Some(split)) = (whole, split) {
            assert_eq!(whole, split, "split at {cut}");
        }
    }
});
