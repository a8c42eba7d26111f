//! `/.well-known/core` (RFC 6690) answered block by block from the hub's
//! ordered topic index, never from the whole list: a block is rendered from
//! a page of the store starting at a cursor, and the cursor for the next
//! block goes into a small shared cache (bounded in entries and bytes, each
//! entry kept `lifetime`), so a client walking the listing with Block2
//! costs one page per block, whoever asks.
//!
//! The listing is the topics' links in topic order joined by `,`. A cursor
//! is the last topic whose link was started and the rest of that link not
//! yet sent, so a walk stays well-formed link-format while topics come and
//! go: every topic present during the whole walk is listed exactly once,
//! one added or removed meanwhile may or may not be.
//!
//! With `[auth]`, a peer's listing holds only the topics it may read: its
//! cursors are kept under its [`Viewer`] (user and client id), since the
//! same byte offset falls elsewhere in another user's listing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;
use polyhub_sdk::Envelope;

use crate::convert::{self, TOPIC_RT};

/// Topics fetched from the store per page.
pub const PAGE: usize = 64;
/// Most bytes of the listing skipped to reach a block from the nearest
/// cursor before it (a client asking blocks out of order); beyond, the
/// request is refused so that no request costs the whole list.
pub const MAX_SKIP: usize = 64 * 1024;

/// Which topics a `/.well-known/core` query selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Nothing (an `rt` or `href` no topic link can match).
    Nothing,
    /// Topics starting with this string (`""`: all of them).
    Prefix(String),
    /// Exactly this topic.
    Exact(String),
}

impl Scope {
    /// The scope of a request's Uri-Query items: `href` (RFC 6690 §4.1: the
    /// link's URI equals the value, or starts with it when the value ends in
    /// `*`; the prefix is compared percent-decoded, an incomplete escape or
    /// UTF-8 sequence at its end ignored) and `rt`. Other items are ignored.
    pub fn of_query(queries: &[String]) -> Scope {
        if let Some(rt) = queries.iter().find_map(|q| q.strip_prefix("rt=")) {
            let ok = match rt.strip_suffix('*') {
                Some(prefix) => TOPIC_RT.starts_with(prefix),
                None => rt == TOPIC_RT,
            };
            if !ok {
                return Scope::Nothing;
            }
        }
        let Some(href) = queries.iter().find_map(|q| q.strip_prefix("href=")) else {
            return Scope::Prefix(String::new());
        };
        match href.strip_suffix('*') {
            Some(p) if "/ps/".starts_with(p) => Scope::Prefix(String::new()),
            Some(p) => match p.strip_prefix("/ps/") {
                Some(rest) => Scope::Prefix(decode_prefix(rest)),
                None => Scope::Nothing,
            },
            None => {
                let Some(rest) = href.strip_prefix("/ps/") else {
                    return Scope::Nothing;
                };
                match percent_decode_str(rest).decode_utf8() {
                    // Only the link's own spelling of the URI matches.
                    Ok(t) if link_uri(&t) == href => Scope::Exact(t.into_owned()),
                    _ => Scope::Nothing,
                }
            }
        }
    }

    fn prefix(&self) -> &str {
        match self {
            Scope::Nothing => "",
            Scope::Prefix(p) | Scope::Exact(p) => p,
        }
    }

    fn selects(&self, topic: &str) -> bool {
        !topic.starts_with('$')
            && match self {
                Scope::Nothing => false,
                Scope::Prefix(p) => topic.starts_with(p.as_str()),
                Scope::Exact(t) => topic == t,
            }
    }
}

/// The URI of a topic's link (`/ps/a%20b/c`).
fn link_uri(topic: &str) -> String {
    let link = convert::topic_link(topic, None);
    link[1..link.find('>').unwrap_or(link.len())].to_owned()
}

/// Percent-decodes a prefix, dropping an incomplete `%X` escape or UTF-8
/// sequence at its end.
fn decode_prefix(s: &str) -> String {
    let trimmed = match s.rfind('%') {
        Some(i) if s.len() - i < 3 => &s[..i],
        _ => s,
    };
    let bytes: Vec<u8> = percent_decode_str(trimmed).collect();
    match std::str::from_utf8(&bytes) {
        Ok(t) => t.to_owned(),
        Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
    }
}

/// Where a block of the listing starts: after the link of `after` was
/// started, with `carry` (the rest of that link) still to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last topic whose link was started (`None`: the beginning).
    pub after: Option<String>,
    /// The bytes of that link not sent yet.
    pub carry: Vec<u8>,
}

impl Cursor {
    fn bytes(&self) -> usize {
        self.after.as_ref().map_or(0, String::len) + self.carry.len() + 64
    }
}

/// One block of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingBlock {
    /// The block's bytes.
    pub payload: Vec<u8>,
    /// Whether more bytes follow.
    pub more: bool,
}

/// Why a block cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The block starts past the end of the listing.
    PastTheEnd,
    /// No cursor is within [`MAX_SKIP`] bytes before the block.
    OutOfOrder,
}

/// A source of store pages: `(prefix, after, limit)` → last values in
/// topic order (the hub's `AdapterContext::topics_page`).
pub trait Pages {
    /// One page.
    fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<Arc<Envelope>>;
}

impl<F> Pages for F
where
    F: Fn(&str, Option<&str>, usize) -> Vec<Arc<Envelope>>,
{
    fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<Arc<Envelope>> {
        self(prefix, after, limit)
    }
}

/// Whose listing a cursor belongs to: `None` when every peer sees the same
/// topics (no `[auth]`), else the peer's user and client id.
pub type Viewer = Option<(Option<String>, String)>;

/// A listing: for whom, and which topics its query selects.
type Listing = (Viewer, Scope);

/// The bounded shared cache of cursors, keyed by listing and byte offset.
#[derive(Debug)]
pub struct CursorCache {
    entries: BTreeMap<(Listing, usize), (Cursor, Instant)>,
    order: VecDeque<((Listing, usize), Instant)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    lifetime: Duration,
}

impl CursorCache {
    /// A cache of at most `max_entries` cursors and about `max_bytes`, each
    /// kept `lifetime`.
    pub fn new(max_entries: usize, max_bytes: usize, lifetime: Duration) -> Self {
        CursorCache {
            entries: BTreeMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
            lifetime,
        }
    }

    /// Cursors held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (approximately: strings plus a fixed overhead each).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The block of `size` bytes at `offset` of `scope`'s listing, read from
    /// `pages`; remembers the cursor of the next block.
    pub fn block(
        &mut self,
        pages: &dyn Pages,
        scope: &Scope,
        offset: usize,
        size: usize,
        now: Instant,
    ) -> Result<ListingBlock, BlockError> {
        self.block_for(pages, &None, &|_| true, scope, offset, size, now)
    }

    /// [`CursorCache::block`] of `viewer`'s listing, which lists only the
    /// topics `readable` accepts.
    #[allow(clippy::too_many_arguments)]
    pub fn block_for(
        &mut self,
        pages: &dyn Pages,
        viewer: &Viewer,
        readable: &dyn Fn(&str) -> bool,
        scope: &Scope,
        offset: usize,
        size: usize,
        now: Instant,
    ) -> Result<ListingBlock, BlockError> {
        self.expire(now);
        let listing: Listing = (viewer.clone(), scope.clone());
        let (start, cursor) = if offset == 0 {
            (0, Cursor::default())
        } else {
            self.entries
                .range((listing.clone(), 0)..=(listing.clone(), offset))
                .next_back()
                .map(|((_, at), (c, _))| (*at, c.clone()))
                .unwrap_or((0, Cursor::default()))
        };
        if offset - start > MAX_SKIP {
            tracing::debug!(
                offset,
                nearest = start,
                cursors = self.entries.len(),
                "/.well-known/core block refused: no cursor within {MAX_SKIP} bytes before it"
            );
            return Err(BlockError::OutOfOrder);
        }
        let mut walk = Walk::new(pages, scope, readable, start, cursor);
        let block = walk.block(offset, size)?;
        if block.more {
            self.insert(listing, offset + size, walk.cursor(), now);
        }
        Ok(block)
    }

    fn insert(&mut self, listing: Listing, offset: usize, cursor: Cursor, now: Instant) {
        let bytes = entry_bytes(&listing, &cursor);
        if bytes > self.max_bytes {
            return;
        }
        let key = (listing, offset);
        if let Some((old, _)) = self.entries.insert(key.clone(), (cursor, now)) {
            self.bytes -= entry_bytes(&key.0, &old);
        }
        self.bytes += bytes;
        self.order.push_back((key, now));
        if self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            // Thin first (several at once, so that the pass is paid once
            // per many inserts), then drop the oldest if that was not
            // enough.
            let target = self.max_entries - self.max_entries / 8;
            self.thin(target, now);
            while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
                if !self.pop_oldest() {
                    break;
                }
            }
        }
        // Records of cursors replaced or thinned since: dropped once they
        // outnumber the live ones, so the queue's memory follows the cache's.
        if self.order.len() > 4 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.order
                .retain(|(k, at)| entries.get(k).is_some_and(|(_, t)| t == at));
        }
    }

    /// Evicts cursors that a neighbour can stand in for, in one pass over
    /// the cache, until at most `target` are left: a cursor goes when the
    /// cursor kept before it and the one after it are at most
    /// `MAX_SKIP / 2` apart, so any block it served is still reachable with
    /// a skip within budget (the gaps thinning makes never exceed that).
    /// Cursors younger than a second (where walks are now) are spared in a
    /// first pass. Thinning rather than dropping the oldest keeps every walk
    /// under way (many peers at different places of one long listing, more
    /// blocks than the cache holds) able to go on, at a bounded cost per
    /// block: an in-process walk of 80 peers, a fifth of them eight times
    /// slower, over 200 000 topics with 4 096 cursors, used to refuse a slow
    /// peer at block 529 when only the oldest 64 cursors were candidates.
    fn thin(&mut self, target: usize, now: Instant) {
        for spare in [Duration::from_secs(1), Duration::ZERO] {
            if self.entries.len() <= target {
                return;
            }
            let mut doomed: Vec<(Listing, usize)> = Vec::new();
            let mut excess = self.entries.len() - target;
            // The last kept cursor of the listing being walked.
            let mut kept: Option<(&Listing, usize)> = None;
            let mut it = self.entries.iter().peekable();
            while let Some(((listing, offset), (_, at))) = it.next() {
                let before = match kept {
                    Some((l, o)) if l == listing => o,
                    _ => 0,
                };
                let next = it
                    .peek()
                    .filter(|((l, _), _)| l == listing)
                    .map(|((_, o), _)| *o);
                let thinnable = excess > 0
                    && next.is_some_and(|a| a - before <= MAX_SKIP / 2)
                    && now.saturating_duration_since(*at) >= spare;
                if thinnable {
                    doomed.push((listing.clone(), *offset));
                    excess -= 1;
                } else {
                    kept = Some((listing, *offset));
                }
            }
            for key in doomed {
                if let Some((c, _)) = self.entries.remove(&key) {
                    self.bytes -= entry_bytes(&key.0, &c);
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < self.lifetime {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Forgets the oldest cursor (unless re-inserted since); false when empty.
    fn pop_oldest(&mut self) -> bool {
        let Some((key, at)) = self.order.pop_front() else {
            return false;
        };
        if self.entries.get(&key).map(|(_, t)| *t) == Some(at) {
            if let Some((c, _)) = self.entries.remove(&key) {
                self.bytes -= entry_bytes(&key.0, &c);
            }
        }
        true
    }
}

/// Bytes a cache entry holds: its cursor and its viewer's names.
fn entry_bytes(listing: &Listing, cursor: &Cursor) -> usize {
    let viewer = listing
        .0
        .as_ref()
        .map_or(0, |(u, c)| u.as_ref().map_or(0, String::len) + c.len());
    cursor.bytes() + viewer
}

/// A walk along a listing from a cursor.
struct Walk<'a> {
    pages: &'a dyn Pages,
    scope: &'a Scope,
    /// Whether the peer may read a topic (see [`Viewer`]).
    readable: &'a dyn Fn(&str) -> bool,
    /// Listing offset of the first byte of `carry`.
    pos: usize,
    cursor: Cursor,
    /// Topics fetched but not yet looked at, and where the next page starts.
    buffered: VecDeque<Arc<Envelope>>,
    scan_after: Option<String>,
    exhausted: bool,
}

impl<'a> Walk<'a> {
    fn new(
        pages: &'a dyn Pages,
        scope: &'a Scope,
        readable: &'a dyn Fn(&str) -> bool,
        pos: usize,
        cursor: Cursor,
    ) -> Self {
        let scan_after = cursor.after.clone();
        Walk {
            pages,
            scope,
            readable,
            pos,
            cursor,
            buffered: VecDeque::new(),
            scan_after,
            exhausted: matches!(scope, Scope::Nothing),
        }
    }

    fn cursor(&self) -> Cursor {
        self.cursor.clone()
    }

    /// The next selected topic's envelope, without consuming it.
    fn peek(&mut self) -> Option<&Arc<Envelope>> {
        loop {
            while let Some(e) = self.buffered.front() {
                if self.scope.selects(e.topic.as_str()) && (self.readable)(e.topic.as_str()) {
                    return self.buffered.front();
                }
                if e.topic.is_system() && self.scope.prefix().is_empty() {
                    // Skip the whole `$` range at once.
                    self.buffered.clear();
                    self.scan_after = Some(format!("${}", char::MAX));
                    break;
                }
                self.buffered.pop_front();
            }
            if self.exhausted {
                return None;
            }
            let limit = if matches!(self.scope, Scope::Exact(_)) {
                1
            } else {
                PAGE
            };
            let page = self
                .pages
                .page(self.scope.prefix(), self.scan_after.as_deref(), limit);
            if page.len() < limit || matches!(self.scope, Scope::Exact(_)) {
                self.exhausted = true;
            }
            if let Some(last) = page.last() {
                self.scan_after = Some(last.topic.as_str().to_owned());
            }
            self.buffered.extend(page);
        }
    }

    /// Makes the next topic's link (with its `,`) the carry; false at the end.
    fn next_link(&mut self, first: bool) -> bool {
        let Some(e) = self.peek().cloned() else {
            return false;
        };
        self.buffered.pop_front();
        let mut piece = Vec::new();
        if !first {
            piece.push(b',');
        }
        piece.extend_from_slice(
            convert::topic_link(e.topic.as_str(), convert::envelope_content_format(&e)).as_bytes(),
        );
        self.cursor = Cursor {
            after: Some(e.topic.as_str().to_owned()),
            carry: piece,
        };
        true
    }

    /// The bytes `offset..offset + size` of the listing; the cursor is left
    /// at `offset + size`.
    fn block(&mut self, offset: usize, size: usize) -> Result<ListingBlock, BlockError> {
        let end = offset + size;
        let mut out = Vec::with_capacity(size);
        while self.pos < end {
            if self.cursor.carry.is_empty() && !self.next_link(self.pos == 0) {
                break;
            }
            let carry = &mut self.cursor.carry;
            if self.pos < offset {
                let n = (offset - self.pos).min(carry.len());
                carry.drain(..n);
                self.pos += n;
                continue;
            }
            let n = (end - self.pos).min(carry.len());
            out.extend(carry.drain(..n));
            self.pos += n;
        }
        if self.pos < offset || (out.is_empty() && offset > 0) {
            return Err(BlockError::PastTheEnd);
        }
        let more = !self.cursor.carry.is_empty() || self.peek().is_some();
        Ok(ListingBlock { payload: out, more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyhub_sdk::Topic;

    fn store(topics: &[&str]) -> Vec<Arc<Envelope>> {
        let mut v: Vec<Arc<Envelope>> = topics
            .iter()
            .map(|t| Arc::new(Envelope::new(Topic::new(t).unwrap(), "v")))
            .collect();
        v.sort_by(|a, b| a.topic.cmp(&b.topic));
        v
    }

    fn pager(s: &[Arc<Envelope>]) -> impl Fn(&str, Option<&str>, usize) -> Vec<Arc<Envelope>> + '_ {
        move |prefix, after, limit| {
            s.iter()
                .filter(|e| e.topic.as_str().starts_with(prefix))
                .filter(|e| after.map_or(true, |a| e.topic.as_str() > a))
                .take(limit)
                .cloned()
                .collect()
        }
    }

    fn walk(cache: &mut CursorCache, pages: &dyn Pages, scope: &Scope, size: usize) -> String {
        let mut doc = Vec::new();
        let now = Instant::now();
        for num in 0.. {
            let b = cache.block(pages, scope, num * size, size, now).unwrap();
            doc.extend(b.payload);
            if !b.more {
                break;
            }
        }
        String::from_utf8(doc).unwrap()
    }

    #[test]
    fn a_block_walk_equals_the_whole_listing() {
        let names: Vec<String> = (0..500).map(|i| format!("s/{i:04}/t e;x")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut all = refs.clone();
        all.push("$SYS/x");
        let s = store(&all);
        let whole = convert::link_format(refs.iter().map(|t| (*t, None)), &[]);
        for size in [16, 64, 1024] {
            let mut cache = CursorCache::new(16, 1 << 20, Duration::from_secs(60));
            let p = pager(&s);
            assert_eq!(
                walk(&mut cache, &p, &Scope::Prefix(String::new()), size),
                whole
            );
            assert!(cache.len() <= 16);
        }
    }

    /// Two viewers walking the same scope block by block each get their
    /// own listing: a cursor of one is never used for the other.
    #[test]
    fn each_viewer_walks_a_listing_of_what_it_may_read() {
        let names: Vec<String> = (0..200).map(|i| format!("s/{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = store(&refs);
        let p = pager(&s);
        let scope = Scope::Prefix(String::new());
        let even = |t: &str| t.ends_with(['0', '2', '4', '6', '8']);
        let odd = |t: &str| !even(t);
        type Readable<'a> = &'a dyn Fn(&str) -> bool;
        let viewers: [(Viewer, Readable); 2] = [
            (Some((Some("u1".into()), "c1".into())), &even),
            (Some((Some("u2".into()), "c2".into())), &odd),
        ];
        let mut cache = CursorCache::new(64, 1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        let mut docs = [Vec::new(), Vec::new()];
        // Interleaved, block by block.
        for num in 0.. {
            let mut more = false;
            for (i, (viewer, readable)) in viewers.iter().enumerate() {
                let b = cache
                    .block_for(&p, viewer, *readable, &scope, num * 16, 16, now)
                    .or_else(|e| {
                        if e == BlockError::PastTheEnd {
                            Ok(ListingBlock {
                                payload: Vec::new(),
                                more: false,
                            })
                        } else {
                            Err(e)
                        }
                    })
                    .unwrap();
                docs[i].extend(b.payload);
                more |= b.more;
            }
            if !more {
                break;
            }
        }
        for (i, keep) in [&even as &dyn Fn(&str) -> bool, &odd].iter().enumerate() {
            let want =
                convert::link_format(refs.iter().filter(|t| keep(t)).map(|t| (*t, None)), &[]);
            assert_eq!(String::from_utf8(docs[i].clone()).unwrap(), want);
        }
    }

    #[test]
    fn topics_added_and_removed_during_a_walk_keep_it_well_formed() {
        let mut s = store(&["a", "b", "c", "d", "e", "f"]);
        let mut cache = CursorCache::new(16, 1 << 20, Duration::from_secs(60));
        let scope = Scope::Prefix(String::new());
        let now = Instant::now();
        let b0 = cache.block(&pager(&s), &scope, 0, 32, now).unwrap();
        // "a"'s link is 27 bytes: block 0 ends inside "b"'s link.
        s.retain(|e| e.topic.as_str() != "b" && e.topic.as_str() != "e");
        s.push(Arc::new(Envelope::new(Topic::new("bb").unwrap(), "v")));
        s.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut doc = b0.payload;
        for num in 1.. {
            let b = cache.block(&pager(&s), &scope, num * 32, 32, now).unwrap();
            doc.extend(b.payload);
            if !b.more {
                break;
            }
        }
        let doc = String::from_utf8(doc).unwrap();
        let links: Vec<&str> = doc.split(',').collect();
        for l in &links {
            assert!(l.starts_with("</ps/") && l.ends_with(";obs"), "{doc}");
        }
        for t in ["a", "b", "c", "d", "f"] {
            assert_eq!(
                links
                    .iter()
                    .filter(|l| l.starts_with(&format!("</ps/{t}>")))
                    .count(),
                1
            );
        }
    }

    /// Many peers walking one listing longer than the cache, each at its own
    /// pace: every walk completes (the cache thins its cursors instead of
    /// dropping the slow walkers' ones) and the cache stays bounded.
    #[test]
    fn interleaved_walks_longer_than_the_cache_all_complete() {
        // A listing of ~120 kB, beyond MAX_SKIP, in ~480 blocks.
        let names: Vec<String> = (0..3_000).map(|i| format!("fleet/{i:06}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = store(&refs);
        let p = pager(&s);
        let whole = convert::link_format(refs.iter().map(|t| (*t, None)), &[]);
        let mut cache = CursorCache::new(8, 1 << 20, Duration::from_secs(60));
        let scope = Scope::Prefix(String::new());
        let now = Instant::now();
        let size = 256;
        // Walker k asks k + 1 blocks per round, and the fast ones start
        // over when done (peers keep coming): the slowest one's cursors are
        // always the oldest in the cache.
        let mut walkers: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0); 6];
        let mut completed = 0;
        loop {
            for (k, (doc, num)) in walkers.iter_mut().enumerate() {
                for _ in 0..=k {
                    let b = cache
                        .block(&p, &scope, *num * size, size, now)
                        .unwrap_or_else(|e| panic!("walker {k} at block {num}: {e:?}"));
                    doc.extend(b.payload);
                    *num += 1;
                    if !b.more {
                        assert_eq!(std::str::from_utf8(doc).unwrap(), whole, "walker {k}");
                        if k == 0 {
                            assert!(completed > 10, "the fast walkers went round");
                            return;
                        }
                        completed += 1;
                        (*doc, *num) = (Vec::new(), 0);
                        break;
                    }
                }
                assert!(cache.len() <= 8);
            }
        }
    }

    /// A client that ignored a block's response retransmits the same
    /// request for up to 93 s; when the duplicate cache forgot the answer,
    /// the block is rendered again from its cursor. libcoap did that after
    /// 61 s (block 65 of a long listing), which a 60 s lifetime refused
    /// (the walk stopped at 1 379 links); the server keeps cursors for the
    /// exchange lifetime (247 s).
    #[test]
    fn a_block_asked_again_a_minute_later_is_still_served() {
        let names: Vec<String> = (0..3_000).map(|i| format!("fleet/{i:06}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = store(&refs);
        let p = pager(&s);
        let scope = Scope::Prefix(String::new());
        let t0 = Instant::now();
        for (lifetime, served) in [(60, false), (247, true)] {
            let mut cache = CursorCache::new(4096, 4 << 20, Duration::from_secs(lifetime));
            let mut first = None;
            for n in 0..=65 {
                let b = cache.block(&p, &scope, n * 1024, 1024, t0).unwrap();
                first = Some(b);
            }
            let again = cache.block(&p, &scope, 65 * 1024, 1024, t0 + Duration::from_secs(61));
            assert_eq!(
                again.as_ref().ok(),
                first.as_ref().filter(|_| served),
                "lifetime {lifetime}"
            );
        }
    }

    #[test]
    fn href_selects_prefixes_and_exact_topics() {
        let q = |s: &str| Scope::of_query(&[s.to_owned()]);
        assert_eq!(q("href=/ps/sensors*"), Scope::Prefix("sensors".into()));
        assert_eq!(q("href=/p*"), Scope::Prefix(String::new()));
        assert_eq!(q("href=*"), Scope::Prefix(String::new()));
        assert_eq!(q("href=/other*"), Scope::Nothing);
        assert_eq!(q("href=/ps/a%20b*"), Scope::Prefix("a b".into()));
        assert_eq!(q("href=/ps/a%2*"), Scope::Prefix("a".into()));
        assert_eq!(q("href=/ps/%C3*"), Scope::Prefix(String::new()));
        assert_eq!(q("href=/ps/a/b"), Scope::Exact("a/b".into()));
        assert_eq!(q("href=/ps/a%62"), Scope::Nothing);
        assert_eq!(q("rt=polyhub.*"), Scope::Prefix(String::new()));
        assert_eq!(q("rt=other"), Scope::Nothing);

        let s = store(&["a/b", "a/bc", "sensors/t", "x"]);
        let p = pager(&s);
        let mut cache = CursorCache::new(16, 1 << 20, Duration::from_secs(60));
        assert_eq!(
            walk(&mut cache, &p, &q("href=/ps/a/b"), 1024),
            "</ps/a/b>;rt=\"polyhub.topic\";obs"
        );
        assert_eq!(
            walk(&mut cache, &p, &q("href=/ps/sensors*"), 1024),
            "</ps/sensors/t>;rt=\"polyhub.topic\";obs"
        );
        assert_eq!(walk(&mut cache, &p, &Scope::Nothing, 1024), "");
    }

    #[test]
    fn far_blocks_without_a_cursor_are_refused_and_the_cache_stays_bounded() {
        let names: Vec<String> = (0..5000).map(|i| format!("t/{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = store(&refs);
        let p = pager(&s);
        let mut cache = CursorCache::new(4, 1 << 20, Duration::from_secs(60));
        let scope = Scope::Prefix(String::new());
        let now = Instant::now();
        assert_eq!(
            cache.block(&p, &scope, 1024 * 100, 1024, now),
            Err(BlockError::OutOfOrder)
        );
        assert!(cache.block(&p, &scope, 1024 * 10, 1024, now).is_ok());
        assert_eq!(
            cache.block(&p, &scope, 1 << 30, 1024, now),
            Err(BlockError::OutOfOrder)
        );
        for n in 0..20 {
            cache.block(&p, &scope, n * 16, 16, now).unwrap();
        }
        assert_eq!(cache.len(), 4);
        let later = now + Duration::from_secs(61);
        cache.block(&p, &scope, 0, 16, later).unwrap();
        assert_eq!(cache.len(), 1, "expired ones are gone");
        let small = store(&["a"]);
        assert_eq!(
            cache.block(&pager(&small), &scope, 1024, 1024, now),
            Err(BlockError::PastTheEnd)
        );
    }

    /// `walkers` peers walk one listing of `topics` topics block by block
    /// with a cache of `cap` cursors, every fourth of them eight times
    /// slower than the others, one request every `step`; panics if one is
    /// refused.
    fn walkers_all_finish(topics: usize, cap: usize, walkers: usize, step: Duration) {
        let by_topic: BTreeMap<String, Arc<Envelope>> = (0..topics)
            .map(|i| format!("fleet/{:02}/dev-{i:06}", i % 50))
            .map(|t| {
                let e = Arc::new(Envelope::new(Topic::new(&t).unwrap(), "v"));
                (t, e)
            })
            .collect();
        let p = |prefix: &str, after: Option<&str>, limit: usize| -> Vec<Arc<Envelope>> {
            let start = match after {
                Some(a) => std::ops::Bound::Excluded(a.to_owned()),
                None => std::ops::Bound::Included(prefix.to_owned()),
            };
            by_topic
                .range((start, std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let mut cache = CursorCache::new(cap, 4 << 20, Duration::from_secs(60));
        let scope = Scope::Prefix(String::new());
        let start = Instant::now();
        let mut next = vec![0usize; walkers];
        let mut done = vec![false; walkers];
        let mut rng = 12345u64;
        let mut steps = 0u64;
        while done.iter().any(|d| !d) {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = (rng >> 33) as usize % walkers;
            if done[w] || (w % 4 == 0 && (rng >> 20) % 8 != 0) {
                continue;
            }
            steps += 1;
            let now = start + step * steps as u32;
            match cache.block(&p, &scope, next[w] * 1024, 1024, now) {
                Ok(b) => {
                    next[w] += 1;
                    done[w] = !b.more;
                }
                Err(e) => panic!("walker {w} refused at block {}: {e:?}", next[w]),
            }
            assert!(cache.len() <= cap);
            assert!(cache.order.len() <= 4 * cache.len() + 1025);
        }
    }

    /// Many peers walking one listing far longer than the cache, some of
    /// them eight times slower than the others, all finish: the slow ones'
    /// cursors are thinned, never dropped.
    #[test]
    fn slow_and_fast_walkers_of_a_long_listing_all_finish() {
        walkers_all_finish(30_000, 256, 40, Duration::from_micros(20));
    }

    /// The same walks paced so that they last longer than the cursors'
    /// lifetime (60 s).
    #[test]
    fn walks_longer_than_the_cursor_lifetime_all_finish() {
        walkers_all_finish(30_000, 256, 40, Duration::from_millis(2));
    }

    /// The reproduction at full size (`cargo test --release -p polyhub-coap
    /// --lib eighty -- --ignored`, about 25 s): with only the oldest 64
    /// cursors as thinning candidates, walker 4 was refused at block 529
    /// (libcoap walks stopped at 1 379 links); now all 80 finish. The small
    /// test above runs in the suite but passed with the old code too.
    #[test]
    #[ignore]
    fn eighty_walkers_over_200_000_topics_all_finish() {
        walkers_all_finish(200_000, 4096, 80, Duration::from_micros(20));
    }
}
