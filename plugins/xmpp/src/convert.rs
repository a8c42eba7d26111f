//! Pure mapping between XMPP stanzas and envelopes, unit-tested without a
//! network: what an incoming `<message>` or `<iq>` means for the hub, the
//! chat message an envelope becomes, XEP-0323 readings and XEP-0325 control
//! values, sender allow-lists.

use base64::Engine as _;
use bytes::Bytes;
use polyhub_sdk::{Envelope, Topic, TopicFilter};
use tokio_xmpp::minidom::Element;
use xmpp_parsers::disco::{DiscoInfoResult, Identity};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::ns;
use xmpp_parsers::stanza::Stanza;

use crate::stanza_guard::{Limits, StanzaGuard, STREAM_HEADER};

/// XEP-0323 sensor data namespace.
pub const NS_SENSORDATA: &str = "urn:xmpp:iot:sensordata";
/// XEP-0325 control namespace.
pub const NS_CONTROL: &str = "urn:xmpp:iot:control";
/// First line of a body that carries a base64-encoded binary payload.
pub const BASE64_HEADER: &str = "Content-Transfer-Encoding: base64";

/// What the hub advertises in disco#info (XEP-0030).
pub const FEATURES: [&str; 4] = [ns::DISCO_INFO, ns::PING, NS_SENSORDATA, NS_CONTROL];

/// The text answered to a message the hub does not understand.
pub const HELP: &str = "polyhub: send a message with a <subject> (the topic) and a body \
(the payload) to publish; or a body \"subscribe FILTER\", \"unsubscribe FILTER\" \
(MQTT wildcards + and #) or \"subscriptions\".";

/// One XEP-0323 field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Field name (`temperature`).
    pub field: String,
    /// Value as sent (`23.5`, `true`).
    pub value: String,
    /// Field element name: `numeric`, `boolean`, `string`, `int`, `long`,
    /// `date`, `dateTime`, `duration`, `time`, `enum`.
    pub kind: String,
    /// Unit, for numeric fields.
    pub unit: Option<String>,
    /// `nodeId` of the `<node>` holding it, if any.
    pub node: Option<String>,
    /// `value` of the enclosing `<timestamp>`, if any.
    pub timestamp: Option<String>,
}

/// What an incoming `<message>` asks of the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Subject = topic, body = payload.
    Publish {
        /// The topic.
        topic: Topic,
        /// The payload (base64 already decoded).
        payload: Bytes,
    },
    /// `subscribe FILTER`.
    Subscribe(TopicFilter),
    /// `unsubscribe FILTER`.
    Unsubscribe(TopicFilter),
    /// `subscriptions`.
    List,
    /// XEP-0323 `<fields>`: one envelope per field.
    Readings(Vec<Reading>),
    /// XEP-0325 `<set>` in a message: one envelope per value.
    Control(Vec<Reading>),
    /// Something the hub cannot act on; answered with this text.
    Reply(String),
    /// Malformed input: counted under `polyhub_rejected_total{reason}` and
    /// answered with the text, if any (sensor readings get no answer).
    Refused(&'static str, Option<String>),
    /// Nothing to do or answer: error messages, chat states, receipts,
    /// group chat, sensor-data protocol chatter.
    Ignore,
}

/// Classifies a message from an allowed sender.
pub fn classify_message(msg: &Message) -> Inbound {
    if matches!(msg.type_, MessageType::Error | MessageType::Groupchat) {
        return Inbound::Ignore;
    }
    for payload in &msg.payloads {
        if payload.is("fields", NS_SENSORDATA) {
            let readings = parse_fields(payload);
            return if readings.is_empty() {
                if payload.children().next().is_some() {
                    // Nodes or fields, but no reading that makes a topic.
                    Inbound::Refused("invalid_reading", None)
                } else {
                    Inbound::Ignore
                }
            } else {
                Inbound::Readings(readings)
            };
        }
        if payload.is("set", NS_CONTROL) {
            let values = parse_control(payload);
            return if values.is_empty() {
                Inbound::Refused(
                    "invalid_control",
                    Some("polyhub: the control <set> holds no named value.".into()),
                )
            } else {
                Inbound::Control(values)
            };
        }
        if payload.ns() == NS_SENSORDATA {
            // <started/>, <failure/>, <accepted/>...: nothing to publish.
            return Inbound::Ignore;
        }
    }
    let subject = msg
        .get_best_subject(vec![])
        .map(|(_, s)| s.trim().to_owned());
    let body = msg.get_best_body(vec![]).map(|(_, b)| b.as_str());
    match (subject, body) {
        (Some(subject), body) if !subject.is_empty() => match Topic::new(&subject) {
            Ok(topic) => Inbound::Publish {
                topic,
                payload: decode_body(body.unwrap_or("")),
            },
            Err(e) => Inbound::Refused(
                "invalid_topic",
                Some(format!(
                    "polyhub: the subject `{subject}` is not a topic: {e}"
                )),
            ),
        },
        (_, Some(body)) => classify_command(body),
        _ => Inbound::Ignore,
    }
}

fn classify_command(body: &str) -> Inbound {
    let text = body.trim();
    let (word, rest) = match text.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (text, ""),
    };
    let word = word.to_ascii_lowercase();
    let filter = |make: fn(TopicFilter) -> Inbound| {
        if rest.is_empty() {
            return Inbound::Refused(
                "invalid_command",
                Some(format!("polyhub: usage: {word} FILTER")),
            );
        }
        match TopicFilter::new(rest) {
            Ok(f) => make(f),
            Err(e) => Inbound::Refused(
                "invalid_filter",
                Some(format!("polyhub: `{rest}` is not a topic filter: {e}")),
            ),
        }
    };
    match word.as_str() {
        "subscribe" => filter(Inbound::Subscribe),
        "unsubscribe" => filter(Inbound::Unsubscribe),
        "subscriptions" | "list" => Inbound::List,
        "" => Inbound::Ignore,
        _ => Inbound::Reply(HELP.to_owned()),
    }
}

/// A body as payload: base64-decoded when it starts with [`BASE64_HEADER`].
pub fn decode_body(body: &str) -> Bytes {
    if let Some(rest) = body.strip_prefix(BASE64_HEADER) {
        let data: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) {
            return Bytes::from(bytes);
        }
    }
    Bytes::copy_from_slice(body.as_bytes())
}

/// A payload as body: the text itself, or [`BASE64_HEADER`], a newline and
/// the base64 of the bytes when they are not UTF-8.
pub fn encode_body(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.starts_with(BASE64_HEADER) => text.to_owned(),
        _ => format!(
            "{BASE64_HEADER}\n{}",
            base64::engine::general_purpose::STANDARD.encode(payload)
        ),
    }
}

/// The chat message an envelope becomes for subscriber `to`.
pub fn outbound_message(to: &BareJid, envelope: &Envelope) -> Message {
    let mut msg = Message::new_with_type(MessageType::Chat, Some(Jid::from(to.clone())));
    msg.subjects
        .insert(Lang::new(), envelope.topic.as_str().to_owned());
    msg.bodies
        .insert(Lang::new(), encode_body(&envelope.payload));
    msg
}

/// A plain chat reply.
pub fn text_message(to: Jid, text: &str) -> Message {
    Message::new_with_type(MessageType::Chat, Some(to)).with_body(Lang::new(), text.to_owned())
}

/// XEP-0323 `<fields>`: every field of every `<node>`/`<timestamp>`.
pub fn parse_fields(fields: &Element) -> Vec<Reading> {
    let mut out = Vec::new();
    for node in fields.children() {
        let node_id = node.attr("nodeId").map(str::to_owned);
        // Fields sit under <node><timestamp>; accept them one level up too.
        if node.name() == "timestamp" {
            collect_values(node, None, &mut out);
            continue;
        }
        for ts in node.children() {
            if ts.name() == "timestamp" {
                collect_values(ts, node_id.clone(), &mut out);
            } else if let Some(r) = value_element(ts, node_id.clone(), None) {
                out.push(r);
            }
        }
    }
    out
}

fn collect_values(ts: &Element, node: Option<String>, out: &mut Vec<Reading>) {
    let when = ts.attr("value").map(str::to_owned);
    for field in ts.children() {
        if let Some(r) = value_element(field, node.clone(), when.clone()) {
            out.push(r);
        }
    }
}

const VALUE_KINDS: [&str; 11] = [
    "numeric", "boolean", "string", "int", "long", "date", "dateTime", "duration", "time", "enum",
    "double",
];

fn value_element(el: &Element, node: Option<String>, timestamp: Option<String>) -> Option<Reading> {
    if !VALUE_KINDS.contains(&el.name()) {
        return None;
    }
    let field = el.attr("name")?.trim();
    let value = el.attr("value")?;
    let field = level_safe(field)?;
    Some(Reading {
        field,
        value: value.to_owned(),
        kind: el.name().to_owned(),
        unit: el.attr("unit").map(str::to_owned),
        node,
        timestamp,
    })
}

/// XEP-0325 `<set>`: its named values (nodes, if any, are kept in `node`).
pub fn parse_control(set: &Element) -> Vec<Reading> {
    let mut out = Vec::new();
    for child in set.children() {
        if child.name() == "node" {
            let node = child.attr("nodeId").map(str::to_owned);
            for v in child.children() {
                if let Some(r) = value_element(v, node.clone(), None) {
                    out.push(r);
                }
            }
        } else if let Some(r) = value_element(child, None, None) {
            out.push(r);
        }
    }
    out
}

/// A field name as one topic level: `/`, `+` and `#` become `_`; empty names
/// are refused.
fn level_safe(name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    Some(
        name.chars()
            .map(|c| match c {
                '/' | '+' | '#' | '\0' => '_',
                c => c,
            })
            .collect(),
    )
}

/// The envelope of one reading: topic `xmpp/{bare jid}/{field}` (or
/// `xmpp/{bare jid}/control/{field}` for control values), payload the value,
/// `text/plain`, with unit, kind, node and the device's timestamp as headers.
pub fn reading_envelope(from: &BareJid, reading: &Reading, control: bool) -> Option<Envelope> {
    let topic = if control {
        format!("xmpp/{from}/control/{}", reading.field)
    } else {
        format!("xmpp/{from}/{}", reading.field)
    };
    let topic = Topic::new(&topic).ok()?;
    let mut env = Envelope::new(topic, Bytes::from(reading.value.clone()))
        .with_content_type("text/plain")
        .with_header("xmpp-field-type", reading.kind.clone());
    if let Some(unit) = &reading.unit {
        env = env.with_header("unit", unit.clone());
    }
    if let Some(node) = &reading.node {
        env = env.with_header("xmpp-node", node.clone());
    }
    if let Some(ts) = &reading.timestamp {
        env = env.with_header("xmpp-timestamp", ts.clone());
    }
    Some(env)
}

/// The envelope a [`Inbound::Publish`] becomes: `text/plain` when the
/// payload is UTF-8, else `application/octet-stream`.
pub fn publish_envelope(topic: Topic, payload: Bytes) -> Envelope {
    let content_type = if std::str::from_utf8(&payload).is_ok() {
        "text/plain"
    } else {
        "application/octet-stream"
    };
    Envelope::new(topic, payload).with_content_type(content_type)
}

/// The envelopes an [`Inbound`] from `from` publishes (none for commands,
/// replies and ignored messages).
pub fn inbound_envelopes(from: &BareJid, inbound: &Inbound) -> Vec<Envelope> {
    match inbound {
        Inbound::Publish { topic, payload } => {
            vec![publish_envelope(topic.clone(), payload.clone())]
        }
        Inbound::Readings(r) => r
            .iter()
            .filter_map(|r| reading_envelope(from, r, false))
            .collect(),
        Inbound::Control(v) => v
            .iter()
            .filter_map(|v| reading_envelope(from, v, true))
            .collect(),
        _ => Vec::new(),
    }
}

/// Why [`inbound_from_bytes`] produced nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundError {
    /// The stanza guard refused it (the `polyhub_rejected_total` reason).
    Refused(&'static str),
    /// Not XML the guard can follow (the stream would be dropped).
    NotXml,
    /// The XML parser refused it, or it is not one complete stanza.
    Parse(String),
}

/// Turns one stanza's bytes, as the server sends them on the hub's stream,
/// into the envelopes the adapter would publish for a sender `from` that is
/// allowed: the same path as a live connection, without a network, for tests
/// and the fuzz target `fuzz/fuzz_targets/xmpp_stanza.rs`. The bytes pass
/// the [`StanzaGuard`] with `limits`, then the parser tokio-xmpp uses (rxml
/// events into xso's `Stanza` builder), then [`classify_message`] and
/// [`inbound_envelopes`] for a `<message>`. Other stanzas give no envelope.
pub fn inbound_from_bytes(
    bytes: &[u8],
    from: &BareJid,
    limits: Limits,
) -> Result<Vec<Envelope>, InboundError> {
    use xso::exports::rxml::{self, error::EndOrError, Parse};
    use xso::{FromEventsBuilder, FromXml};

    let mut guard = StanzaGuard::new(limits);
    let mut out = Vec::with_capacity(STREAM_HEADER.len() + bytes.len());
    let mut refused = None;
    guard
        .feed(STREAM_HEADER.as_bytes(), &mut out, &mut |_| {})
        .and_then(|()| guard.feed(bytes, &mut out, &mut |r| refused = Some(r)))
        .map_err(|_| InboundError::NotXml)?;
    if let Some(r) = refused {
        return Err(InboundError::Refused(r.reason()));
    }
    let parse_err = |e: &dyn std::fmt::Display| InboundError::Parse(e.to_string());
    let mut parser = rxml::Parser::default();
    let mut buf = &out[..];
    let mut next = move || match parser.parse(&mut buf, false) {
        Ok(Some(ev)) => Ok(ev),
        Ok(None) | Err(EndOrError::NeedMoreData) => {
            Err(InboundError::Parse("not one complete stanza".into()))
        }
        Err(EndOrError::Error(e)) => Err(parse_err(&e)),
    };
    // The stream header, then the stanza's start (whitespace between).
    let mut starts = 0;
    let (name, attrs) = loop {
        match next()? {
            rxml::Event::StartElement(_, name, attrs) => {
                starts += 1;
                if starts == 2 {
                    break (name, attrs);
                }
            }
            rxml::Event::Text(..) | rxml::Event::XmlDeclaration(..) => {}
            rxml::Event::EndElement(_) => {
                return Err(InboundError::Parse("no stanza".into()));
            }
        }
    };
    let ctx = xso::Context::empty();
    let mut builder =
        <Result<Stanza, xso::error::Error> as FromXml>::from_events(name, attrs, &ctx)
            .map_err(|e| parse_err(&e))?;
    let stanza = loop {
        if let Some(done) = builder.feed(next()?, &ctx).map_err(|e| parse_err(&e))? {
            break done.map_err(|e| parse_err(&e))?;
        }
    };
    Ok(match stanza {
        Stanza::Message(m) => inbound_envelopes(from, &classify_message(&m)),
        Stanza::Iq(_) | Stanza::Presence(_) => Vec::new(),
    })
}

/// The disco#info result the hub answers with.
pub fn disco_info() -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![Identity::new("client", "bot", "en", "polyhub")],
        features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        extensions: vec![],
    }
}

/// The XEP-0325 answer to a control `<iq type="set">`.
pub fn control_response() -> Element {
    Element::builder("setResponse", NS_CONTROL)
        .attr(
            tokio_xmpp::minidom::rxml::xml_ncname!("responseCode").to_owned(),
            "OK",
        )
        .build()
}

/// The `[auth]` user a sender's bare JID stands for: its entry in `users`,
/// else its local part when the JID is on `own_domain` (the hub's; its
/// server authenticated the sender); `None` (anonymous) for a JID of
/// another domain without an entry, whose local part the hub's users do
/// not own.
pub fn user_of<'a>(
    users: &'a std::collections::HashMap<BareJid, String>,
    own_domain: &str,
    jid: &'a BareJid,
) -> Option<&'a str> {
    if let Some(user) = users.get(jid) {
        return Some(user);
    }
    if !jid.domain().as_str().eq_ignore_ascii_case(own_domain) {
        return None;
    }
    jid.node().map(|n| n.as_str())
}

/// Whether `jid` matches one of the `allow` patterns (lower-case globs
/// where `*` matches any run of characters).
pub fn allowed(patterns: &[String], jid: &BareJid) -> bool {
    let jid = jid.to_string().to_lowercase();
    patterns.iter().any(|p| glob_match(p, &jid))
}

fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(xml: &str) -> Message {
        let el: Element = xml.parse().unwrap();
        Message::try_from(el).unwrap()
    }

    #[test]
    fn subject_and_body_publish() {
        let m = msg("<message xmlns='jabber:client' type='chat'><subject>sensors/t1</subject><body>21.5</body></message>");
        assert_eq!(
            classify_message(&m),
            Inbound::Publish {
                topic: Topic::new("sensors/t1").unwrap(),
                payload: Bytes::from_static(b"21.5")
            }
        );
    }

    #[test]
    fn wildcard_subject_is_answered_not_published() {
        let m = msg(
            "<message xmlns='jabber:client'><subject>sensors/+</subject><body>x</body></message>",
        );
        assert!(
            matches!(classify_message(&m), Inbound::Refused("invalid_topic", Some(t)) if t.contains("not a topic"))
        );
    }

    #[test]
    fn commands_are_recognised() {
        let body = |b: &str| {
            msg(&format!(
                "<message xmlns='jabber:client'><body>{b}</body></message>"
            ))
        };
        assert_eq!(
            classify_message(&body("subscribe sensors/#")),
            Inbound::Subscribe(TopicFilter::new("sensors/#").unwrap())
        );
        assert_eq!(
            classify_message(&body("  UNSUBSCRIBE   a/+/c ")),
            Inbound::Unsubscribe(TopicFilter::new("a/+/c").unwrap())
        );
        assert_eq!(classify_message(&body("subscriptions")), Inbound::List);
        assert!(
            matches!(classify_message(&body("subscribe a/#/b")), Inbound::Refused("invalid_filter", Some(t)) if t.contains("not a topic filter"))
        );
        assert!(
            matches!(classify_message(&body("subscribe")), Inbound::Refused("invalid_command", Some(t)) if t.contains("usage"))
        );
        assert_eq!(
            classify_message(&body("hello")),
            Inbound::Reply(HELP.to_owned())
        );
    }

    #[test]
    fn errors_chat_states_and_group_chat_are_ignored() {
        let m =
            msg("<message xmlns='jabber:client' type='error'><body>subscribe #</body></message>");
        assert_eq!(classify_message(&m), Inbound::Ignore);
        let m = msg("<message xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
        assert_eq!(classify_message(&m), Inbound::Ignore);
        let m = msg("<message xmlns='jabber:client' type='groupchat'><body>hi</body></message>");
        assert_eq!(classify_message(&m), Inbound::Ignore);
    }

    #[test]
    fn sensor_fields_as_slixmpp_sends_them() {
        let m = msg(
            r#"<message xmlns="jabber:client" to="hub@localhost"><fields xmlns="urn:xmpp:iot:sensordata" seqnr="1" done="true"><node nodeId="firealarm"><timestamp value="2024-01-01T00:00:00"><numeric unit="C" name="temperature" value="23.5" momentary="true" automaticReadout="true" /><boolean name="alarm" value="false" /><numeric value="1"/></timestamp></node></fields></message>"#,
        );
        let Inbound::Readings(r) = classify_message(&m) else {
            panic!("not readings")
        };
        assert_eq!(r.len(), 2, "the field without a name is skipped");
        assert_eq!(r[0].field, "temperature");
        assert_eq!(r[0].value, "23.5");
        assert_eq!(r[0].unit.as_deref(), Some("C"));
        assert_eq!(r[0].node.as_deref(), Some("firealarm"));
        assert_eq!(r[0].timestamp.as_deref(), Some("2024-01-01T00:00:00"));
        assert_eq!(r[1].kind, "boolean");
        let from = BareJid::new("alice@localhost").unwrap();
        let env = reading_envelope(&from, &r[0], false).unwrap();
        assert_eq!(env.topic.as_str(), "xmpp/alice@localhost/temperature");
        assert_eq!(&env.payload[..], b"23.5");
        assert_eq!(env.header("unit"), Some("C"));
        assert_eq!(env.header("xmpp-node"), Some("firealarm"));
    }

    #[test]
    fn field_names_stay_one_level() {
        let el: Element = r#"<fields xmlns="urn:xmpp:iot:sensordata"><node nodeId="n"><timestamp value="t"><numeric name="a/b+#" value="1"/><string name="" value="x"/></timestamp></node></fields>"#.parse().unwrap();
        let r = parse_fields(&el);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].field, "a_b__");
    }

    #[test]
    fn control_set_becomes_control_values() {
        let m = msg(
            r#"<message xmlns="jabber:client"><set xmlns="urn:xmpp:iot:control"><boolean name="led" value="true" /></set></message>"#,
        );
        let Inbound::Control(v) = classify_message(&m) else {
            panic!("not control")
        };
        let from = BareJid::new("alice@localhost").unwrap();
        let env = reading_envelope(&from, &v[0], true).unwrap();
        assert_eq!(env.topic.as_str(), "xmpp/alice@localhost/control/led");
        assert_eq!(&env.payload[..], b"true");
    }

    #[test]
    fn binary_payloads_round_trip_through_base64() {
        let bin = [0xffu8, 0x00, 0xfe, b'a'];
        let body = encode_body(&bin);
        assert!(body.starts_with(BASE64_HEADER));
        assert_eq!(&decode_body(&body)[..], &bin);
        assert_eq!(encode_body(b"plain text"), "plain text");
        assert_eq!(&decode_body("plain text")[..], b"plain text");
    }

    #[test]
    fn senders_are_their_mapped_user_or_their_local_part_on_the_own_domain() {
        let bare = |s: &str| BareJid::new(s).unwrap();
        let users: std::collections::HashMap<BareJid, String> =
            [(bare("alice@example.org"), "user1".to_owned())].into();
        assert_eq!(
            user_of(&users, "localhost", &bare("alice@example.org")),
            Some("user1")
        );
        assert_eq!(
            user_of(&users, "localhost", &bare("user2@localhost")),
            Some("user2")
        );
        assert_eq!(user_of(&users, "localhost", &bare("user2@elsewhere")), None);
        assert_eq!(user_of(&users, "localhost", &bare("localhost")), None);
    }

    #[test]
    fn outbound_message_has_topic_subject_and_payload_body() {
        let env = Envelope::new(Topic::new("sensors/t1").unwrap(), Bytes::from_static(b"42"));
        let to = BareJid::new("bob@localhost").unwrap();
        let m = outbound_message(&to, &env);
        let xml = String::from(&Element::from(m));
        assert!(xml.contains("type='chat'"), "{xml}");
        assert!(xml.contains("<subject>sensors/t1</subject>"), "{xml}");
        assert!(xml.contains("<body>42</body>"), "{xml}");
    }

    #[test]
    fn allow_patterns_glob_on_bare_jids() {
        let jid = |s: &str| BareJid::new(s).unwrap();
        let p = vec!["*@localhost".to_owned()];
        assert!(allowed(&p, &jid("alice@localhost")));
        assert!(!allowed(&p, &jid("alice@evil.example")));
        assert!(!allowed(&p, &jid("alice@localhost.evil")));
        let p = vec!["sensor-*@iot.example".to_owned(), "bob@x".to_owned()];
        assert!(allowed(&p, &jid("sensor-12@iot.example")));
        assert!(allowed(&p, &jid("Bob@x")));
        assert!(!allowed(&p, &jid("carol@x")));
        assert!(allowed(&["*".to_owned()], &jid("a@b")));
    }

    #[test]
    fn stanza_bytes_become_envelopes_through_guard_and_parser() {
        let from = BareJid::new("alice@localhost").unwrap();
        let limits = Limits::default();
        let got = inbound_from_bytes(
            b"<message from='alice@localhost/r' to='hub@localhost'><subject>lab/t</subject><body>21</body></message>",
            &from,
            limits,
        )
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic.as_str(), "lab/t");
        assert_eq!(&got[0].payload[..], b"21");
        let deep = format!(
            "<message><subject>a</subject>{}{}</message>",
            "<a>".repeat(10_000),
            "</a>".repeat(10_000)
        );
        assert_eq!(
            inbound_from_bytes(deep.as_bytes(), &from, limits).err(),
            Some(InboundError::Refused("xml_too_deep"))
        );
        let big = format!(
            "<message><x xmlns='u:x' v='{}'/></message>",
            "A".repeat(9000)
        );
        assert_eq!(
            inbound_from_bytes(big.as_bytes(), &from, limits).err(),
            Some(InboundError::Refused("xml_too_large"))
        );
        // Invalid XMPP is refused by the guard too (where it is counted).
        assert_eq!(
            inbound_from_bytes(b"<message type='bogus'/>", &from, limits).err(),
            Some(InboundError::Refused("invalid_stanza"))
        );
    }

    #[test]
    fn disco_advertises_iot_features() {
        let info = disco_info();
        assert!(info.features.contains(NS_SENSORDATA));
        assert!(info.features.contains(ns::PING));
    }
}
