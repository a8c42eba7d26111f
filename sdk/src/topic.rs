//! MQTT-style topic names and topic filters, validated by the rules of MQTT
//! 3.1.1 §4.7 and MQTT 5 §4.7, and the matching of one against the other.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Longest topic or filter MQTT can carry (a 16-bit length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a string is not a valid topic name or topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Topics and filters must hold at least one character.
    #[error("topic is empty")]
    Empty,
    /// Longer than the 65535 bytes MQTT can carry.
    #[error("topic is {0} bytes long, the limit is 65535")]
    TooLong(usize),
    /// U+0000 is forbidden in MQTT strings.
    #[error("topic contains a NUL character")]
    Nul,
    /// A topic name (as opposed to a filter) contains `+` or `#`.
    #[error(
        "topic name `{0}` contains a wildcard (`+` or `#`); wildcards are only valid in filters"
    )]
    Wildcard(String),
    /// A wildcard shares a level with other characters, e.g. `a/b+`.
    #[error("filter `{0}`: a wildcard must occupy a whole level (`a/+/b`, not `a/b+`)")]
    PartialWildcard(String),
    /// `#` appears somewhere other than the last level.
    #[error("filter `{0}`: `#` is only valid as the last level")]
    HashNotLast(String),
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A topic name: UTF-8, `/`-separated levels (empty levels allowed), no wildcards.
///
/// Cheap to clone (reference counted).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `s` as a topic name.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        Self::validate(s)?;
        Ok(Topic(Arc::from(s)))
    }

    /// Checks `s` against the topic-name rules without allocating.
    pub fn validate(s: &str) -> Result<(), TopicError> {
        check_common(s)?;
        if s.contains(['+', '#']) {
            return Err(TopicError::Wildcard(s.to_owned()));
        }
        Ok(())
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated levels of the topic.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether the topic starts with `$` (such as `$SYS/...`), which a
    /// leading wildcard does not match.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Topic::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = TopicError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::validate(&s)?;
        Ok(Topic(Arc::from(s)))
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::new(s)
    }
}

/// Topics hash and compare as their text, so maps keyed by [`Topic`] can be
/// searched with a `&str`.
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Topic::try_from(s).map_err(serde::de::Error::custom)
    }
}

/// A topic filter: a topic pattern where `+` matches exactly one level and
/// `#` (only as the last level) matches any number of remaining levels,
/// including none (`a/#` matches `a`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Arc<str>);

impl TopicFilter {
    /// Validates `s` as a topic filter.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        Self::validate(s)?;
        Ok(TopicFilter(Arc::from(s)))
    }

    /// Checks `s` against the topic-filter rules without allocating.
    pub fn validate(s: &str) -> Result<(), TopicError> {
        check_common(s)?;
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            let last = levels.peek().is_none();
            match level {
                "+" => {}
                "#" if last => {}
                "#" => return Err(TopicError::HashNotLast(s.to_owned())),
                l if l.contains(['+', '#']) => {
                    return Err(TopicError::PartialWildcard(s.to_owned()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The filter as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated levels of the filter.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether the filter holds a `+` or `#` level.
    pub fn has_wildcards(&self) -> bool {
        self.levels().any(|l| l == "+" || l == "#")
    }

    /// The filter as a topic, when it has no wildcards.
    pub fn as_topic(&self) -> Option<Topic> {
        (!self.has_wildcards()).then(|| Topic(self.0.clone()))
    }

    /// Whether `topic` matches this filter (MQTT semantics, including the
    /// rule that `$`-prefixed topics are not matched by a leading wildcard).
    pub fn matches(&self, topic: &Topic) -> bool {
        self.captures(topic).is_some()
    }

    /// Matches `topic` and returns the levels the wildcards stood for: one
    /// entry per `+`, and for a `#` the rest of the topic (possibly empty).
    pub fn captures<'t>(&self, topic: &'t Topic) -> Option<Vec<&'t str>> {
        let t = topic.as_str();
        let mut caps = Vec::new();
        let mut f_levels = self.levels();
        let mut rest = Some(t);
        let mut first = true;
        loop {
            let f = f_levels.next();
            match (f, rest) {
                (None, None) => return Some(caps),
                (None, Some(_)) => return None,
                (Some("#"), r) => {
                    if first && topic.is_system() {
                        return None;
                    }
                    caps.push(r.unwrap_or(""));
                    return Some(caps);
                }
                (Some(_), None) => return None,
                (Some(f), Some(r)) => {
                    let (level, tail) = match r.find('/') {
                        Some(i) => (&r[..i], Some(&r[i + 1..])),
                        None => (r, None),
                    };
                    if f == "+" {
                        if first && topic.is_system() {
                            return None;
                        }
                        caps.push(level);
                    } else if f != level {
                        return None;
                    }
                    rest = tail;
                }
            }
            first = false;
        }
    }
}

impl From<Topic> for TopicFilter {
    fn from(t: Topic) -> Self {
        TopicFilter(t.0)
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        TopicFilter::new(s)
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::validate(&s)?;
        Ok(TopicFilter(Arc::from(s)))
    }
}

impl std::str::FromStr for TopicFilter {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicFilter::new(s)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", &*self.0)
    }
}

impl serde::Serialize for TopicFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TopicFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TopicFilter::try_from(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }
    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn topic_names_reject_empty_nul_and_wildcards() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new("a\0b"), Err(TopicError::Nul));
        assert!(matches!(Topic::new("a/+"), Err(TopicError::Wildcard(_))));
        assert!(matches!(Topic::new("a/#"), Err(TopicError::Wildcard(_))));
        assert!(matches!(Topic::new("a+b"), Err(TopicError::Wildcard(_))));
        assert!(matches!(
            Topic::new(&"x".repeat(65_536)),
            Err(TopicError::TooLong(65_536))
        ));
    }

    #[test]
    fn topic_names_allow_empty_levels_spaces_and_unicode() {
        for ok in [
            "/",
            "//",
            "/a",
            "a/",
            "a//b",
            "a b/c",
            "température/°C",
            "$SYS/x",
        ] {
            assert!(Topic::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn filters_follow_the_mqtt_wildcard_rules() {
        // Valid examples from MQTT 3.1.1 §4.7.1.
        for ok in [
            "#",
            "sport/#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/+",
            "+/+",
            "a//+",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        // Invalid ones from the same section.
        assert!(matches!(
            TopicFilter::new("sport/tennis#"),
            Err(TopicError::PartialWildcard(_))
        ));
        assert!(matches!(
            TopicFilter::new("sport/tennis/#/ranking"),
            Err(TopicError::HashNotLast(_))
        ));
        assert!(matches!(
            TopicFilter::new("sport+"),
            Err(TopicError::PartialWildcard(_))
        ));
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::new("a/\0"), Err(TopicError::Nul));
    }

    #[test]
    fn multi_level_wildcard_matches_parent_and_children() {
        // MQTT 3.1.1 §4.7.1.2.
        let sub = f("sport/tennis/player1/#");
        assert!(sub.matches(&t("sport/tennis/player1")));
        assert!(sub.matches(&t("sport/tennis/player1/ranking")));
        assert!(sub.matches(&t("sport/tennis/player1/score/wimbledon")));
        assert!(f("sport/#").matches(&t("sport")));
        assert!(!sub.matches(&t("sport/tennis/player2")));
    }

    #[test]
    fn single_level_wildcard_matches_exactly_one_level() {
        // MQTT 3.1.1 §4.7.1.3.
        let sub = f("sport/tennis/+");
        assert!(sub.matches(&t("sport/tennis/player1")));
        assert!(sub.matches(&t("sport/tennis/player2")));
        assert!(!sub.matches(&t("sport/tennis/player1/ranking")));
        assert!(!f("sport/+").matches(&t("sport")));
        assert!(f("sport/+").matches(&t("sport/")));
        assert!(f("+/+").matches(&t("/finance")));
        assert!(f("/+").matches(&t("/finance")));
        assert!(!f("+").matches(&t("/finance")));
    }

    #[test]
    fn empty_levels_are_levels() {
        assert!(f("a//b").matches(&t("a//b")));
        assert!(f("a/+/b").matches(&t("a//b")));
        assert!(!f("a/b").matches(&t("a//b")));
        assert!(f("#").matches(&t("/")));
        assert!(f("+/+").matches(&t("/")));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        // MQTT 3.1.1 §4.7.2.
        assert!(!f("#").matches(&t("$SYS/broker/uptime")));
        assert!(!f("+/monitor/Clients").matches(&t("$SYS/monitor/Clients")));
        assert!(f("$SYS/#").matches(&t("$SYS/monitor/Clients")));
        assert!(f("$SYS/monitor/+").matches(&t("$SYS/monitor/Clients")));
        assert!(f("a/#").matches(&t("a/$b")));
    }

    #[test]
    fn captures_return_the_wildcard_levels() {
        let topic = t("sensors/kitchen/temp");
        assert_eq!(f("sensors/+/temp").captures(&topic), Some(vec!["kitchen"]));
        assert_eq!(f("sensors/#").captures(&topic), Some(vec!["kitchen/temp"]));
        assert_eq!(
            f("+/+/#").captures(&topic),
            Some(vec!["sensors", "kitchen", "temp"])
        );
        assert_eq!(f("sensors/kitchen/temp/#").captures(&topic), Some(vec![""]));
        assert_eq!(f("x/#").captures(&topic), None);
    }
}
