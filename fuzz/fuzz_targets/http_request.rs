//! An HTTP publish or `/events` request as a peer sends it: the path after
//! `/topics/`, the query, the headers and the body → what `polyhub-http`
//! makes of them (`topic_from_path`, `parse_query`, `PublishOptions`,
//! `filters_from_query`, `carried_headers`) → an envelope → the SSE event
//! JSON and webhook headers it goes out as. Must answer a value or a
//! `RequestError`, never panic; a topic it accepts has no wildcards, and
//! the event JSON parses back to the same topic and payload.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use polyhub_http::convert;
use polyhub_sdk::Envelope;

fuzz_target!(|data: &[u8]| {
    // path \n query \n header lines (name: value) \n\n body
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let path = lines.next().unwrap_or("");
    let query = lines.next();
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.trim().as_bytes()),
            HeaderValue::from_bytes(v.trim().as_bytes()),
        ) {
            headers.append(k, v);
        }
    }

    let Ok(pairs) = convert::parse_query(query) else {
        return;
    };
    // The /events side.
    if let Ok(filters) = convert::filters_from_query(&pairs) {
        assert!(!filters.is_empty());
    }
    let Ok(opts) = convert::PublishOptions::from_query(&pairs) else {
        return;
    };
    let Ok(topic) = convert::topic_from_path(path) else {
        return;
    };
    assert!(
        !topic.as_str().contains(['+', '#']),
        "accepted a wildcard topic {topic}"
    );
    let mut env = Envelope::new(topic, body.to_vec())
        .with_qos(opts.qos)
        .with_retain(opts.retain);
    env.content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    env.headers = convert::carried_headers(&headers);
    assert!(env.headers.len() <= convert::MAX_CARRIED_HEADERS);

    // Out again, as an SSE event and as a webhook.
    let json = convert::EventData::of(&env).to_json();
    let back: serde_json::Value = serde_json::from_str(&json).expect("event data is JSON");
    assert_eq!(back["topic"].as_str(), Some(env.topic.as_str()));
    if back["encoding"] == "utf8" {
        assert_eq!(back["payload"].as_str().map(str::as_bytes), Some(body));
    }
    let _ = convert::webhook_headers(&env);
});
