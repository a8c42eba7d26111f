//! Mosquitto's ACL file, read and applied as Mosquitto 2 does
//! (`src/security_default.c`):
//!
//! - `user NAME` starts the rules of one user (the rest of the line, trimmed,
//!   spaces included); `topic` lines before the first `user` line are the
//!   rules of anonymous clients. Two blocks for one user add up.
//! - `topic [read|write|readwrite|deny] FILTER` (no access word: readwrite;
//!   `topic read` alone is readwrite on the topic `read`, as in Mosquitto).
//! - `pattern [read|write|readwrite|deny] FILTER` applies to every client,
//!   wherever it stands in the file, with `%u` replaced by the user name
//!   and `%c` by the client id. A pattern with `%u` does not apply to
//!   anonymous clients; one without does.
//! - Words are separated by spaces (not tabs); `#` starts a comment only as
//!   the first character of a line.
//!
//! A check: the client's own rules first, `deny` rules before the others;
//! a matching `deny` refuses, a matching rule with the access allows. Then,
//! if there are patterns and the user name or client id holds `+` or `#`,
//! refused; then the patterns, `deny` first, likewise. Nothing matched:
//! refused. Publishing on `$SYS` is refused (bar the bridge-state topics),
//! and nothing but a subscription may use `$share`.

use std::cell::RefCell;
use std::path::Path;

use ahash::AHashMap;
use polyhub_sdk::{Action, Denied, Identity, TopicFilter};

use super::filter::{covers, matches, overlaps};
use super::AuthError;
use crate::trie::TopicTrie;

const READ: u8 = 1;
const WRITE: u8 = 2;
/// Access bits of a `deny` rule.
const DENY: u8 = 0;

/// Most levels Mosquitto accepts in an ACL filter (`TOPIC_HIERARCHY_LIMIT`).
const MAX_LEVELS: usize = 200;

/// One client's (or every client's) literal rules.
#[derive(Debug, Default)]
struct RuleSet {
    /// Access bits by filter, for per-message checks.
    trie: TopicTrie<u8>,
    /// The same rules in a list, for subscription checks.
    rules: Vec<(Box<str>, u8)>,
}

impl RuleSet {
    fn add(&mut self, filter: &TopicFilter, access: u8) {
        self.trie.insert(filter, access);
        self.rules.push((Box::from(filter.as_str()), access));
    }

    /// The verdict of these rules on a topic: `Some(false)` a deny matched,
    /// `Some(true)` a rule with `bit` matched, `None` neither.
    fn check_topic(&self, topic: &str, bit: u8) -> Option<bool> {
        let (mut denied, mut granted) = (false, false);
        self.trie.for_each_match_str(topic, |access| {
            if *access == DENY {
                denied = true;
            } else if access & bit != 0 {
                granted = true;
            }
        });
        if denied {
            Some(false)
        } else if granted {
            Some(true)
        } else {
            None
        }
    }

    /// The verdict on a subscription: refused when one deny holds the whole
    /// filter, allowed when a read rule shares a topic with it.
    fn check_filter(&self, filter: &str) -> Option<bool> {
        if self
            .rules
            .iter()
            .any(|(f, a)| *a == DENY && covers(f, filter))
        {
            Some(false)
        } else if self
            .rules
            .iter()
            .any(|(f, a)| a & READ != 0 && overlaps(f, filter))
        {
            Some(true)
        } else {
            None
        }
    }
}

/// A `pattern` line with `%u` or `%c`.
#[derive(Debug)]
struct Template {
    text: Box<str>,
    access: u8,
    uses_user: bool,
}

thread_local! {
    /// Where a template is expanded for one check (no allocation per check).
    static EXPANDED: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Template {
    /// Runs `f` on the pattern with `%c` and `%u` replaced, left to right as
    /// Mosquitto does; `None` when it does not apply (a `%u` pattern for an
    /// anonymous client).
    fn with_expanded<R>(
        &self,
        user: Option<&str>,
        client_id: &str,
        f: impl FnOnce(&str) -> R,
    ) -> Option<R> {
        if self.uses_user && user.is_none() {
            return None;
        }
        EXPANDED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            let mut rest = &*self.text;
            while let Some(i) = rest.find('%') {
                buf.push_str(&rest[..i]);
                match (rest[i + 1..].chars().next(), user) {
                    (Some('c'), _) => {
                        buf.push_str(client_id);
                        rest = &rest[i + 2..];
                    }
                    (Some('u'), Some(u)) => {
                        buf.push_str(u);
                        rest = &rest[i + 2..];
                    }
                    _ => {
                        buf.push('%');
                        rest = &rest[i + 1..];
                    }
                }
            }
            buf.push_str(rest);
            Some(f(&buf))
        })
    }
}

/// The `pattern` lines.
#[derive(Debug, Default)]
struct Patterns {
    /// Patterns without `%u` or `%c` (the same for every client).
    fixed: RuleSet,
    /// Patterns with `%u` or `%c`, deny first.
    templates: Vec<Template>,
}

impl Patterns {
    fn is_empty(&self) -> bool {
        self.fixed.rules.is_empty() && self.templates.is_empty()
    }

    fn check(
        &self,
        user: Option<&str>,
        client_id: &str,
        topic: &str,
        bit: u8,
        subscribe: bool,
    ) -> Result<(), Denied> {
        let fixed = if subscribe {
            self.fixed.check_filter(topic)
        } else {
            self.fixed.check_topic(topic, bit)
        };
        let hit = |t: &Template, deny: bool| {
            t.with_expanded(user, client_id, |f| {
                if !subscribe {
                    matches(f, topic)
                } else if deny {
                    covers(f, topic)
                } else {
                    overlaps(f, topic)
                }
            })
            .unwrap_or(false)
        };
        let denies = self.templates.iter().take_while(|t| t.access == DENY);
        if fixed == Some(false) || denies.clone().any(|t| hit(t, true)) {
            return Err(Denied::DenyRule);
        }
        let grants = self.templates.iter().skip(denies.count());
        if fixed == Some(true)
            || grants
                .filter(|t| t.access & bit != 0)
                .any(|t| hit(t, false))
        {
            return Ok(());
        }
        Err(Denied::NoRule)
    }
}

/// A parsed ACL file.
#[derive(Debug, Default)]
pub struct Acl {
    users: AHashMap<Box<str>, RuleSet>,
    anonymous: Option<RuleSet>,
    patterns: Patterns,
}

/// Whether Mosquitto's `mosquitto_sub_topic_check` accepts `filter`.
fn check_filter(filter: &str) -> Result<TopicFilter, String> {
    let f = TopicFilter::new(filter).map_err(|e| format!("invalid topic filter: {e}"))?;
    if filter.split('/').count() > MAX_LEVELS + 1 {
        return Err(format!(
            "invalid topic filter: more than {MAX_LEVELS} `/` (Mosquitto's limit)"
        ));
    }
    Ok(f)
}

impl Acl {
    /// Parses an ACL file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Acl, AuthError> {
        let mut acl = Acl::default();
        let mut user: Option<Box<str>> = None;
        let mut templates: Vec<Template> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| AuthError::Line {
                file: file.to_owned(),
                line: i + 1,
                message,
            };
            let line = raw.trim_end();
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim_start_matches(' ');
            if line.is_empty() {
                continue;
            }
            let (word, rest) = match line.split_once(' ') {
                Some((w, r)) => (w, Some(r)),
                None => (line, None),
            };
            match word {
                "topic" | "pattern" => {
                    let rest = rest.map(|r| r.trim_start_matches(' ')).unwrap_or("");
                    if rest.is_empty() {
                        return Err(err(format!(
                            "`{word}` without a topic; expected `{word} [read|write|readwrite|deny] FILTER`"
                        )));
                    }
                    let (access_word, filter) = match rest.split_once(' ') {
                        Some((a, f)) => (Some(a), f.trim()),
                        // One word: it is the filter, with readwrite access.
                        None => (None, rest),
                    };
                    let access = match access_word {
                        None => READ | WRITE,
                        Some("read") => READ,
                        Some("write") => WRITE,
                        Some("readwrite") => READ | WRITE,
                        Some("deny") => DENY,
                        Some(other) => {
                            return Err(err(format!(
                                "unknown access `{other}`; expected read, write, readwrite or deny"
                            )))
                        }
                    };
                    let parsed = check_filter(filter).map_err(|m| err(format!("`{filter}`: {m}")))?;
                    if word == "pattern" {
                        if filter.contains("%u") || filter.contains("%c") {
                            templates.push(Template {
                                text: Box::from(filter),
                                access,
                                uses_user: filter.contains("%u"),
                            });
                        } else {
                            acl.patterns.fixed.add(&parsed, access);
                        }
                    } else {
                        let set = match &user {
                            Some(u) => acl.users.entry(u.clone()).or_default(),
                            None => acl.anonymous.get_or_insert_with(RuleSet::default),
                        };
                        set.add(&parsed, access);
                    }
                }
                "user" => {
                    let name = rest.map(str::trim).unwrap_or("");
                    if name.is_empty() {
                        return Err(err("`user` without a user name".into()));
                    }
                    user = Some(Box::from(name));
                }
                w if w.starts_with('#') => {
                    return Err(err(
                        "a comment must start at the beginning of the line (Mosquitto refuses it otherwise)"
                            .into(),
                    ))
                }
                w if w.contains('\t') => {
                    return Err(err(format!(
                        "`{w}`: separate words with spaces, not tabs (Mosquitto refuses tabs)"
                    )))
                }
                w => {
                    return Err(err(format!(
                        "unknown keyword `{w}`; expected `user NAME`, `topic [ACCESS] FILTER` or `pattern [ACCESS] FILTER`"
                    )))
                }
            }
        }
        // Deny patterns first, then the others in file order.
        templates.sort_by_key(|t| t.access != DENY);
        acl.patterns.templates = templates;
        Ok(acl)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            file: file.clone(),
            what: "ACL file",
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Number of users with rules of their own.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Whether `identity` as `client_id` may do `action` on `topic` (a
    /// filter for a subscription; `$share/GROUP/` is taken off it first).
    pub fn check(
        &self,
        identity: &Identity,
        client_id: &str,
        topic: &str,
        action: Action,
    ) -> Result<(), Denied> {
        let (topic, bit, subscribe) = match action {
            Action::Read | Action::Write => {
                if topic.is_empty() || topic.contains(['+', '#']) {
                    return Err(Denied::NoRule);
                }
                (
                    topic,
                    if action == Action::Read { READ } else { WRITE },
                    false,
                )
            }
            Action::Subscribe => (unshare(topic).ok_or(Denied::NoRule)?, READ, true),
        };
        let user = identity.username();
        let own = match user {
            Some(u) => self.users.get(u),
            None => self.anonymous.as_ref(),
        };
        if let Some(own) = own {
            let verdict = if subscribe {
                own.check_filter(topic)
            } else {
                own.check_topic(topic, bit)
            };
            match verdict {
                Some(true) => return Ok(()),
                Some(false) => return Err(Denied::DenyRule),
                None => {}
            }
        }
        if self.patterns.is_empty() {
            return Err(Denied::NoRule);
        }
        let unsafe_name = |s: &str| s.contains(['+', '#']);
        if user.is_some_and(unsafe_name) || unsafe_name(client_id) {
            return Err(Denied::UnsafeName);
        }
        self.patterns.check(user, client_id, topic, bit, subscribe)
    }
}

/// A subscription filter without its `$share/GROUP/` prefix; `None` when
/// the prefix is malformed.
pub fn unshare(filter: &str) -> Option<&str> {
    match filter.strip_prefix("$share/") {
        None => (!filter.is_empty()).then_some(filter),
        Some(rest) => {
            let (group, inner) = rest.split_once('/')?;
            (!group.is_empty() && !group.contains(['+', '#']) && !inner.is_empty()).then_some(inner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = "\
pattern read sensor/+/data
pattern write sensor/%u/+/data
user user1
topic readwrite sensor/+/data
user user2
topic write sensor/temperature/data
";

    fn check(acl: &Acl, user: Option<&str>, topic: &str, action: Action) -> bool {
        let id = user.map_or_else(Identity::anonymous, Identity::user);
        acl.check(&id, "client", topic, action).is_ok()
    }

    #[test]
    fn the_lab_rules_give_the_lab_answers() {
        let acl = Acl::parse(LAB, "acl").unwrap();
        let w = Action::Write;
        let s = Action::Subscribe;
        for u in ["user1", "user2", "user3"] {
            assert!(check(&acl, Some(u), "sensor/temperature/data", s), "{u}");
            assert!(check(&acl, Some(u), "sensor/fanspeed/data", Action::Read));
            assert!(check(
                &acl,
                Some(u),
                &format!("sensor/{u}/temperature/data"),
                w
            ));
        }
        assert!(check(&acl, Some("user1"), "sensor/fanspeed/data", w));
        assert!(!check(&acl, Some("user2"), "sensor/fanspeed/data", w));
        assert!(!check(&acl, Some("user3"), "sensor/fanspeed/data", w));
        assert!(check(&acl, Some("user2"), "sensor/temperature/data", w));
        assert!(!check(
            &acl,
            Some("user2"),
            "sensor/user1/temperature/data",
            w
        ));
        // A pattern without %u applies to anonymous clients, one with does not.
        assert!(check(&acl, None, "sensor/fanspeed/data", Action::Read));
        assert!(!check(&acl, None, "sensor/%u/temperature/data", w));
    }

    #[test]
    fn deny_wins_over_any_grant_of_the_same_client() {
        let acl = Acl::parse(
            "user u\ntopic readwrite a/#\ntopic deny a/secret\npattern read a/secret\n",
            "acl",
        )
        .unwrap();
        assert!(check(&acl, Some("u"), "a/open", Action::Read));
        assert!(!check(&acl, Some("u"), "a/secret", Action::Read));
        assert!(!check(&acl, Some("u"), "a/secret", Action::Write));
        assert!(check(&acl, Some("u"), "a/#", Action::Subscribe));
        assert!(!check(&acl, Some("u"), "a/secret", Action::Subscribe));
    }

    #[test]
    fn own_grants_come_before_pattern_denies() {
        let acl = Acl::parse("pattern deny a/%u\nuser u\ntopic read a/u\n", "acl").unwrap();
        assert!(check(&acl, Some("u"), "a/u", Action::Read));
        assert!(!check(&acl, Some("v"), "a/v", Action::Read));
    }

    #[test]
    fn client_ids_and_user_names_fill_patterns() {
        let acl = Acl::parse("pattern readwrite dev/%c/%u/#\n", "acl").unwrap();
        let id = Identity::user("bob");
        assert!(acl.check(&id, "c1", "dev/c1/bob/x", Action::Write).is_ok());
        assert!(acl.check(&id, "c1", "dev/c2/bob/x", Action::Write).is_err());
        // A user name with `/` spans levels, as in Mosquitto.
        let slash = Identity::user("a/b");
        assert!(acl.check(&slash, "c", "dev/c/a/b/x", Action::Write).is_ok());
        // `+` or `#` in a name would widen the pattern: refused.
        let plus = Identity::user("+");
        assert_eq!(
            acl.check(&plus, "c", "dev/c/x/y", Action::Write),
            Err(Denied::UnsafeName)
        );
        assert_eq!(
            acl.check(&id, "#", "dev/x/bob/y", Action::Write),
            Err(Denied::UnsafeName)
        );
    }

    #[test]
    fn rules_before_the_first_user_are_for_anonymous_clients() {
        let acl = Acl::parse("topic read public/#\nuser u\ntopic read private\n", "acl").unwrap();
        assert!(check(&acl, None, "public/x", Action::Read));
        assert!(!check(&acl, None, "private", Action::Read));
        assert!(!check(&acl, Some("u"), "public/x", Action::Read));
        assert!(check(&acl, Some("u"), "private", Action::Read));
    }

    #[test]
    fn mosquitto_quirks_are_kept() {
        // One word after `topic` is the filter, with readwrite access.
        let acl = Acl::parse("user u\ntopic read\n  topic   write   a b  \n", "acl").unwrap();
        assert!(check(&acl, Some("u"), "read", Action::Write));
        assert!(check(&acl, Some("u"), "a b", Action::Write));
        // Two blocks of one user add up; user names keep inner spaces.
        let acl = Acl::parse(
            "user u\ntopic x\nuser v w\ntopic y\nuser u\ntopic z\n",
            "acl",
        )
        .unwrap();
        assert!(check(&acl, Some("u"), "z", Action::Read));
        assert!(check(&acl, Some("u"), "x", Action::Read));
        assert!(check(&acl, Some("v w"), "y", Action::Read));
        // An empty file refuses everything.
        let acl = Acl::parse("", "acl").unwrap();
        assert!(!check(&acl, Some("u"), "x", Action::Read));
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let acl = Acl::parse("user u\ntopic read #\ntopic read $SYS/#\n", "acl").unwrap();
        assert!(check(&acl, Some("u"), "a", Action::Read));
        assert!(check(&acl, Some("u"), "$SYS/x", Action::Read));
        let acl = Acl::parse("user u\ntopic read #\n", "acl").unwrap();
        assert!(!check(&acl, Some("u"), "$SYS/x", Action::Read));
    }

    #[test]
    fn shared_subscriptions_are_checked_on_their_filter() {
        let acl = Acl::parse("user u\ntopic read a/#\n", "acl").unwrap();
        assert!(check(&acl, Some("u"), "$share/g/a/b", Action::Subscribe));
        assert!(!check(&acl, Some("u"), "$share/g/b", Action::Subscribe));
        assert!(!check(&acl, Some("u"), "$share/g", Action::Subscribe));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line, needle) in [
            ("user\n", 1, "without a user name"),
            ("topic\n", 1, "without a topic"),
            ("\n\ntopic reed a/b\n", 3, "unknown access `reed`"),
            ("topic read a/b+\n", 1, "wildcard must occupy a whole level"),
            ("pattern read #/a\n", 1, "only valid as the last level"),
            ("usr u\n", 1, "unknown keyword `usr`"),
            ("topic\tread\ta\n", 1, "not tabs"),
            ("  # note\n", 1, "beginning of the line"),
        ] {
            let e = Acl::parse(text, "acl").unwrap_err().to_string();
            assert!(e.starts_with(&format!("acl:{line}: ")), "{text:?}: {e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
