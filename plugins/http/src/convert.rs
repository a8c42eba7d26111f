//! Pure mapping between HTTP requests and [`Envelope`]s, without a network:
//! topics from request paths, publish options from query strings, the JSON of
//! a Server-Sent Event, and the headers of a webhook request.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use polyhub_sdk::{Envelope, QoS, Topic, TopicError, TopicFilter};
use serde::Serialize;
use thiserror::Error;

/// Most `X-` request headers carried into an envelope.
pub const MAX_CARRIED_HEADERS: usize = 32;

/// Why a request cannot be turned into an envelope or a subscription.
/// Each is a client error (`400`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in `{0}`")]
    PercentEncoding(String),
    /// The decoded bytes are not UTF-8.
    #[error("`{0}` does not decode to UTF-8")]
    NotUtf8(String),
    /// The path does not name a valid topic (empty, wildcards, NUL).
    #[error("invalid topic: {0}")]
    Topic(TopicError),
    /// A `filter` parameter is not a valid topic filter.
    #[error("invalid filter: {0}")]
    Filter(TopicError),
    /// A query parameter has a value outside its range.
    #[error("invalid value `{value}` for `{key}`: expected {expected}")]
    Param {
        /// Parameter name.
        key: String,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
}

impl RequestError {
    /// The reason it is counted under in `polyhub_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::PercentEncoding(_) | RequestError::NotUtf8(_) => "bad_encoding",
            RequestError::Topic(_) => "invalid_topic",
            RequestError::Filter(_) => "invalid_filter",
            RequestError::Param { .. } => "bad_query",
        }
    }
}

/// Decodes `%XX` sequences; anything else (including `+`) stays as it is.
/// Rejects a `%` without two hex digits and a result that is not UTF-8.
pub fn percent_decode_strict(s: &str) -> Result<String, RequestError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(RequestError::PercentEncoding(s.to_owned())),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RequestError::NotUtf8(s.to_owned()))
}

/// The topic named by the raw (still percent-encoded) path after `/topics/`.
/// An encoded `/` (`%2F`) is a level separator like a literal one.
pub fn topic_from_path(raw: &str) -> Result<Topic, RequestError> {
    let decoded = percent_decode_strict(raw)?;
    Topic::try_from(decoded).map_err(RequestError::Topic)
}

/// Splits a raw query string into decoded `key=value` pairs, in order.
/// `+` is kept as `+` (it is a topic wildcard here, not a space).
pub fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, RequestError> {
    let Some(q) = query else {
        return Ok(Vec::new());
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode_strict(k)?, percent_decode_strict(v)?))
        })
        .collect()
}

/// `?qos=` and `?retain=` of a publish request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishOptions {
    /// Delivery guarantee (`qos=0|1|2`, default 0).
    pub qos: QoS,
    /// Retain flag (`retain=true|false|1|0`, default false).
    pub retain: bool,
}

impl PublishOptions {
    /// Reads the options from decoded query pairs; other keys are ignored.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, RequestError> {
        let mut opts = PublishOptions::default();
        for (k, v) in pairs {
            match k.as_str() {
                "qos" => {
                    opts.qos = v
                        .parse::<u8>()
                        .ok()
                        .and_then(|n| QoS::try_from(n).ok())
                        .ok_or_else(|| RequestError::Param {
                            key: k.clone(),
                            value: v.clone(),
                            expected: "0, 1 or 2",
                        })?
                }
                "retain" => opts.retain = parse_bool(k, v)?,
                _ => {}
            }
        }
        Ok(opts)
    }
}

/// `true|false|1|0` (an empty value, as in `?retain`, is true).
pub fn parse_bool(key: &str, value: &str) -> Result<bool, RequestError> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(RequestError::Param {
            key: key.to_owned(),
            value: value.to_owned(),
            expected: "true, false, 1 or 0",
        }),
    }
}

/// The filters of an `/events` request: every `filter=` parameter, `#` when
/// there is none.
pub fn filters_from_query(pairs: &[(String, String)]) -> Result<Vec<TopicFilter>, RequestError> {
    let filters: Vec<TopicFilter> = pairs
        .iter()
        .filter(|(k, _)| k == "filter")
        .map(|(_, v)| TopicFilter::new(v).map_err(RequestError::Filter))
        .collect::<Result<_, _>>()?;
    if filters.is_empty() {
        return Ok(vec![TopicFilter::new("#").map_err(RequestError::Filter)?]);
    }
    Ok(filters)
}

/// The `X-` request headers an envelope carries (names lower-cased, values
/// that are UTF-8), at most [`MAX_CARRIED_HEADERS`].
pub fn carried_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .take(MAX_CARRIED_HEADERS)
        .collect()
}

/// The JSON `data:` of one Server-Sent Event.
#[derive(Debug, Serialize)]
pub struct EventData<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Payload, as text when it is UTF-8, else base64.
    pub payload: String,
    /// `utf8` or `base64`.
    pub encoding: &'static str,
    /// MIME type, or null.
    pub content_type: Option<&'a str>,
    /// When the hub received the message, RFC 3339 UTC with milliseconds.
    pub timestamp: String,
}

impl<'a> EventData<'a> {
    /// The event data of `envelope`.
    pub fn of(envelope: &'a Envelope) -> Self {
        let (payload, encoding) = match std::str::from_utf8(&envelope.payload) {
            Ok(s) => (s.to_owned(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&envelope.payload),
                "base64",
            ),
        };
        EventData {
            topic: envelope.topic.as_str(),
            payload,
            encoding,
            content_type: envelope.content_type.as_deref(),
            timestamp: rfc3339_millis(envelope.timestamp),
        }
    }

    /// As one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing strings and an option cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `2024-05-01T12:00:00.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let secs = (ms / 1000) as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Header carrying the topic on webhook requests.
pub const TOPIC_HEADER: &str = "x-polyhub-topic";
/// Header carrying the envelope id on webhook requests.
pub const ID_HEADER: &str = "x-polyhub-id";
/// Set to `percent` when `X-Polyhub-Topic` had to be percent-encoded
/// (a topic with control characters).
pub const TOPIC_ENCODING_HEADER: &str = "x-polyhub-topic-encoding";

/// The headers of the webhook `POST` for `envelope`: `Content-Type`,
/// `X-Polyhub-Topic`, `X-Polyhub-Id` and the envelope's own `X-` headers.
pub fn webhook_headers(envelope: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    let ct = envelope
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(axum::http::header::CONTENT_TYPE, ct);
    match HeaderValue::from_bytes(envelope.topic.as_str().as_bytes()) {
        Ok(v) => {
            h.insert(HeaderName::from_static(TOPIC_HEADER), v);
        }
        Err(_) => {
            let enc: String = envelope
                .topic
                .as_str()
                .bytes()
                .map(|b| {
                    if b.is_ascii_graphic() && b != b'%' {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&enc) {
                h.insert(HeaderName::from_static(TOPIC_HEADER), v);
                h.insert(
                    HeaderName::from_static(TOPIC_ENCODING_HEADER),
                    HeaderValue::from_static("percent"),
                );
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&envelope.id.to_string()) {
        h.insert(HeaderName::from_static(ID_HEADER), v);
    }
    for (k, v) in &envelope.headers {
        let lower = k.to_ascii_lowercase();
        if !lower.starts_with("x-") || lower.starts_with("x-polyhub-") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(name, value);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode_strict("a%2Fb%20c").unwrap(), "a/b c");
        assert_eq!(percent_decode_strict("a+b").unwrap(), "a+b");
        assert_eq!(percent_decode_strict("%C3%A9t%C3%A9").unwrap(), "été");
        assert!(matches!(
            percent_decode_strict("a%zz"),
            Err(RequestError::PercentEncoding(_))
        ));
        assert!(matches!(
            percent_decode_strict("a%2"),
            Err(RequestError::PercentEncoding(_))
        ));
        assert!(matches!(
            percent_decode_strict("%FF%FE"),
            Err(RequestError::NotUtf8(_))
        ));
    }

    #[test]
    fn topics_from_paths_reject_wildcards_and_empty() {
        assert_eq!(
            topic_from_path("sensors/kitchen%2Ftemp").unwrap().as_str(),
            "sensors/kitchen/temp"
        );
        assert!(matches!(
            topic_from_path("a/+/b"),
            Err(RequestError::Topic(TopicError::Wildcard(_)))
        ));
        assert!(matches!(
            topic_from_path("a/%23"),
            Err(RequestError::Topic(TopicError::Wildcard(_)))
        ));
        assert!(matches!(
            topic_from_path(""),
            Err(RequestError::Topic(TopicError::Empty))
        ));
        assert!(matches!(
            topic_from_path("a%00"),
            Err(RequestError::Topic(TopicError::Nul))
        ));
    }

    #[test]
    fn publish_options_come_from_the_query() {
        let q = parse_query(Some("retain=true&qos=1&other=x")).unwrap();
        let o = PublishOptions::from_query(&q).unwrap();
        assert_eq!(o.qos, QoS::AtLeastOnce);
        assert!(o.retain);
        assert_eq!(
            PublishOptions::from_query(&parse_query(None).unwrap()).unwrap(),
            PublishOptions::default()
        );
        let bad = parse_query(Some("qos=7")).unwrap();
        assert!(matches!(
            PublishOptions::from_query(&bad),
            Err(RequestError::Param { .. })
        ));
        let bad = parse_query(Some("retain=yes")).unwrap();
        assert!(PublishOptions::from_query(&bad).is_err());
        assert!(parse_query(Some("filter=%G1")).is_err());
    }

    #[test]
    fn event_filters_are_decoded_and_default_to_everything() {
        let q = parse_query(Some("filter=sensors%2F%2B%2Ftemp&filter=alerts/%23")).unwrap();
        let f = filters_from_query(&q).unwrap();
        assert_eq!(f[0].as_str(), "sensors/+/temp");
        assert_eq!(f[1].as_str(), "alerts/#");
        let f = filters_from_query(&[]).unwrap();
        assert_eq!(f[0].as_str(), "#");
        let q = parse_query(Some("filter=a/%23/b")).unwrap();
        assert!(matches!(
            filters_from_query(&q),
            Err(RequestError::Filter(_))
        ));
        // A literal `+` is a wildcard, not a space.
        let q = parse_query(Some("filter=a/+")).unwrap();
        assert_eq!(filters_from_query(&q).unwrap()[0].as_str(), "a/+");
    }

    #[test]
    fn event_data_is_utf8_or_base64() {
        let mut e =
            Envelope::new(Topic::new("s/t").unwrap(), "21.5").with_content_type("text/plain");
        e.timestamp = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        let json: serde_json::Value = serde_json::from_str(&EventData::of(&e).to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "topic": "s/t", "payload": "21.5", "encoding": "utf8",
                "content_type": "text/plain", "timestamp": "2024-05-01T12:00:00.123Z"
            })
        );
        let b = Envelope::new(Topic::new("b").unwrap(), vec![0u8, 0xff, 0x10]);
        let json: serde_json::Value = serde_json::from_str(&EventData::of(&b).to_json()).unwrap();
        assert_eq!(json["payload"], "AP8Q");
        assert_eq!(json["encoding"], "base64");
        assert_eq!(json["content_type"], serde_json::Value::Null);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn x_headers_are_carried_in_and_out() {
        let mut h = HeaderMap::new();
        h.insert("x-device", HeaderValue::from_static("d1"));
        h.insert("authorization", HeaderValue::from_static("Bearer s"));
        let carried = carried_headers(&h);
        assert_eq!(carried, vec![("x-device".to_owned(), "d1".to_owned())]);

        let mut e =
            Envelope::new(Topic::new("alerts/fire").unwrap(), "x").with_header("x-device", "d1");
        e.headers.push(("not-x".into(), "n".into()));
        let out = webhook_headers(&e);
        assert_eq!(out[TOPIC_HEADER], "alerts/fire");
        assert_eq!(out["content-type"], "application/octet-stream");
        assert_eq!(out["x-device"], "d1");
        assert!(out.get("not-x").is_none());
        assert_eq!(out[ID_HEADER], e.id.to_string().as_str());
    }

    #[test]
    fn topics_with_control_characters_are_percent_encoded_in_webhooks() {
        let e = Envelope::new(Topic::new("a\nb%").unwrap(), "x");
        let out = webhook_headers(&e);
        assert_eq!(out[TOPIC_HEADER], "a%0Ab%25");
        assert_eq!(out[TOPIC_ENCODING_HEADER], "percent");
    }
}
