//! A CoAP datagram as a peer sends it → `parse_datagram`, then what the
//! server reads from a request: Uri-Path → resource, Uri-Query, Content-
//! Format, Block1/Block2, the envelope a publish makes, and the
//! `/.well-known/core` scope of its query with one block of a listing over
//! a small store. Must give a value or an error, never panic.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use polyhub_coap::coap_lite::{CoapOption, MessageClass};
use polyhub_coap::convert::{self, Block, Resource};
use polyhub_coap::discovery::{CursorCache, Scope};
use polyhub_sdk::{Envelope, Origin, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = convert::parse_datagram(data) else {
        return;
    };
    let _ = packet.to_bytes_unlimited();
    if !matches!(packet.header.code, MessageClass::Request(_)) {
        return;
    }
    let (Some(path), Some(query)) = (convert::uri_path(&packet), convert::uri_query(&packet))
    else {
        return;
    };
    let format = convert::content_format(&packet);
    let block2 = Block::of(&packet, CoapOption::Block2);
    let _ = Block::of(&packet, CoapOption::Block1);
    let _ = packet
        .get_first_option(CoapOption::Observe)
        .map(|v| convert::decode_uint(v, 3));
    match convert::resource_from_path(&path) {
        Ok(Resource::Topic(filter)) => {
            if let (Some(topic), Ok(format)) = (filter.as_topic(), format) {
                let e = convert::request_envelope(
                    &packet,
                    topic,
                    &query,
                    packet.payload.clone(),
                    format,
                    Origin::default(),
                );
                let _ = convert::envelope_content_format(&e);
            }
        }
        Ok(Resource::WellKnownCore) => {
            let scope = Scope::of_query(&query);
            // In topic order, as the hub's index hands them out.
            let store: Vec<Arc<Envelope>> = ["$SYS/x", "a", "a b/c", "sensors/t", "z/%"]
                .iter()
                .filter_map(|t| Topic::new(t).ok())
                .map(|t| Arc::new(Envelope::new(t, "v")))
                .collect();
            let pages = |prefix: &str, after: Option<&str>, limit: usize| {
                store
                    .iter()
                    .filter(|e| e.topic.as_str().starts_with(prefix))
                    .filter(|e| after.map_or(true, |a| e.topic.as_str() > a))
                    .take(limit)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let mut cache = CursorCache::new(8, 4096, Duration::from_secs(60));
            if let Ok(Some(b)) = block2 {
                let now = Instant::now();
                let _ = cache.block(&pages, &scope, 0, b.size(), now);
                let _ = cache.block(&pages, &scope, b.offset(), b.size(), now);
            }
        }
        Err(_) => {}
    }
});
