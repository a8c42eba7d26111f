//! MQTT bytes from a peer, both ways the adapter reads them: a device's
//! byte stream through the embedded broker's codec (the CONNECT's protocol
//! level, then 3.1.1 or 5.0 packets, each written back in that version),
//! and a broker's byte stream through rumqttc's MQTT 5 reader into
//! `envelope_from_client`. Must give packets, envelopes or errors, never
//! panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use polyhub_mqtt::convert;
use polyhub_sdk::Origin;
use rumqttc::v5::mqttbytes::v5::Packet as CPacket;

/// Largest packet either reader accepts here (the adapter's default
/// `max_payload` is 1 MiB; smaller keeps the fuzzer fast).
const MAX_SIZE: usize = 64 * 1024;
/// Packets read from one input at most.
const MAX_PACKETS: usize = 64;

fn device_stream(bytes: &[u8]) {
    polyhub_mqtt::fuzz_device_stream(bytes, MAX_SIZE, MAX_PACKETS);
}

fn broker_stream(bytes: &[u8]) {
    let mut stream = BytesMut::from(bytes);
    for _ in 0..MAX_PACKETS {
        match CPacket::read(&mut stream, Some(MAX_SIZE as u32)) {
            Ok(CPacket::Publish(publish)) => {
                if let Ok(env) = convert::envelope_from_client(&publish, Origin::default()) {
                    let _ = convert::client_publish(&env);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: which reader.
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        device_stream(rest);
    } else {
        broker_stream(rest);
    }
});
