//! The plugin boundary: an `EnvelopeView` a loaded library hands the hub,
//! with arbitrary bytes behind every string (not UTF-8, wildcards in the
//! topic, empty, absent), arbitrary QoS and retain bytes and headers. The
//! copy must give an envelope or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polyhub_sdk::plugin::abi::{EnvelopeView, HeaderView, StrView};
use polyhub_sdk::plugin::view::copy_envelope;

/// Splits `data` into fields: each is a length byte and that many bytes;
/// a length of 255 means "absent".
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn next(&mut self) -> StrView {
        let Some((&len, rest)) = self.0.split_first() else {
            return StrView::NONE;
        };
        if len == 255 {
            self.0 = rest;
            return StrView::NONE;
        }
        let len = usize::from(len).min(rest.len());
        let (field, rest) = rest.split_at(len);
        self.0 = rest;
        StrView::new(field)
    }

    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
}

fuzz_target!(|data: &[u8]| {
    let mut f = Fields(data);
    let qos = f.byte();
    let retain = f.byte();
    let topic = f.next();
    let payload = f.next();
    let content_type = f.next();
    let origin_adapter = f.next();
    let origin_protocol = f.next();
    let origin_peer = f.next();
    let origin_user = f.next();
    let reply_to = f.next();
    let correlation = f.next();
    let header_count = usize::from(f.byte() % 8);
    let headers: Vec<HeaderView> = (0..header_count)
        .map(|_| HeaderView {
            key: f.next(),
            value: f.next(),
        })
        .collect();
    let view = EnvelopeView {
        size: std::mem::size_of::<EnvelopeView>(),
        id_hi: 1,
        id_lo: 2,
        topic,
        payload,
        content_type,
        qos,
        retain,
        origin_adapter,
        origin_protocol,
        origin_peer,
        origin_user,
        timestamp_secs: u64::from(f.byte()) << 40,
        timestamp_nanos: u32::from(f.byte()) << 24,
        headers: if headers.is_empty() {
            std::ptr::null()
        } else {
            headers.as_ptr()
        },
        headers_len: headers.len(),
        reply_to,
        correlation,
    };
    // SAFETY: every pointer in `view` borrows `data` or `headers`, which
    // outlive the call.
    let _ = unsafe { copy_envelope(&view) };
});
