//! An AMQP message as the broker hands it over: routing key and basic
//! properties (decoded by lapin's parser from the content-header bytes) →
//! `amqp_to_envelope`. Must return an envelope or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polyhub_sdk::{Origin, QoS};

fuzz_target!(|data: &[u8]| {
    // First byte: routing key length; then the key; the rest is a
    // content-header property list, then the payload.
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let key_len = usize::from(key_len).min(rest.len());
    let (key, rest) = rest.split_at(key_len);
    let Ok(key) = std::str::from_utf8(key) else {
        return;
    };
    let _ = polyhub_amqp::convert::routing_key_to_topic(key);
    let Ok((payload, properties)) = lapin::protocol::basic::parse_properties(rest) else {
        return;
    };
    let _ = polyhub_amqp::convert::amqp_to_envelope(
        key,
        &properties,
        payload.to_vec(),
        QoS::AtLeastOnce,
        Origin::default(),
    );
});
