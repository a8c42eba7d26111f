//! A topic trie: subscriptions stored by filter level, so matching a topic
//! walks at most the levels of the topic (plus `+` branches) instead of
//! scanning every subscription.

use ahash::AHashMap;
use polyhub_sdk::{Topic, TopicFilter};

/// One level of the trie.
#[derive(Debug)]
struct Node<T> {
    /// Children by literal level.
    children: Children<T>,
    /// The `+` child.
    plus: Option<Box<Node<T>>>,
    /// Entries whose filter ends at this node.
    exact: Vec<T>,
    /// Entries whose filter is this node's path followed by `/#`.
    hash: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            plus: None,
            exact: Vec::new(),
            hash: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.hash.is_empty()
    }
}

/// Maps topic filters to entries and finds the entries matching a topic.
#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `entry` under `filter`.
    pub fn insert(&mut self, filter: &TopicFilter, entry: T) {
        let mut node = &mut self.root;
        for level in filter.levels() {
            match level {
                "#" => {
                    node.hash.push(entry);
                    self.len += 1;
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                l => node = node.children.get_or_insert(l),
            }
        }
        node.exact.push(entry);
        self.len += 1;
    }

    /// Removes the entries under `filter` for which `pred` is true; returns
    /// how many were removed. Prunes emptied branches.
    pub fn remove(&mut self, filter: &TopicFilter, mut pred: impl FnMut(&T) -> bool) -> usize {
        let levels: Vec<&str> = filter.levels().collect();
        let removed = Self::remove_at(&mut self.root, &levels, &mut pred);
        self.len -= removed;
        removed
    }

    fn remove_at(node: &mut Node<T>, levels: &[&str], pred: &mut impl FnMut(&T) -> bool) -> usize {
        let Some((first, rest)) = levels.split_first() else {
            let before = node.exact.len();
            node.exact.retain(|e| !pred(e));
            return before - node.exact.len();
        };
        match *first {
            "#" => {
                let before = node.hash.len();
                node.hash.retain(|e| !pred(e));
                before - node.hash.len()
            }
            "+" => {
                let Some(child) = node.plus.as_deref_mut() else {
                    return 0;
                };
                let n = Self::remove_at(child, rest, pred);
                if child.is_empty() {
                    node.plus = None;
                }
                n
            }
            l => {
                let Some(child) = node.children.get_mut(l) else {
                    return 0;
                };
                let n = Self::remove_at(child, rest, pred);
                if child.is_empty() {
                    node.children.remove(l);
                }
                n
            }
        }
    }

    /// Calls `f` with every entry whose filter matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &Topic, f: impl FnMut(&'a T)) {
        self.for_each_match_str(topic.as_str(), f)
    }

    /// Calls `f` with every entry whose filter matches `topic`, given as a
    /// string the caller has checked is a topic name (no `+` or `#`).
    pub fn for_each_match_str<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a T)) {
        // Most topics are short; avoid allocating for the level list.
        let mut levels: smallvec_lite::Levels<'_> = smallvec_lite::Levels::new();
        for l in topic.split('/') {
            levels.push(l);
        }
        let system = topic.starts_with('$');
        Self::walk(&self.root, levels.as_slice(), true, system, &mut f);
    }

    fn walk<'a>(
        node: &'a Node<T>,
        levels: &[&str],
        first: bool,
        system: bool,
        f: &mut impl FnMut(&'a T),
    ) {
        let Some((level, rest)) = levels.split_first() else {
            node.exact.iter().for_each(&mut *f);
            // `a/#` also matches `a`.
            node.hash.iter().for_each(&mut *f);
            return;
        };
        let wildcards_allowed = !(first && system);
        if wildcards_allowed {
            node.hash.iter().for_each(&mut *f);
            if let Some(plus) = &node.plus {
                Self::walk(plus, rest, false, system, f);
            }
        }
        if let Some(child) = node.children.get(level) {
            Self::walk(child, rest, false, system, f);
        }
    }
}

/// A node's literal children. Most nodes have a handful (a level like
/// `site/{id}` is the exception), and comparing a few short strings beats
/// hashing: a vector up to [`Children::SMALL`] entries, a hash map beyond.
#[derive(Debug)]
enum Children<T> {
    Few(Vec<(Box<str>, Node<T>)>),
    Many(AHashMap<Box<str>, Node<T>>),
}

impl<T> Default for Children<T> {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl<T> Children<T> {
    const SMALL: usize = 8;

    fn is_empty(&self) -> bool {
        match self {
            Children::Few(v) => v.is_empty(),
            Children::Many(m) => m.is_empty(),
        }
    }

    fn get(&self, level: &str) -> Option<&Node<T>> {
        match self {
            Children::Few(v) => v.iter().find(|(k, _)| &**k == level).map(|(_, n)| n),
            Children::Many(m) => m.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        match self {
            Children::Few(v) => v.iter_mut().find(|(k, _)| &**k == level).map(|(_, n)| n),
            Children::Many(m) => m.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node<T> {
        if let Children::Few(v) = self {
            if v.len() >= Self::SMALL && !v.iter().any(|(k, _)| &**k == level) {
                *self = Children::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            Children::Few(v) => {
                let i = match v.iter().position(|(k, _)| &**k == level) {
                    Some(i) => i,
                    None => {
                        v.push((Box::from(level), Node::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            Children::Many(m) => m.entry(Box::from(level)).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Children::Few(v) => v.retain(|(k, _)| &**k != level),
            Children::Many(m) => {
                m.remove(level);
            }
        }
    }
}

/// A tiny inline vector for topic levels: no heap for topics of up to 16
/// levels, a `Vec` beyond.
mod smallvec_lite {
    pub struct Levels<'a> {
        inline: [&'a str; 16],
        len: usize,
        spill: Vec<&'a str>,
    }

    impl<'a> Levels<'a> {
        pub fn new() -> Self {
            Levels {
                inline: [""; 16],
                len: 0,
                spill: Vec::new(),
            }
        }

        pub fn push(&mut self, l: &'a str) {
            if self.len < 16 {
                self.inline[self.len] = l;
                self.len += 1;
            } else {
                if self.spill.is_empty() {
                    self.spill.extend_from_slice(&self.inline);
                }
                self.spill.push(l);
            }
        }

        pub fn as_slice(&self) -> &[&'a str] {
            if self.spill.is_empty() {
                &self.inline[..self.len]
            } else {
                &self.spill
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }
    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn matches(trie: &TopicTrie<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        trie.for_each_match(&t(topic), |e| out.push(*e));
        out.sort();
        out
    }

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "a",
        "a/#",
        "a/+",
        "a/b",
        "a/+/c",
        "+/+",
        "/+",
        "+/b/#",
        "a//c",
        "$SYS/#",
        "$SYS/+",
        "+/x",
        "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/#",
    ];

    #[test]
    fn trie_agrees_with_filter_matching_on_awkward_topics() {
        let mut trie = TopicTrie::new();
        for fl in FILTERS {
            trie.insert(&f(fl), *fl);
        }
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "a//c",
            "/",
            "/a",
            "a/",
            "b",
            "$SYS",
            "$SYS/x",
            "$SYS/a/b",
            "x/b",
            "x/b/y",
            "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r",
            "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s",
        ];
        for topic in topics {
            let mut expected: Vec<&str> = FILTERS
                .iter()
                .copied()
                .filter(|fl| f(fl).matches(&t(topic)))
                .collect();
            expected.sort();
            assert_eq!(matches(&trie, topic), expected, "topic {topic}");
        }
    }

    #[test]
    fn hash_matches_the_parent_level_but_plus_does_not() {
        let mut trie = TopicTrie::new();
        trie.insert(&f("sport/#"), "hash");
        trie.insert(&f("sport/+"), "plus");
        assert_eq!(matches(&trie, "sport"), vec!["hash"]);
        assert_eq!(matches(&trie, "sport/"), vec!["hash", "plus"]);
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        let mut trie = TopicTrie::new();
        trie.insert(&f("#"), "all");
        trie.insert(&f("+/info"), "plus");
        trie.insert(&f("$SYS/#"), "sys");
        assert_eq!(matches(&trie, "$SYS/info"), vec!["sys"]);
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut trie = TopicTrie::new();
        trie.insert(&f("a/+/c"), 1);
        trie.insert(&f("a/+/c"), 2);
        trie.insert(&f("a/#"), 3);
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.remove(&f("a/+/c"), |e| *e == 1), 1);
        assert_eq!(trie.remove(&f("a/+/c"), |e| *e == 1), 0);
        assert_eq!(trie.remove(&f("a/+/c"), |_| true), 1);
        assert_eq!(trie.remove(&f("a/#"), |_| true), 1);
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "branches pruned");
    }

    #[test]
    fn nodes_with_many_children_match_and_prune_like_small_ones() {
        let mut trie = TopicTrie::new();
        // Past Children::SMALL the node turns into a hash map.
        for i in 0..20 {
            trie.insert(&f(&format!("dev/{i}/temp")), i);
        }
        trie.insert(&f("dev/+/temp"), 100);
        for i in 0..20 {
            let mut got = Vec::new();
            trie.for_each_match(&t(&format!("dev/{i}/temp")), |e| got.push(*e));
            got.sort();
            assert_eq!(got, vec![i, 100], "dev/{i}/temp");
        }
        let mut none = 0;
        trie.for_each_match(&t("dev/20/humidity"), |_| none += 1);
        assert_eq!(none, 0);
        for i in 0..20 {
            assert_eq!(trie.remove(&f(&format!("dev/{i}/temp")), |_| true), 1);
        }
        assert_eq!(trie.remove(&f("dev/+/temp"), |_| true), 1);
        assert!(trie.root.is_empty(), "branches pruned");
    }
}
