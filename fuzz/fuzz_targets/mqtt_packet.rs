//! MQTT bytes from a peer → envelopes, both ways the adapter reads them:
//! a device's byte stream through the embedded broker's codec (rumqttd's
//! 3.1.1 reader with the adapter's QoS mark, then `envelope_from_broker`,
//! the echo check and the write back to a device), and a broker's byte
//! stream through rumqttc's MQTT 5 reader into `envelope_from_client`.
//! Must give packets, envelopes or errors, never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use polyhub_mqtt::convert;
use polyhub_sdk::Origin;
use rumqttc::v5::mqttbytes::v5::Packet as CPacket;
use rumqttd::protocol::Packet as DPacket;

/// Largest packet either reader accepts here (the adapter's default
/// `max_payload` is 1 MiB; smaller keeps the fuzzer fast).
const MAX_SIZE: usize = 64 * 1024;
/// Packets read from one input at most.
const MAX_PACKETS: usize = 64;

fn device_stream(bytes: &[u8]) {
    let mut stream = BytesMut::from(bytes);
    for _ in 0..MAX_PACKETS {
        match convert::read_device_packet(&mut stream, MAX_SIZE) {
            Ok(DPacket::Publish(publish, props)) => {
                let _ = convert::is_own_echo(props.as_ref());
                let _ = convert::broker_header(&publish);
                if let Ok(env) =
                    convert::envelope_from_broker(&publish, props.as_ref(), Origin::default())
                {
                    // What the hub would send back out through the broker.
                    let _ = convert::broker_publish(&env, 1);
                }
                let mut out = BytesMut::new();
                let _ = convert::write_device_packet(DPacket::Publish(publish, props), &mut out);
            }
            Ok(_) => {}
            Err(e) => {
                let _ = convert::device_error_reason(&e);
                break;
            }
        }
    }
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
