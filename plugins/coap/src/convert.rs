//! Pure mapping between CoAP messages and hub envelopes: Uri-Path ↔ topic,
//! Content-Format ↔ content type, block options, link-format listings and
//! the shapes of responses. No sockets here; everything is unit-tested.

use std::fmt::Write as _;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use polyhub_sdk::{Envelope, Origin, QoS, Topic, TopicFilter};

/// Header holding a Content-Format number that has no MIME type mapping, so
/// that it survives a trip through the hub.
pub const CONTENT_FORMAT_HEADER: &str = "coap-content-format";

/// Resource type advertised for topics in `/.well-known/core`.
pub const TOPIC_RT: &str = "polyhub.topic";

/// What a request's Uri-Path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// `/.well-known/core`.
    WellKnownCore,
    /// `/ps/{levels}`: a topic, or a filter when it holds `+` / `#` levels.
    Topic(TopicFilter),
}

/// Why a Uri-Path names nothing we serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not under `/ps` nor `/.well-known/core` (→ 4.04).
    NotFound,
    /// Under `/ps` but not a valid topic or filter (→ 4.00, with the reason).
    BadTopic(String),
}

/// Maps Uri-Path segments to the resource they name.
pub fn resource_from_path(segments: &[String]) -> Result<Resource, PathError> {
    match segments {
        [a, b] if a == ".well-known" && b == "core" => Ok(Resource::WellKnownCore),
        [ps] if ps == "ps" => Err(PathError::BadTopic("no topic after /ps/".to_owned())),
        [ps, levels @ ..] if ps == "ps" => {
            if let Some(bad) = levels.iter().find(|l| l.contains('/')) {
                return Err(PathError::BadTopic(format!(
                    "Uri-Path segment `{bad}` contains `/`; use one Uri-Path option per level"
                )));
            }
            TopicFilter::new(&levels.join("/"))
                .map(Resource::Topic)
                .map_err(|e| PathError::BadTopic(e.to_string()))
        }
        _ => Err(PathError::NotFound),
    }
}

/// The Uri-Path options of a packet, as UTF-8 strings; `None` when one is
/// not UTF-8.
pub fn uri_path(packet: &Packet) -> Option<Vec<String>> {
    string_options(packet, CoapOption::UriPath)
}

/// The Uri-Query options of a packet, as UTF-8 strings; `None` when one is
/// not UTF-8.
pub fn uri_query(packet: &Packet) -> Option<Vec<String>> {
    string_options(packet, CoapOption::UriQuery)
}

fn string_options(packet: &Packet, option: CoapOption) -> Option<Vec<String>> {
    match packet.get_option(option) {
        None => Some(Vec::new()),
        Some(list) => list
            .iter()
            .map(|v| String::from_utf8(v.clone()).ok())
            .collect(),
    }
}

/// The Content-Format registry entries with a MIME type (RFC 7252 §12.3 and
/// the IANA CoAP Content-Formats registry).
const CONTENT_FORMATS: &[(u16, &str)] = &[
    (0, "text/plain;charset=utf-8"),
    (40, "application/link-format"),
    (41, "application/xml"),
    (42, "application/octet-stream"),
    (47, "application/exi"),
    (50, "application/json"),
    (51, "application/json-patch+json"),
    (52, "application/merge-patch+json"),
    (60, "application/cbor"),
    (61, "application/cwt"),
    (110, "application/senml+json"),
    (111, "application/sensml+json"),
    (112, "application/senml+cbor"),
    (113, "application/sensml+cbor"),
    (310, "application/senml+xml"),
    (311, "application/sensml+xml"),
    (432, "application/td+json"),
    (10002, "application/javascript"),
    (20000, "text/css"),
    (30000, "image/svg+xml"),
];

/// The MIME type of a Content-Format number, if registered.
pub fn content_type_of(format: u16) -> Option<&'static str> {
    CONTENT_FORMATS
        .iter()
        .find(|(n, _)| *n == format)
        .map(|(_, t)| *t)
}

/// The Content-Format number of a MIME type. Parameters other than a UTF-8
/// charset on `text/plain` are not matched; case and spaces are ignored.
pub fn content_format_of(content_type: &str) -> Option<u16> {
    let norm: String = content_type
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let norm = match norm.as_str() {
        "text/plain" | "text/plain;charset=utf-8" | "text/plain;charset=\"utf-8\"" => {
            return Some(0)
        }
        other => other,
    };
    CONTENT_FORMATS
        .iter()
        .find(|(_, t)| *t == norm)
        .map(|(n, _)| *n)
}

/// Reads an unsigned integer option value (RFC 7252 §3.2: big-endian,
/// leading zeros omitted, at most `max_len` bytes).
pub fn decode_uint(value: &[u8], max_len: usize) -> Option<u32> {
    if value.len() > max_len || value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
}

/// Encodes an unsigned integer option value in the fewest bytes.
pub fn encode_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// An option value that does not decode (answered `4.02 Bad Option`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadOption;

/// The packet's Content-Format, `Err` when the option is malformed.
pub fn content_format(packet: &Packet) -> Result<Option<u16>, BadOption> {
    match packet.get_first_option(CoapOption::ContentFormat) {
        None => Ok(None),
        Some(v) => decode_uint(v, 2).map(|n| Some(n as u16)).ok_or(BadOption),
    }
}

/// Sets `content_type` (or the [`CONTENT_FORMAT_HEADER`] of an unregistered
/// format) on an envelope built from a request.
pub fn apply_content_format(envelope: &mut Envelope, format: Option<u16>) {
    if let Some(f) = format {
        match content_type_of(f) {
            Some(t) => envelope.content_type = Some(t.to_owned()),
            None => envelope
                .headers
                .push((CONTENT_FORMAT_HEADER.to_owned(), f.to_string())),
        }
    }
}

/// The Content-Format to send an envelope's payload with.
pub fn envelope_content_format(envelope: &Envelope) -> Option<u16> {
    envelope
        .content_type
        .as_deref()
        .and_then(content_format_of)
        .or_else(|| {
            envelope
                .header(CONTENT_FORMAT_HEADER)
                .and_then(|v| v.parse().ok())
        })
}

/// A Block1 or Block2 option value (RFC 7959 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Block number.
    pub num: u32,
    /// Whether more blocks follow.
    pub more: bool,
    /// Size exponent: the block holds `2^(szx+4)` bytes.
    pub szx: u8,
}

impl Block {
    /// Bytes per block.
    pub fn size(&self) -> usize {
        1 << (self.szx + 4)
    }

    /// Byte offset of this block.
    pub fn offset(&self) -> usize {
        self.num as usize * self.size()
    }

    /// The size exponent of a block size (a power of two, 16..=1024).
    pub fn szx_for(size: usize) -> u8 {
        (size.clamp(16, 1024).trailing_zeros() - 4) as u8
    }

    /// Decodes an option value; `None` when malformed or BERT (szx 7).
    pub fn decode(value: &[u8]) -> Option<Block> {
        let v = decode_uint(value, 3)?;
        let szx = (v & 0x7) as u8;
        if szx == 7 {
            return None;
        }
        Some(Block {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx,
        })
    }

    /// Encodes the option value.
    pub fn encode(&self) -> Vec<u8> {
        encode_uint(self.num << 4 | u32::from(self.more) << 3 | u32::from(self.szx))
    }

    /// The packet's block option `option`; `Err` when present but malformed.
    pub fn of(packet: &Packet, option: CoapOption) -> Result<Option<Block>, BadOption> {
        match packet.get_first_option(option) {
            None => Ok(None),
            Some(v) => Block::decode(v).map(Some).ok_or(BadOption),
        }
    }
}

/// The slice of `body` that block `num` of size `szx` holds, with the Block2
/// option describing it; `None` when the block starts past the end.
pub fn block_slice(body: &[u8], num: u32, szx: u8) -> Option<(std::ops::Range<usize>, Block)> {
    let b = Block {
        num,
        more: false,
        szx,
    };
    let start = b.offset();
    if start >= body.len() && !(start == 0 && body.is_empty()) {
        return None;
    }
    let end = (start + b.size()).min(body.len());
    Some((
        start..end,
        Block {
            more: end < body.len(),
            ..b
        },
    ))
}

/// Characters escaped in a link-format URI: everything except unreserved
/// characters and the sub-delims that cannot end a link (`;`, `,`, `>` and
/// `"` are escaped).
const LINK_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// One topic as a link (RFC 6690): `</ps/a/b>;rt="polyhub.topic";obs`, with
/// `ct` when the last value has a Content-Format.
pub fn topic_link(topic: &str, format: Option<u16>) -> String {
    let mut s = String::from("</ps");
    for level in topic.split('/') {
        s.push('/');
        s.extend(utf8_percent_encode(level, LINK_ESCAPE));
    }
    let _ = write!(s, ">;rt=\"{TOPIC_RT}\";obs");
    if let Some(ct) = format {
        let _ = write!(s, ";ct={ct}");
    }
    s
}

/// The `/.well-known/core` document for these topics. `href` filtering
/// (RFC 6690 §4.1) keeps links whose URI equals the query value, or starts
/// with it when it ends in `*`.
pub fn link_format<'a>(
    topics: impl IntoIterator<Item = (&'a str, Option<u16>)>,
    queries: &[String],
) -> String {
    let href = queries.iter().find_map(|q| q.strip_prefix("href="));
    let rt = queries.iter().find_map(|q| q.strip_prefix("rt="));
    if let Some(rt) = rt {
        let matches = match rt.strip_suffix('*') {
            Some(prefix) => TOPIC_RT.starts_with(prefix),
            None => rt == TOPIC_RT,
        };
        if !matches {
            return String::new();
        }
    }
    let mut links: Vec<String> = topics
        .into_iter()
        .map(|(t, f)| topic_link(t, f))
        .filter(|link| match href {
            None => true,
            Some(h) => {
                let uri = &link[1..link.find('>').unwrap_or(link.len())];
                match h.strip_suffix('*') {
                    Some(prefix) => uri.starts_with(prefix),
                    None => uri == h,
                }
            }
        })
        .collect();
    links.sort();
    links.join(",")
}

/// Why a datagram is not a CoAP message this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong, for logs.
    pub why: &'static str,
    /// The message id to answer with a RST (RFC 7252 §4.2, §4.3: a CON or
    /// NON message with a format error); `None`: drop silently.
    pub reset: Option<u16>,
}

/// Parses a datagram into a CoAP message (RFC 7252 §3), refusing what
/// coap-lite would accept but the RFC does not: unknown versions, empty
/// messages with anything after the header, reserved codes.
pub fn parse_datagram(buf: &[u8]) -> Result<Packet, Malformed> {
    let refuse = |why, reset| Err(Malformed { why, reset });
    if buf.len() < 4 {
        return refuse("shorter than the 4-byte header", None);
    }
    if buf[0] >> 6 != 1 {
        // RFC 7252 §3: unknown versions are silently ignored.
        return refuse("unknown CoAP version", None);
    }
    let kind = (buf[0] >> 4) & 0x3;
    let mid = u16::from_be_bytes([buf[2], buf[3]]);
    let reset = (kind <= 1).then_some(mid);
    match Packet::from_bytes(buf) {
        Ok(p) if p.header.code == MessageClass::Empty && buf.len() != 4 => {
            refuse("empty message with a token, options or payload", reset)
        }
        Ok(p) if matches!(p.header.code, MessageClass::Reserved(_)) => {
            refuse("reserved message code", reset)
        }
        Ok(p) => Ok(p),
        Err(_) => refuse("bad token length or options", reset),
    }
}

/// The envelope a `POST`/`PUT` request publishes: the assembled `payload`
/// on `topic`, QoS 1 for a CON request and 0 for a NON one, the request's
/// Content-Format, and the `retain` and `qos=0|1` query items.
pub fn request_envelope(
    req: &Packet,
    topic: Topic,
    query: &[String],
    payload: Vec<u8>,
    format: Option<u16>,
    origin: Origin,
) -> Envelope {
    let con = req.header.get_type() == MessageType::Confirmable;
    let mut envelope = Envelope::new(topic, payload)
        .with_origin(origin)
        .with_qos(if con {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        });
    apply_content_format(&mut envelope, format);
    for q in query {
        match q.split_once('=').unwrap_or((q.as_str(), "true")) {
            ("retain", v) => envelope.retain = matches!(v, "true" | "1" | ""),
            ("qos", "0") => envelope.qos = QoS::AtMostOnce,
            ("qos", "1") => envelope.qos = QoS::AtLeastOnce,
            _ => {}
        }
    }
    envelope
}

/// The response to `request` with `code`: a piggybacked ACK for a CON
/// request, a NON (with message id `mid`) for a NON one. Token echoed.
pub fn response_to(request: &Packet, code: ResponseType, mid: u16) -> Packet {
    let mut p = Packet::new();
    match request.header.get_type() {
        MessageType::Confirmable => {
            p.header.set_type(MessageType::Acknowledgement);
            p.header.message_id = request.header.message_id;
        }
        _ => {
            p.header.set_type(MessageType::NonConfirmable);
            p.header.message_id = mid;
        }
    }
    p.header.code = MessageClass::Response(code);
    p.set_token(request.get_token().to_vec());
    p
}

/// An empty message (ACK or RST) for message id `mid`.
pub fn empty(kind: MessageType, mid: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(kind);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    p
}

/// Adds a diagnostic payload (RFC 7252 §5.5.2) to an error response.
pub fn with_diagnostic(mut p: Packet, text: &str) -> Packet {
    p.payload = text.as_bytes().to_vec();
    p
}

/// Sets Content-Format on a packet.
pub fn set_content_format(p: &mut Packet, format: Option<u16>) {
    p.clear_option(CoapOption::ContentFormat);
    if let Some(f) = format {
        p.add_option(CoapOption::ContentFormat, encode_uint(u32::from(f)));
    }
}

/// An 8-byte ETag for a body (FNV-1a), so a client can tell whether the
/// blocks it assembles come from one representation.
pub fn etag(body: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::RequestType;

    fn segs(p: &str) -> Vec<String> {
        p.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn ps_paths_name_topics_and_filters() {
        assert_eq!(
            resource_from_path(&segs("ps/sensors/temp")),
            Ok(Resource::Topic(TopicFilter::new("sensors/temp").unwrap()))
        );
        let r = resource_from_path(&segs("ps/sensors/+/#")).unwrap();
        assert!(matches!(r, Resource::Topic(f) if f.has_wildcards()));
        assert_eq!(
            resource_from_path(&segs(".well-known/core")),
            Ok(Resource::WellKnownCore)
        );
        assert_eq!(
            resource_from_path(&segs("other/x")),
            Err(PathError::NotFound)
        );
        assert_eq!(resource_from_path(&[]), Err(PathError::NotFound));
        assert!(matches!(
            resource_from_path(&segs("ps")),
            Err(PathError::BadTopic(_))
        ));
        assert!(matches!(
            resource_from_path(&segs("ps/a/#/b")),
            Err(PathError::BadTopic(_))
        ));
        assert!(matches!(
            resource_from_path(&["ps".to_owned(), "a/b".to_owned()]),
            Err(PathError::BadTopic(_))
        ));
    }

    #[test]
    fn content_formats_map_both_ways() {
        assert_eq!(content_type_of(50), Some("application/json"));
        assert_eq!(content_format_of("application/json"), Some(50));
        assert_eq!(content_format_of("text/plain"), Some(0));
        assert_eq!(content_format_of("Text/Plain; charset=UTF-8"), Some(0));
        assert_eq!(content_format_of("application/x-unknown"), None);
        assert_eq!(content_type_of(65000), None);

        let mut e = Envelope::new(polyhub_sdk::Topic::new("a").unwrap(), "x");
        apply_content_format(&mut e, Some(65000));
        assert_eq!(e.content_type, None);
        assert_eq!(envelope_content_format(&e), Some(65000));
        let mut e = Envelope::new(polyhub_sdk::Topic::new("a").unwrap(), "x");
        apply_content_format(&mut e, Some(60));
        assert_eq!(e.content_type.as_deref(), Some("application/cbor"));
        assert_eq!(envelope_content_format(&e), Some(60));
    }

    #[test]
    fn block_options_round_trip() {
        let b = Block {
            num: 5,
            more: true,
            szx: 6,
        };
        assert_eq!(b.size(), 1024);
        assert_eq!(b.offset(), 5120);
        assert_eq!(Block::decode(&b.encode()), Some(b));
        assert_eq!(
            Block::decode(&[]),
            Some(Block {
                num: 0,
                more: false,
                szx: 0
            })
        );
        assert_eq!(Block::decode(&[0x07]), None, "BERT is not for UDP");
        assert_eq!(Block::decode(&[1, 2, 3, 4]), None);
        assert_eq!(Block::szx_for(1024), 6);
        assert_eq!(Block::szx_for(16), 0);
    }

    #[test]
    fn block_slices_cover_the_body() {
        let body = vec![7u8; 2500];
        let (r, b) = block_slice(&body, 0, 6).unwrap();
        assert_eq!((r, b.more), (0..1024, true));
        let (r, b) = block_slice(&body, 2, 6).unwrap();
        assert_eq!((r, b.more), (2048..2500, false));
        assert!(block_slice(&body, 3, 6).is_none());
        let (r, b) = block_slice(&[], 0, 6).unwrap();
        assert_eq!((r, b.more), (0..0, false));
    }

    #[test]
    fn link_format_lists_topics_escaped_and_filtered() {
        let doc = link_format([("sensors/temp", Some(0)), ("a b/c;d", None)], &[]);
        assert_eq!(
            doc,
            "</ps/a%20b/c%3Bd>;rt=\"polyhub.topic\";obs,</ps/sensors/temp>;rt=\"polyhub.topic\";obs;ct=0"
        );
        let only = link_format(
            [("sensors/temp", None), ("x", None)],
            &["href=/ps/sensors*".to_owned()],
        );
        assert_eq!(only, "</ps/sensors/temp>;rt=\"polyhub.topic\";obs");
        assert_eq!(link_format([("x", None)], &["rt=other".to_owned()]), "");
    }

    #[test]
    fn responses_echo_token_and_match_the_request_type() {
        let mut req = Packet::new();
        req.header.set_type(MessageType::Confirmable);
        req.header.code = MessageClass::Request(RequestType::Get);
        req.header.message_id = 0x1234;
        req.set_token(vec![1, 2, 3]);
        let ack = response_to(&req, ResponseType::Content, 99);
        assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(ack.header.message_id, 0x1234);
        assert_eq!(ack.get_token(), &[1, 2, 3]);
        req.header.set_type(MessageType::NonConfirmable);
        let non = response_to(&req, ResponseType::Changed, 99);
        assert_eq!(non.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(non.header.message_id, 99);
    }

    #[test]
    fn uints_use_the_fewest_bytes() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(60), vec![60]);
        assert_eq!(encode_uint(0x1_0000), vec![1, 0, 0]);
        assert_eq!(decode_uint(&[1, 0, 0], 3), Some(0x1_0000));
        assert_eq!(decode_uint(&[1, 0, 0], 2), None);
    }
}
