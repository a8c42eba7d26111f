//! The smallest number of application bytes each protocol's specification
//! allows for one message, computed for the exact names `polyhub compare`
//! uses (topic, exchange, JIDs, Host header), shown beside the measured
//! figure. These are lower bounds: every optional field left out, the
//! shortest legal encoding of every length. The project's OVERHEADS.md
//! reference (quoted in `METHOD.md`) gives the worked example for a 10-byte
//! topic and a 16-byte payload; the unit tests below reproduce it.
//!
//! End to end a message crosses two hops (publisher → hub, hub →
//! subscriber), so the end-to-end minimum is the sum of both hops.

/// MQTT 3.1.1 variable-length "remaining length" field size.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// One MQTT PUBLISH (+ its PUBACK at QoS 1), MQTT 3.1.1 §3.3 / §3.4.
pub fn mqtt_hop(topic: &str, payload: usize, acked: bool) -> usize {
    let remaining = 2 + topic.len() + if acked { 2 } else { 0 } + payload;
    let publish = 1 + varint_len(remaining) + remaining;
    publish + if acked { 4 } else { 0 }
}

/// CoAP option header + value for one option with `len`-byte value and a
/// delta from the previous option number (RFC 7252 §3.1).
fn coap_option(delta: usize, len: usize) -> usize {
    let ext = |v: usize| match v {
        0..=12 => 0,
        13..=268 => 1,
        _ => 2,
    };
    1 + ext(delta) + ext(len) + len
}

/// One CoAP request `POST /{path}` with a `token`-byte token (RFC 7252 §3),
/// plus the piggybacked empty-bodied 2.04 ACK when `acked` (CON).
pub fn coap_post(path: &[&str], token: usize, payload: usize, acked: bool) -> usize {
    let mut n = 4 + token;
    for (i, seg) in path.iter().enumerate() {
        n += coap_option(if i == 0 { 11 } else { 0 }, seg.len());
    }
    if payload > 0 {
        n += 1 + payload;
    }
    n + if acked { 4 + token } else { 0 }
}

/// One CoAP Observe notification (RFC 7641): header, the observer's token,
/// an Observe option of `observe_len` bytes, payload; + a 4-byte empty ACK
/// when it is CON.
pub fn coap_notification(token: usize, observe_len: usize, payload: usize, acked: bool) -> usize {
    let mut n = 4 + token + coap_option(6, observe_len);
    if payload > 0 {
        n += 1 + payload;
    }
    n + if acked { 4 } else { 0 }
}

/// One HTTP/1.1 `POST {path}` with `Host` and `Content-Length` (RFC 9112:
/// both required here) and a `202 Accepted` with `Date` (RFC 9110 §6.6.1:
/// required from a server with a clock) and `Content-Length: 0`.
pub fn http_post(path: &str, host: &str, payload: usize) -> usize {
    let request =
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {payload}\r\n\r\n").len()
            + payload;
    let response =
        "HTTP/1.1 202 Accepted\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n"
            .len();
    request + response
}

/// One Server-Sent Event as DESIGN.md shapes it (`event: message`, a
/// 26-character ULID `id`, a JSON `data` line), with the smallest JSON that
/// holds the required keys, in a close-delimited body (no chunk framing).
pub fn http_sse_event(topic: &str, payload: usize) -> usize {
    let json =
        format!("{{\"topic\":\"{topic}\",\"payload\":\"\",\"encoding\":\"utf8\",\"timestamp\":0}}")
            .len()
            + payload;
    "event: message\nid: \n".len() + 26 + "data: \n\n".len() + json
}

/// AMQP 0-9-1 frame overhead: type 1, channel 2, size 4, frame-end 1.
const AMQP_FRAME: usize = 8;
/// Content header frame payload with no properties: class, weight, body
/// size, property flags.
const AMQP_CONTENT_HEADER: usize = 2 + 2 + 8 + 2;
/// `basic.ack`: class, method, delivery tag, multiple bit.
const AMQP_BASIC_ACK: usize = AMQP_FRAME + 2 + 2 + 8 + 1;

/// `basic.publish` + content header + one body frame (+ the broker's
/// `basic.ack` when confirms are on).
pub fn amqp_publish(exchange: &str, routing_key: &str, payload: usize, acked: bool) -> usize {
    let method = AMQP_FRAME + 2 + 2 + 2 + (1 + exchange.len()) + (1 + routing_key.len()) + 1;
    let header = AMQP_FRAME + AMQP_CONTENT_HEADER;
    let body = AMQP_FRAME + payload;
    method + header + body + if acked { AMQP_BASIC_ACK } else { 0 }
}

/// `basic.deliver` + content header + one body frame (+ the consumer's
/// `basic.ack` when it acks manually).
pub fn amqp_deliver(
    consumer_tag: &str,
    exchange: &str,
    routing_key: &str,
    payload: usize,
    acked: bool,
) -> usize {
    let method = AMQP_FRAME
        + 2
        + 2
        + (1 + consumer_tag.len())
        + 8
        + 1
        + (1 + exchange.len())
        + (1 + routing_key.len());
    let header = AMQP_FRAME + AMQP_CONTENT_HEADER;
    let body = AMQP_FRAME + payload;
    method + header + body + if acked { AMQP_BASIC_ACK } else { 0 }
}

/// One XMPP `<message>` with a subject and a body (RFC 6120/6121), the
/// addressed JID in `attr` (`to` on the way in, `from` on the way out).
pub fn xmpp_message(attr: &str, jid: &str, topic: &str, payload: usize) -> usize {
    format!("<message {attr}='{jid}'><subject>{topic}</subject><body></body></message>").len()
        + payload
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example of OVERHEADS.md: 10-byte topic, 16-byte payload.
    #[test]
    fn mqtt_matches_the_worked_example() {
        assert_eq!(mqtt_hop("sensors/t1", 16, false), 30);
        assert_eq!(mqtt_hop("sensors/t1", 16, true), 36);
        assert_eq!(mqtt_hop("sensors/t1", 4096, false), 4096 + 2 + 12 + 1);
    }

    #[test]
    fn coap_matches_the_worked_example() {
        // OVERHEADS.md says 35 / 41: it counts the `/` of "sensors/t1",
        // which no Uri-Path option carries (RFC 7252 §6.4), so one less.
        assert_eq!(coap_post(&["sensors", "t1"], 2, 16, false), 34);
        assert_eq!(coap_post(&["sensors", "t1"], 2, 16, true), 40);
        // The contract's /ps prefix adds one 3-byte option.
        assert_eq!(coap_post(&["ps", "sensors", "t1"], 2, 16, false), 37);
        // A 13-byte value needs the extended length byte.
        assert_eq!(coap_option(0, 13), 15);
    }

    #[test]
    fn amqp_matches_the_worked_example() {
        assert_eq!(amqp_publish("", "sensors.t1", 16, false), 73);
        assert_eq!(amqp_publish("", "sensors.t1", 16, true), 94);
    }

    #[test]
    fn http_and_xmpp_minimums_are_in_the_worked_examples_range() {
        let http = http_post("/topics/sensors/t1", "127.0.0.1:8080", 16);
        assert!((154..=191).contains(&http), "{http}");
        let xmpp = xmpp_message("to", "hub@localhost", "sensors/t1", 16);
        assert!((96..=97).contains(&xmpp), "{xmpp}");
        assert!(http_sse_event("sensors/t1", 16) > 16 + 26);
    }
}
