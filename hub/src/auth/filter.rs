//! Topic-filter arithmetic on plain strings, as the ACL needs it: whether a
//! rule matches a topic (Mosquitto's `mosquitto_topic_matches_sub`), and for
//! subscriptions whether two filters share a topic or one holds the other.
//!
//! A filter whose first character is `$` and a topic whose first character
//! is not (or the other way round) never match, which is also why `#` and
//! `+/…` do not match `$SYS/…`.

/// Whether the filter `sub` matches the topic `topic`.
pub fn matches(sub: &str, topic: &str) -> bool {
    if sub.starts_with('$') != topic.starts_with('$') {
        return false;
    }
    let mut s = sub.split('/');
    let mut t = topic.split('/');
    loop {
        match (s.next(), t.next()) {
            // `a/#` matches `a` too.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(sl), Some(tl)) if sl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic matches both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    if a.starts_with('$') != b.starts_with('$') {
        return false;
    }
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether every topic `inner` matches is matched by `outer` too.
pub fn covers(outer: &str, inner: &str) -> bool {
    if outer.starts_with('$') != inner.starts_with('$') {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(il)) if il != "#" => {}
            (Some(ol), Some(il)) if ol == il && il != "+" && il != "#" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyhub_sdk::{Topic, TopicFilter};

    const FILTERS: &[&str] = &[
        "#", "+", "a", "a/#", "a/+", "a/b", "a/+/c", "+/+", "/+", "+/b/#", "a//c", "a/+/#",
        "$SYS/#", "$SYS/+", "+/x",
    ];
    const TOPICS: &[&str] = &[
        "a", "a/b", "a/b/c", "a//c", "/", "/a", "a/", "b", "$SYS", "$SYS/x", "$SYS/a/b", "x/b",
        "x/b/y", "x/x", "a/x/c", "a/b/c/d",
    ];

    #[test]
    fn matching_agrees_with_the_sdk_filters() {
        for f in FILTERS {
            for t in TOPICS {
                let expected = TopicFilter::new(f)
                    .unwrap()
                    .matches(&Topic::new(t).unwrap());
                assert_eq!(matches(f, t), expected, "{f} vs {t}");
            }
        }
    }

    #[test]
    fn overlap_and_cover_agree_with_matching_on_sample_topics() {
        // Sample topics: every listed topic, plus the filters with their
        // wildcards filled in, so that each overlap has a witness.
        let mut topics: Vec<String> = TOPICS.iter().map(|t| t.to_string()).collect();
        for f in FILTERS {
            for fill in ["x", "b", "c", ""] {
                let t = f.replace('+', fill).replace("/#", "").replace('#', "x");
                if !t.is_empty() && !t.contains(['+', '#']) {
                    topics.push(t.clone());
                    topics.push(format!("{t}/x"));
                }
            }
        }
        for a in FILTERS {
            for b in FILTERS {
                let witness = topics.iter().find(|t| matches(a, t) && matches(b, t));
                if let Some(t) = witness {
                    assert!(overlaps(a, b), "{a} and {b} share {t}");
                } else {
                    assert!(!overlaps(a, b), "{a} and {b} share no sample topic");
                }
                if covers(a, b) {
                    for t in topics.iter().filter(|t| matches(b, t)) {
                        assert!(matches(a, t), "{a} covers {b} but not {t}");
                    }
                }
            }
        }
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/+/#", "a/b"));
        assert!(covers("#", "a/#"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("a/+", "a/+"));
        assert!(!overlaps("#", "$SYS/#"));
        assert!(overlaps("a/#", "a"));
    }
}
