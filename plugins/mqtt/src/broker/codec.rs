//! The wire: rumqttc's MQTT 3.1.1 (`mqttbytes::v4`) and 5.0
//! (`v5::mqttbytes::v5`) codecs under one packet model. The session layer
//! speaks MQTT 5 packets only; a 3.1.1 connection's packets are translated
//! to and from them here (3.1.1 has no properties and fewer reason codes).

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS as QoS4;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, LastWill, Login,
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel,
    PubRelReason, Publish, RetainForwardRule, Subscribe, SubscribeReasonCode, UnsubAck,
    UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};

/// MQTT protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Why the bytes from a device are not MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The packet breaks the protocol (counted as `malformed_packet`).
    Malformed(String),
    /// The packet is larger than the broker's maximum packet size.
    TooLarge(usize),
    /// A CONNECT with a protocol level the broker does not speak.
    UnsupportedVersion(u8),
}

fn malformed(e: impl std::fmt::Display) -> WireError {
    WireError::Malformed(e.to_string())
}

fn codec_error(e: CodecError) -> WireError {
    match e {
        CodecError::PayloadSizeLimitExceeded { pkt_size, .. } => WireError::TooLarge(pkt_size),
        CodecError::InvalidProtocolLevel(l) => WireError::UnsupportedVersion(l),
        other => malformed(other),
    }
}

/// The protocol level of the CONNECT at the start of `buf`, `None` while
/// more bytes are needed.
pub(crate) fn connect_level(buf: &[u8]) -> Result<Option<Version>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(malformed(format!(
            "first packet is type {} (flags {:#x}), not CONNECT",
            first >> 4,
            first & 0xf
        )));
    }
    // Remaining length: 1 to 4 bytes.
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(malformed("remaining length longer than 4 bytes"));
        }
    }
    let Some(name_len) = buf.get(i..i + 2) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
    let Some(name) = buf.get(i + 2..i + 2 + name_len) else {
        return Ok(None);
    };
    let Some(&level) = buf.get(i + 2 + name_len) else {
        return Ok(None);
    };
    match (name, level) {
        (b"MQTT", 4) => Ok(Some(Version::V311)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (b"MQTT", l) | (b"MQIsdp", l) => Err(WireError::UnsupportedVersion(l)),
        _ => Err(malformed("protocol name is not MQTT")),
    }
}

/// Takes the next whole packet off `buf`: `Ok(None)` while more bytes are
/// needed. `max` is the broker's maximum packet size.
pub(crate) fn read(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, WireError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match version {
        Version::V5 => {
            // A DISCONNECT of remaining length 0 (normal disconnection),
            // which the codec refuses.
            if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
                let _ = buf.split_to(2);
                return Ok(Some(Packet::Disconnect(Disconnect::new(
                    DisconnectReasonCode::NormalDisconnection,
                ))));
            }
            let max = u32::try_from(max).unwrap_or(u32::MAX);
            match Packet::read(buf, Some(max)) {
                Ok(p) => Ok(Some(p)),
                Err(CodecError::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(codec_error(e)),
            }
        }
        Version::V311 => match v4::Packet::read(buf, max) {
            Ok(p) => from_v4(p).map(Some),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n)) => {
                Err(WireError::TooLarge(n))
            }
            Err(rumqttc::mqttbytes::Error::InvalidProtocolLevel(l)) => {
                Err(WireError::UnsupportedVersion(l))
            }
            Err(e) => Err(malformed(e)),
        },
    }
}

fn qos_from4(q: QoS4) -> QoS {
    match q {
        QoS4::AtMostOnce => QoS::AtMostOnce,
        QoS4::AtLeastOnce => QoS::AtLeastOnce,
        QoS4::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to4(q: QoS) -> QoS4 {
    match q {
        QoS::AtMostOnce => QoS4::AtMostOnce,
        QoS::AtLeastOnce => QoS4::AtLeastOnce,
        QoS::ExactlyOnce => QoS4::ExactlyOnce,
    }
}

fn from_v4(p: v4::Packet) -> Result<Packet, WireError> {
    Ok(match p {
        v4::Packet::Connect(c) => {
            let will = c.last_will.map(|w| LastWill {
                topic: Bytes::from(w.topic),
                message: w.message,
                qos: qos_from4(w.qos),
                retain: w.retain,
                properties: None,
            });
            let login = c.login.map(|l| Login {
                username: l.username,
                password: l.password,
            });
            Packet::Connect(
                Connect {
                    keep_alive: c.keep_alive,
                    client_id: c.client_id,
                    clean_start: c.clean_session,
                    properties: None,
                },
                will,
                login,
            )
        }
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos_from4(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(PubAck::new(a.pkid, None)),
        v4::Packet::PubRec(a) => Packet::PubRec(PubRec::new(a.pkid, None)),
        v4::Packet::PubRel(a) => Packet::PubRel(PubRel::new(a.pkid, None)),
        v4::Packet::PubComp(a) => Packet::PubComp(PubComp::new(a.pkid, None)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Filter {
                    path: f.path,
                    qos: qos_from4(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq),
        v4::Packet::Disconnect => {
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
        }
        v4::Packet::ConnAck(_)
        | v4::Packet::SubAck(_)
        | v4::Packet::UnsubAck(_)
        | v4::Packet::PingResp => {
            return Err(malformed("a server-to-client packet from a client"));
        }
    })
}

/// Appends `packet` to `out` in the connection's version. Packets 3.1.1
/// has no form for (AUTH, a DISCONNECT from the server) are skipped.
pub(crate) fn write(version: Version, packet: &Packet, out: &mut BytesMut) -> Result<(), String> {
    match version {
        Version::V5 => packet
            .write(out, None)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Version::V311 => {
            let Some(p) = to_v4(packet) else {
                return Ok(());
            };
            p.write(out, usize::MAX)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

fn connack_code4(code: ConnectReturnCode) -> v4::ConnectReturnCode {
    use v4::ConnectReturnCode as C4;
    match code {
        ConnectReturnCode::Success => C4::Success,
        ConnectReturnCode::UnsupportedProtocolVersion
        | ConnectReturnCode::RefusedProtocolVersion => C4::RefusedProtocolVersion,
        ConnectReturnCode::ClientIdentifierNotValid | ConnectReturnCode::BadClientId => {
            C4::BadClientId
        }
        ConnectReturnCode::BadUserNamePassword => C4::BadUserNamePassword,
        ConnectReturnCode::NotAuthorized | ConnectReturnCode::Banned => C4::NotAuthorized,
        _ => C4::ServiceUnavailable,
    }
}

fn to_v4(p: &Packet) -> Option<v4::Packet> {
    Some(match p {
        Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: c.session_present,
            code: connack_code4(c.code),
        }),
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to4(p.qos),
            retain: p.retain,
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
        Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck {
            pkid: s.pkid,
            return_codes: s
                .return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => {
                        v4::SubscribeReasonCode::Success(qos_to4(*q))
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck::new(u.pkid)),
        Packet::PingResp(_) => v4::Packet::PingResp,
        _ => return None,
    })
}

/// A CONNACK.
pub(crate) fn connack(
    code: ConnectReturnCode,
    session_present: bool,
    properties: Option<rumqttc::v5::mqttbytes::v5::ConnAckProperties>,
) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        code,
        properties,
    })
}

/// A PUBACK with a reason.
pub(crate) fn puback(pkid: u16, reason: PubAckReason) -> Packet {
    Packet::PubAck(PubAck {
        pkid,
        reason,
        properties: None,
    })
}

/// A PUBREC with a reason.
pub(crate) fn pubrec(pkid: u16, reason: PubRecReason) -> Packet {
    Packet::PubRec(PubRec {
        pkid,
        reason,
        properties: None,
    })
}

/// A PUBREL.
pub(crate) fn pubrel(pkid: u16) -> Packet {
    Packet::PubRel(PubRel {
        pkid,
        reason: PubRelReason::Success,
        properties: None,
    })
}

/// A PUBCOMP with a reason.
pub(crate) fn pubcomp(pkid: u16, found: bool) -> Packet {
    Packet::PubComp(PubComp {
        pkid,
        reason: if found {
            PubCompReason::Success
        } else {
            PubCompReason::PacketIdentifierNotFound
        },
        properties: None,
    })
}

/// An UNSUBACK.
pub(crate) fn unsuback(pkid: u16, reasons: Vec<UnsubAckReason>) -> Packet {
    Packet::UnsubAck(UnsubAck {
        pkid,
        reasons,
        properties: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_level_needs_the_whole_variable_header() {
        let v5 = [0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 5];
        assert_eq!(connect_level(&v5[..8]), Ok(None));
        assert_eq!(connect_level(&v5), Ok(Some(Version::V5)));
        let v3 = [
            0x10, 0x0d, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 3,
        ];
        assert_eq!(connect_level(&v3), Err(WireError::UnsupportedVersion(3)));
        assert!(matches!(
            connect_level(&[0x30, 0]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn v311_publish_round_trips_through_the_v5_model() {
        let p = Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: Bytes::from_static(b"a/b"),
            pkid: 7,
            payload: Bytes::from_static(b"x"),
            properties: None,
        });
        let mut out = BytesMut::new();
        write(Version::V311, &p, &mut out).unwrap();
        let back = read(Version::V311, &mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(back, p);
        assert!(out.is_empty());
    }

    #[test]
    fn v5_short_disconnect_is_normal() {
        let mut b = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(
            read(Version::V5, &mut b, 100),
            Ok(Some(Packet::Disconnect(d))) if d.reason_code == DisconnectReasonCode::NormalDisconnection
        ));
    }

    #[test]
    fn oversized_packet_is_too_large() {
        let p = Packet::Publish(Publish::new("t", QoS::AtMostOnce, vec![0u8; 200], None));
        let mut out = BytesMut::new();
        write(Version::V5, &p, &mut out).unwrap();
        assert!(matches!(
            read(Version::V5, &mut out, 100),
            Err(WireError::TooLarge(_))
        ));
    }
}
