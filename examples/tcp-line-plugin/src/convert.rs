//! Lines ↔ envelopes: `topic payload\n`, the first space separating the
//! topic from the payload. Pure functions, tested without a network.

use polyhub_sdk::{Bytes, Envelope, Topic};

/// Why a line is not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// An empty line (or only `\r`): ignored, not an error worth counting.
    Empty,
    /// The topic is not a valid topic name (wildcards, empty levels, not UTF-8).
    BadTopic(String),
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::Empty => f.write_str("empty line"),
            LineError::BadTopic(why) => write!(f, "bad topic: {why}"),
        }
    }
}

/// Splits one line (without its `\n`; a trailing `\r` is dropped) into a
/// topic and a payload. `topic` alone is an empty payload.
pub fn parse_line(line: &[u8]) -> Result<(Topic, Bytes), LineError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(LineError::Empty);
    }
    let (topic, payload) = match line.iter().position(|b| *b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    let topic = std::str::from_utf8(topic).map_err(|_| LineError::BadTopic("not UTF-8".into()))?;
    let topic = Topic::new(topic).map_err(|e| LineError::BadTopic(e.to_string()))?;
    Ok((topic, Bytes::copy_from_slice(payload)))
}

/// The line a device receives for `envelope`, `None` when its payload holds
/// a line break (it cannot be framed as one line).
pub fn format_line(envelope: &Envelope) -> Option<Bytes> {
    if envelope.payload.iter().any(|b| *b == b'\n' || *b == b'\r') {
        return None;
    }
    let topic = envelope.topic.as_str().as_bytes();
    let mut line = Vec::with_capacity(topic.len() + envelope.payload.len() + 2);
    line.extend_from_slice(topic);
    line.push(b' ');
    line.extend_from_slice(&envelope.payload);
    line.push(b'\n');
    Some(Bytes::from(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_splits_at_the_first_space() {
        let (t, p) = parse_line(b"sensors/t1 21.5 C").unwrap();
        assert_eq!(t.as_str(), "sensors/t1");
        assert_eq!(&p[..], b"21.5 C");
    }

    #[test]
    fn crlf_and_bare_topics_are_accepted() {
        let (t, p) = parse_line(b"door/open\r").unwrap();
        assert_eq!(t.as_str(), "door/open");
        assert!(p.is_empty());
        let (_, p) = parse_line(b"a \xff\x00").unwrap();
        assert_eq!(&p[..], b"\xff\x00");
    }

    #[test]
    fn empty_lines_and_bad_topics_are_refused() {
        assert_eq!(parse_line(b"").unwrap_err(), LineError::Empty);
        assert_eq!(parse_line(b"  \r").unwrap_err(), LineError::Empty);
        assert!(matches!(
            parse_line(b"a/+/b 1"),
            Err(LineError::BadTopic(_))
        ));
        assert!(matches!(parse_line(b"\xff 1"), Err(LineError::BadTopic(_))));
        assert!(matches!(parse_line(b" 1"), Err(LineError::BadTopic(_))));
    }

    #[test]
    fn envelopes_become_lines_unless_they_hold_a_line_break() {
        let e = Envelope::new(Topic::new("actuators/led").unwrap(), "on");
        assert_eq!(&format_line(&e).unwrap()[..], b"actuators/led on\n");
        let e = Envelope::new(Topic::new("a").unwrap(), "two\nlines");
        assert!(format_line(&e).is_none());
    }

    #[test]
    fn a_formatted_line_parses_back() {
        let e = Envelope::new(Topic::new("x/y").unwrap(), "v 1");
        let line = format_line(&e).unwrap();
        let (t, p) = parse_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(t, e.topic);
        assert_eq!(p, e.payload);
    }
}
