//! A bounded, non-recursive check of every stanza's bytes before tokio-xmpp's
//! XML parser and tree builder see them.
//!
//! Why a byte-level guard in front of the parser, and not a parser setting:
//! - **Nesting depth.** tokio-xmpp builds each stanza with xso's
//!   `minidom_compat::ElementFromEvents`, which hands every XML event down
//!   the chain of open child builders by recursion (one `feed` frame per
//!   nesting level, for every event), and minidom's `Element` drops its
//!   children recursively too. A `<message>` nested a few thousand levels
//!   deep (35 KB) overflowed the worker thread's stack and aborted the whole
//!   hub. Neither rxml (the tokenizer) nor xso has a depth limit, and
//!   tokio-xmpp creates its parser itself (`rxml::Parser::default()` in a
//!   private type), so nothing can be configured: the depth has to be
//!   refused before the bytes reach it.
//! - **Token length.** rxml refuses an element name, attribute name or
//!   attribute value of 8 192 bytes or more (its default `max_token_length`)
//!   with an error that tokio-xmpp treats as fatal for the stream. The server
//!   then redelivers the unacknowledged stanza (XEP-0198 resumption, then
//!   offline storage) on every login: an endless reconnect loop that survives
//!   hub restarts. The guard refuses such a stanza itself, so the parser
//!   never errors and the stream stays up.
//! - **Validity.** A stanza that is XML but not valid XMPP (`type='bogus'`,
//!   a `from` that is not a JID) is dropped inside tokio-xmpp with a log
//!   line and no way for the adapter to count it. Once a stanza has passed
//!   the bounds above, the guard reads it as tokio-xmpp will
//!   ([`check_stanza`]) and refuses the invalid ones itself.
//!
//! A refused stanza is not simply cut out of the stream: it is replaced by an
//! empty placeholder of the same kind (`<message/>`, `<presence/>`, or for an
//! `<iq>` one that makes the adapter answer the sender with an error).
//! Stream management counts the stanzas it receives; if the refused one
//! vanished, the hub would acknowledge one stanza too few for the rest of
//! the session, and the server would redeliver it (and every last stanza
//! after it) on each resumption. With the placeholder the count is right and
//! the server forgets the refused stanza.
//!
//! The guard is a small XML lexer (tags, quoted attribute values, comments,
//! CDATA, processing instructions) that keeps a depth counter, never a stack;
//! it holds at most one stanza's bytes (`max_stanza_bytes`), and none while
//! skipping a refused one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// rxml's default `max_token_length`: a name or attribute value this long or
/// longer makes tokio-xmpp's parser fail the stream. Counted on the raw
/// (escaped) bytes, which are never fewer than the decoded ones, so the
/// guard refuses everything the parser would, and a little more.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// The name of the element that opens a (re)started stream.
const STREAM_TAG: &[u8] = b"stream:stream";
/// The namespace of the payload an `<iq>` placeholder carries.
pub const NS_REFUSED: &str = "urn:polyhub:refused";
/// Longest `id`/`from`/`type` value copied from a refused `<iq>` into its
/// placeholder (so the sender gets an error); a longer one is not copied.
const MAX_COPIED_ATTR: usize = 3072;

/// What the guard lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest element nesting inside a stanza (the stanza itself is 1).
    pub max_depth: usize,
    /// Largest stanza in bytes.
    pub max_stanza_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_stanza_bytes: 256 * 1024,
        }
    }
}

/// Why a stanza was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Nested deeper than [`Limits::max_depth`].
    TooDeep,
    /// Larger than [`Limits::max_stanza_bytes`], or a name or attribute value
    /// of [`MAX_TOKEN_BYTES`] or more.
    TooLarge,
    /// A comment, processing instruction or DTD inside a stanza (the parser
    /// refuses them, fatally for the stream).
    Malformed,
    /// Well-formed XML that is not a valid `<message>`, `<presence>` or
    /// `<iq>` (a `type` the RFC does not define, a `from` that is not a
    /// JID, an `<iq>` without `id`, ...): tokio-xmpp would drop it with only
    /// a log line, so the guard refuses it itself, where it is counted.
    Invalid,
}

impl Refusal {
    /// The `reason` label of `polyhub_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooDeep => "xml_too_deep",
            Refusal::TooLarge => "xml_too_large",
            Refusal::Malformed => "malformed_stanza",
            Refusal::Invalid => "invalid_stanza",
        }
    }
}

/// The byte stream is not XML at all (only a broken server sends that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotXml(pub &'static str);

impl std::fmt::Display for NotXml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server sent bytes that are not XML: {}", self.0)
    }
}

impl std::error::Error for NotXml {}

/// Where the lexer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Character data between tags.
    Text,
    /// Just after `<`.
    Open,
    /// In a start tag's name.
    StartName,
    /// In a start tag, between attributes.
    InTag,
    /// In an attribute name.
    AttrName,
    /// After an attribute name, before `=`.
    AttrEq,
    /// After `=`, before the quote.
    AttrQuote,
    /// In an attribute value quoted by this byte.
    AttrValue(u8),
    /// After `/` in a start tag: `>` must follow.
    SelfClose,
    /// In an end tag.
    EndTag,
    /// After `<!`: the next bytes say comment, CDATA or DTD.
    Bang,
    /// In a comment; how many `-` were just seen.
    Comment(u8),
    /// In CDATA; how many `]` were just seen.
    Cdata(u8),
    /// In a processing instruction; whether `?` was just seen.
    Pi(bool),
    /// In a `<!DOCTYPE` or other `<!` declaration (skipped up to `>`).
    Decl,
}

/// The kind of the stanza being read (what its placeholder is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Message,
    Presence,
    Iq,
    /// Not a stanza (a nonza such as `<r/>`): refused without placeholder.
    Other,
}

/// Which attribute of the stanza's own start tag is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copied {
    Id,
    From,
    Type,
}

/// The stream header a stanza is read under, as the server sends it (the
/// stanza inherits its `jabber:client` namespace).
pub const STREAM_HEADER: &str = "<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// Reads one complete `<message>`, `<presence>` or `<iq>` the way
/// tokio-xmpp will (rxml's events into xmpp-parsers' `Stanza` builder, under
/// [`STREAM_HEADER`]): `Err(Invalid)` where xmpp-parsers refuses it (which
/// tokio-xmpp would drop without telling anyone), `Err(Malformed)` where
/// rxml does (which would end the stream). The stanza is at most
/// `max_depth` deep and `max_stanza_bytes` long here, so the builder's
/// recursion and this second parse are bounded.
pub fn check_stanza(bytes: &[u8]) -> Result<(), Refusal> {
    use xmpp_parsers::stanza::Stanza;
    use xso::exports::rxml::{self, error::EndOrError, Parse};
    use xso::{FromEventsBuilder, FromXml};

    let mut parser = rxml::Parser::default();
    let mut header = STREAM_HEADER.as_bytes();
    loop {
        match parser.parse(&mut header, false) {
            Ok(Some(rxml::Event::StartElement(..))) => break,
            Ok(Some(_)) => {}
            // The constant header always parses.
            _ => return Ok(()),
        }
    }
    let mut buf = bytes;
    let mut next = move || match parser.parse(&mut buf, false) {
        Ok(Some(ev)) => Ok(ev),
        Ok(None) | Err(EndOrError::NeedMoreData) | Err(EndOrError::Error(_)) => {
            Err(Refusal::Malformed)
        }
    };
    let rxml::Event::StartElement(_, name, attrs) = next()? else {
        return Err(Refusal::Malformed);
    };
    let ctx = xso::Context::empty();
    let Ok(mut builder) =
        <Result<Stanza, xso::error::Error> as FromXml>::from_events(name, attrs, &ctx)
    else {
        // Not one of the three in `jabber:client`: tokio-xmpp decides.
        return Ok(());
    };
    loop {
        match builder.feed(next()?, &ctx) {
            Ok(None) => {}
            Ok(Some(Ok(_))) => return Ok(()),
            Ok(Some(Err(_))) | Err(_) => return Err(Refusal::Invalid),
        }
    }
}

/// The incremental guard: bytes from the server in, bytes for the parser
/// out. Pure and synchronous (unit-tested and fuzzed without a network).
#[derive(Debug)]
pub struct StanzaGuard {
    limits: Limits,
    lex: Lex,
    /// Open elements, the stream's root included (a stanza's own element is
    /// at depth 2 while open).
    depth: usize,
    /// Whether the current tag is the stream header (`<stream:stream>`).
    header: bool,
    /// Inside a stanza: its bytes so far (unless skipping).
    in_stanza: bool,
    pending: Vec<u8>,
    /// Bytes of the current stanza seen (also while skipping).
    stanza_len: usize,
    /// The refusal of the current stanza, if any: its bytes are dropped.
    refused: Option<Refusal>,
    kind: Kind,
    /// Length of the current name or attribute value.
    token: usize,
    /// The current name's first bytes (to tell `stream:stream`, `message`...).
    name: [u8; 16],
    /// Bytes of a `<!` declaration seen so far (`[CDATA[` / `--`).
    bang: [u8; 7],
    bang_len: usize,
    /// In the stanza's own start tag: the attribute being copied, and the
    /// copies of `id`, `from` and `type` (`None` when too long).
    copying: Option<Copied>,
    copy: [Option<Vec<u8>>; 3],
    quote: [u8; 3],
}

impl StanzaGuard {
    /// A guard at the start of a connection.
    pub fn new(limits: Limits) -> Self {
        StanzaGuard {
            limits,
            lex: Lex::Text,
            depth: 0,
            header: false,
            in_stanza: false,
            pending: Vec::new(),
            stanza_len: 0,
            refused: None,
            kind: Kind::Other,
            token: 0,
            name: [0; 16],
            bang: [0; 7],
            bang_len: 0,
            copying: None,
            copy: [None, None, None],
            quote: [b'\''; 3],
        }
    }

    /// Lexes `input`, appends what the parser may see to `out`, and calls
    /// `refused` once per stanza refused (after its last byte).
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        refused: &mut dyn FnMut(Refusal),
    ) -> Result<(), NotXml> {
        // Bytes outside stanzas go straight to `out`; `direct` is where the
        // current run of them started.
        let mut direct = if self.in_stanza { None } else { Some(0) };
        for (i, &b) in input.iter().enumerate() {
            if self.in_stanza {
                self.stanza_len += 1;
                if self.refused.is_none() {
                    self.pending.push(b);
                    if self.stanza_len > self.limits.max_stanza_bytes {
                        self.refuse(Refusal::TooLarge);
                    }
                }
            }
            self.step(b, i, input, out, &mut direct, refused)?;
        }
        if let Some(start) = direct {
            out.extend_from_slice(&input[start..]);
        }
        Ok(())
    }

    fn refuse(&mut self, why: Refusal) {
        if self.refused.is_none() {
            self.refused = Some(why);
            self.pending = Vec::new();
        }
    }

    /// A `<` at stream level opens something that may be a stanza: from
    /// here, bytes are held until it is complete.
    fn begin_stanza(
        &mut self,
        i: usize,
        input: &[u8],
        out: &mut Vec<u8>,
        direct: &mut Option<usize>,
    ) {
        if let Some(start) = direct.take() {
            out.extend_from_slice(&input[start..i]);
        }
        self.in_stanza = true;
        self.pending.clear();
        self.pending.push(b'<');
        self.stanza_len = 1;
        self.refused = None;
        self.kind = Kind::Other;
        self.copy = [None, None, None];
    }

    /// The stanza (or stream-level item) held since `<` is complete.
    fn end_stanza(
        &mut self,
        i: usize,
        out: &mut Vec<u8>,
        direct: &mut Option<usize>,
        refused: &mut dyn FnMut(Refusal),
    ) {
        let refusal = self.refused.take().or_else(|| {
            (self.kind != Kind::Other)
                .then(|| check_stanza(&self.pending).err())
                .flatten()
        });
        match refusal {
            None => out.extend_from_slice(&self.pending),
            Some(why) => {
                self.placeholder(why, out);
                refused(why);
            }
        }
        self.pending.clear();
        if self.pending.capacity() > 64 * 1024 {
            self.pending = Vec::new();
        }
        self.in_stanza = false;
        *direct = Some(i + 1);
    }

    fn placeholder(&self, why: Refusal, out: &mut Vec<u8>) {
        match self.kind {
            Kind::Message => out.extend_from_slice(b"<message/>"),
            Kind::Presence => out.extend_from_slice(b"<presence type='error'/>"),
            Kind::Iq => {
                let [id, from, type_] = &self.copy;
                let asks = matches!(type_.as_deref(), Some(b"get") | Some(b"set"));
                match (id, from) {
                    (Some(id), Some(from)) if asks => {
                        out.extend_from_slice(b"<iq type=");
                        self.quoted(2, type_.as_deref().unwrap_or_default(), out);
                        out.extend_from_slice(b" id=");
                        self.quoted(0, id, out);
                        out.extend_from_slice(b" from=");
                        self.quoted(1, from, out);
                        out.extend_from_slice(b"><refused xmlns='");
                        out.extend_from_slice(NS_REFUSED.as_bytes());
                        out.extend_from_slice(b"' reason='");
                        out.extend_from_slice(why.reason().as_bytes());
                        out.extend_from_slice(b"'/></iq>");
                    }
                    _ => out.extend_from_slice(b"<iq type='result' id='polyhub-refused'/>"),
                }
            }
            Kind::Other => {}
        }
    }

    fn quoted(&self, which: usize, value: &[u8], out: &mut Vec<u8>) {
        out.push(self.quote[which]);
        out.extend_from_slice(value);
        out.push(self.quote[which]);
    }

    /// Whether the name just read is the stream header's.
    fn name_is(&self, name: &[u8]) -> bool {
        self.token == name.len() && self.name[..name.len().min(16)] == name[..name.len().min(16)]
    }

    fn push_name(&mut self, b: u8) -> Result<(), ()> {
        if self.token < self.name.len() {
            self.name[self.token] = b;
        }
        self.token += 1;
        if self.token >= MAX_TOKEN_BYTES {
            return Err(());
        }
        Ok(())
    }

    /// Whether the current tag is the stanza's own start tag.
    fn stanza_tag(&self) -> bool {
        self.in_stanza && self.depth == 1
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        b: u8,
        i: usize,
        input: &[u8],
        out: &mut Vec<u8>,
        direct: &mut Option<usize>,
        refused: &mut dyn FnMut(Refusal),
    ) -> Result<(), NotXml> {
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        match self.lex {
            Lex::Text => {
                if b == b'<' {
                    if self.depth == 1 && !self.in_stanza {
                        self.begin_stanza(i, input, out, direct);
                    }
                    self.lex = Lex::Open;
                }
            }
            Lex::Open => match b {
                b'/' => {
                    self.token = 0;
                    self.lex = Lex::EndTag;
                }
                b'!' => {
                    self.bang_len = 0;
                    self.lex = Lex::Bang;
                }
                b'?' => {
                    if self.in_stanza && self.depth >= 2 {
                        self.refuse(Refusal::Malformed);
                    }
                    self.lex = Lex::Pi(false);
                }
                b'<' | b'>' | b'=' | b'\'' | b'"' => {
                    return Err(NotXml("misplaced character after <"))
                }
                _ if ws => return Err(NotXml("space after <")),
                _ => {
                    self.token = 0;
                    self.header = false;
                    if self.in_stanza {
                        // `depth` open elements, the root and the stanza's
                        // ancestors within it: this one is at stanza depth
                        // `depth` (the stanza's own element is 1).
                        if self.depth > self.limits.max_depth {
                            self.refuse(Refusal::TooDeep);
                        }
                    }
                    if self.push_name(b).is_err() {
                        self.refuse(Refusal::TooLarge);
                    }
                    self.lex = Lex::StartName;
                }
            },
            Lex::StartName => {
                if ws || b == b'/' || b == b'>' {
                    self.start_name_done();
                    self.lex = Lex::InTag;
                    return self.step(b, i, input, out, direct, refused);
                }
                if matches!(b, b'<' | b'=' | b'\'' | b'"') {
                    return Err(NotXml("bad character in a tag name"));
                }
                if self.push_name(b).is_err() {
                    self.refuse(Refusal::TooLarge);
                }
            }
            Lex::InTag => match b {
                b'>' => self.start_tag_done(false, i, out, direct, refused),
                b'/' => self.lex = Lex::SelfClose,
                _ if ws => {}
                b'<' | b'=' | b'\'' | b'"' => return Err(NotXml("bad character in a tag")),
                _ => {
                    self.token = 0;
                    let _ = self.push_name(b);
                    self.lex = Lex::AttrName;
                }
            },
            Lex::AttrName => {
                if ws || b == b'=' {
                    self.attr_name_done();
                    self.lex = Lex::AttrEq;
                    return self.step(b, i, input, out, direct, refused);
                }
                if matches!(b, b'<' | b'>' | b'/' | b'\'' | b'"') {
                    return Err(NotXml("bad character in an attribute name"));
                }
                if self.push_name(b).is_err() {
                    self.refuse(Refusal::TooLarge);
                }
            }
            Lex::AttrEq => match b {
                b'=' => self.lex = Lex::AttrQuote,
                _ if ws => {}
                _ => return Err(NotXml("attribute without =")),
            },
            Lex::AttrQuote => match b {
                b'\'' | b'"' => {
                    self.token = 0;
                    if let Some(which) = self.copying {
                        self.quote[which as usize] = b;
                        self.copy[which as usize] = Some(Vec::new());
                    }
                    self.lex = Lex::AttrValue(b);
                }
                _ if ws => {}
                _ => return Err(NotXml("unquoted attribute value")),
            },
            Lex::AttrValue(q) => {
                if b == q {
                    self.copying = None;
                    self.lex = Lex::InTag;
                } else if b == b'<' {
                    return Err(NotXml("< in an attribute value"));
                } else {
                    self.token += 1;
                    if self.token >= MAX_TOKEN_BYTES {
                        self.refuse(Refusal::TooLarge);
                    }
                    if let Some(which) = self.copying {
                        let slot = &mut self.copy[which as usize];
                        match slot {
                            Some(v) if v.len() < MAX_COPIED_ATTR => v.push(b),
                            _ => *slot = None,
                        }
                    }
                }
            }
            Lex::SelfClose => {
                if b != b'>' {
                    return Err(NotXml("/ not followed by > in a tag"));
                }
                self.start_tag_done(true, i, out, direct, refused);
            }
            Lex::EndTag => {
                if b == b'>' {
                    if self.depth == 0 {
                        return Err(NotXml("end tag without start tag"));
                    }
                    self.depth -= 1;
                    self.lex = Lex::Text;
                    // The stanza's own end tag, or the stream's footer.
                    if self.in_stanza && self.depth <= 1 {
                        self.end_stanza(i, out, direct, refused);
                    }
                } else if b == b'<' {
                    return Err(NotXml("< in an end tag"));
                } else {
                    self.token += 1;
                    if self.token >= MAX_TOKEN_BYTES {
                        self.refuse(Refusal::TooLarge);
                    }
                }
            }
            Lex::Bang => {
                self.bang[self.bang_len] = b;
                self.bang_len += 1;
                let seen = &self.bang[..self.bang_len];
                if seen == b"--" {
                    if self.in_stanza && self.depth >= 2 {
                        self.refuse(Refusal::Malformed);
                    }
                    self.lex = Lex::Comment(0);
                } else if seen == b"[CDATA[" {
                    self.lex = Lex::Cdata(0);
                } else if !b"--".starts_with(seen) && !b"[CDATA[".starts_with(seen) {
                    // <!DOCTYPE and the like: the parser refuses them.
                    if self.in_stanza && self.depth >= 2 {
                        self.refuse(Refusal::Malformed);
                    }
                    self.lex = if b == b'>' {
                        self.after_markup(i, out, direct, refused)
                    } else {
                        Lex::Decl
                    };
                }
            }
            Lex::Comment(dashes) => {
                self.lex = match (b, dashes) {
                    (b'-', d) => Lex::Comment((d + 1).min(2)),
                    (b'>', 2) => self.after_markup(i, out, direct, refused),
                    _ => Lex::Comment(0),
                };
            }
            Lex::Cdata(brackets) => {
                self.lex = match (b, brackets) {
                    (b']', d) => Lex::Cdata((d + 1).min(2)),
                    (b'>', 2) => Lex::Text,
                    _ => Lex::Cdata(0),
                };
            }
            Lex::Pi(question) => {
                self.lex = match (b, question) {
                    (b'>', true) => self.after_markup(i, out, direct, refused),
                    (b'?', _) => Lex::Pi(true),
                    _ => Lex::Pi(false),
                };
            }
            Lex::Decl => {
                if b == b'>' {
                    self.lex = self.after_markup(i, out, direct, refused);
                }
            }
        }
        Ok(())
    }

    /// After a comment, PI or declaration: one at stream level (held since
    /// its `<`) is let through as it is; the parser decides.
    fn after_markup(
        &mut self,
        i: usize,
        out: &mut Vec<u8>,
        direct: &mut Option<usize>,
        refused: &mut dyn FnMut(Refusal),
    ) -> Lex {
        if self.in_stanza && self.depth <= 1 {
            self.end_stanza(i, out, direct, refused);
        }
        Lex::Text
    }

    fn start_name_done(&mut self) {
        if self.depth == 1 && self.name_is(STREAM_TAG) {
            // A restarted stream (after SASL) inside the old one's root: a
            // new root, not a stanza.
            self.header = true;
        }
        if self.stanza_tag() {
            self.kind = if self.name_is(b"message") {
                Kind::Message
            } else if self.name_is(b"presence") {
                Kind::Presence
            } else if self.name_is(b"iq") {
                Kind::Iq
            } else {
                Kind::Other
            };
        }
    }

    fn attr_name_done(&mut self) {
        self.copying = None;
        if self.stanza_tag() && self.kind == Kind::Iq {
            self.copying = if self.name_is(b"id") {
                Some(Copied::Id)
            } else if self.name_is(b"from") {
                Some(Copied::From)
            } else if self.name_is(b"type") {
                Some(Copied::Type)
            } else {
                None
            };
        }
    }

    fn start_tag_done(
        &mut self,
        empty: bool,
        i: usize,
        out: &mut Vec<u8>,
        direct: &mut Option<usize>,
        refused: &mut dyn FnMut(Refusal),
    ) {
        self.lex = Lex::Text;
        if self.header {
            // The depth stays 1: the new root replaces the old one. Its bytes
            // were held as if it were a stanza: let them through.
            self.header = false;
            if self.depth == 0 {
                self.depth = 1;
            }
            if self.in_stanza {
                self.end_stanza(i, out, direct, refused);
            }
            return;
        }
        if !empty {
            self.depth += 1;
        } else if self.in_stanza && self.depth <= 1 {
            // A stanza that is one empty element.
            self.end_stanza(i, out, direct, refused);
        }
    }
}

/// A connection's byte stream with a [`StanzaGuard`] on the reading side;
/// writes pass through. Refusals are counted on the adapter's metrics.
pub struct GuardedIo<Io> {
    inner: Io,
    guard: StanzaGuard,
    out: Vec<u8>,
    pos: usize,
    on_refusal: OnRefusal,
}

/// What a [`GuardedIo`] calls for each refused stanza (the adapter counts
/// and logs it with `AdapterContext::reject`).
pub type OnRefusal = Arc<dyn Fn(Refusal) + Send + Sync>;

impl<Io> GuardedIo<Io> {
    /// Wraps `inner`; `on_refusal` is called once per refused stanza.
    pub fn new(inner: Io, limits: Limits, on_refusal: OnRefusal) -> Self {
        GuardedIo {
            inner,
            guard: StanzaGuard::new(limits),
            out: Vec::new(),
            pos: 0,
            on_refusal,
        }
    }
}

impl<Io: AsyncBufRead + Unpin> AsyncBufRead for GuardedIo<Io> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.pos >= this.out.len() {
            this.out.clear();
            this.pos = 0;
            let data = ready!(Pin::new(&mut this.inner).poll_fill_buf(cx))?;
            if data.is_empty() {
                break;
            }
            let n = data.len();
            let on_refusal = &this.on_refusal;
            let mut count = |why: Refusal| on_refusal(why);
            let result = this.guard.feed(data, &mut this.out, &mut count);
            Pin::new(&mut this.inner).consume(n);
            result.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Poll::Ready(Ok(&this.out[this.pos..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.out.len());
    }
}

impl<Io: AsyncBufRead + Unpin> AsyncRead for GuardedIo<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let data = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for GuardedIo<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

    /// Feeds `chunks` in order; what comes out and the refusals.
    fn run(limits: Limits, chunks: &[&[u8]]) -> (String, Vec<Refusal>) {
        let mut g = StanzaGuard::new(limits);
        let mut out = Vec::new();
        let mut why = Vec::new();
        for c in chunks {
            g.feed(c, &mut out, &mut |r| why.push(r)).unwrap();
        }
        (String::from_utf8(out).unwrap(), why)
    }

    fn whole(xml: &str) -> (String, Vec<Refusal>) {
        run(Limits::default(), &[xml.as_bytes()])
    }

    /// Every split of `xml` into two chunks gives the same result.
    fn any_split(xml: &str) -> (String, Vec<Refusal>) {
        let one = whole(xml);
        for i in 0..=xml.len() {
            let (a, b) = xml.as_bytes().split_at(i);
            assert_eq!(run(Limits::default(), &[a, b]), one, "split at {i}");
        }
        one
    }

    #[test]
    fn ordinary_stanzas_pass_unchanged() {
        let xml = format!(
            "{HEADER}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features> \
             <message from='a@b/c' to='hub@b' type=\"chat\"><subject>x/y</subject><body>a &gt; b &amp; c</body></message>\
             <presence/><iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq><r xmlns='urn:xmpp:sm:3'/>\
             <message><body><![CDATA[<not a tag>]]></body></message></stream:stream>"
        );
        assert_eq!(any_split(&xml), (xml.clone(), vec![]));
    }

    /// Well-formed XML that xmpp-parsers refuses (tokio-xmpp would drop it
    /// with a log line only) is replaced by its placeholder and counted; a
    /// refused `<iq type='get'>` keeps what its error reply needs.
    #[test]
    fn invalid_stanzas_are_replaced_and_counted() {
        let xml = format!(
            "{HEADER}<message type='bogus'><subject>x/y</subject><body>1</body></message>\
             <message from='@localhost'><body>a</body></message>\
             <presence type='sometimes'/><iq type='get' id='7' from='m@b/r'/>\
             <iq type='whenever' id='8'/><message><body>ok</body></message>"
        );
        for bad in [
            "<message type='bogus'/>",
            "<message from='@localhost'><body>a</body></message>",
            "<presence type='sometimes'/>",
            "<iq type='get' id='7' from='m@b/r'/>",
            "<iq type='whenever' id='8'/>",
        ] {
            assert_eq!(check_stanza(bad.as_bytes()), Err(Refusal::Invalid), "{bad}");
        }
        let (out, why) = any_split(&xml);
        assert_eq!(why, vec![Refusal::Invalid; 5]);
        assert_eq!(Refusal::Invalid.reason(), "invalid_stanza");
        assert_eq!(
            out,
            format!(
                "{HEADER}<message/><message/><presence type='error'/>\
                 <iq type='get' id='7' from='m@b/r'><refused xmlns='{NS_REFUSED}' reason='invalid_stanza'/></iq>\
                 <iq type='result' id='polyhub-refused'/><message><body>ok</body></message>"
            )
        );
        // What the guard lets through, the parser accepts.
        for ok in [
            "<message type='chat' from='a@b/c'><body>x</body></message>",
            "<presence type='unavailable'/>",
            "<iq type='result' id='polyhub-refused'/>",
            "<presence type='error'/>",
            "<message/>",
        ] {
            assert_eq!(check_stanza(ok.as_bytes()), Ok(()), "{ok}");
        }
        assert_eq!(
            check_stanza(b"<message><body>&nope;</body></message>"),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn a_restarted_stream_is_a_new_root() {
        let xml = format!(
            "{HEADER}<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{HEADER}<message><body>x</body></message>"
        );
        assert_eq!(any_split(&xml), (xml.clone(), vec![]));
        // The stanza after the restart is still checked (depth 2 = too deep).
        let limits = Limits {
            max_depth: 2,
            ..Limits::default()
        };
        let deep = format!("{HEADER}<success/>{HEADER}<message><a><b/></a></message><presence/>");
        let (out, why) = run(limits, &[deep.as_bytes()]);
        assert_eq!(why, vec![Refusal::TooDeep]);
        assert!(out.ends_with("<message/><presence/>"), "{out}");
    }

    #[test]
    fn deep_nesting_is_replaced_by_an_empty_stanza() {
        let n = 8000;
        let xml = format!(
            "{HEADER}<message from='m@b/r'><subject>x</subject>{}{}</message><message><body>after</body></message>",
            "<a>".repeat(n),
            "</a>".repeat(n)
        );
        let (out, why) = whole(&xml);
        assert_eq!(why, vec![Refusal::TooDeep]);
        assert_eq!(
            out,
            format!("{HEADER}<message/><message><body>after</body></message>")
        );
        // Exactly at the limit passes.
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let ok = format!("{HEADER}<message><a><b/></a></message>");
        assert_eq!(run(limits, &[ok.as_bytes()]), (ok.clone(), vec![]));
        let deep = format!("{HEADER}<message><a><b><c/></b></a></message>");
        assert_eq!(run(limits, &[deep.as_bytes()]).1, vec![Refusal::TooDeep]);
    }

    #[test]
    fn long_attribute_values_and_names_are_refused() {
        let long = "A".repeat(MAX_TOKEN_BYTES);
        for stanza in [
            format!("<message><x v='{long}'/></message>"),
            format!("<message id=\"{long}\"><body>b</body></message>"),
            format!("<message><{long}/></message>"),
            format!("<message><x {long}='1'/></message>"),
        ] {
            let (out, why) = whole(&format!("{HEADER}{stanza}<presence/>"));
            assert_eq!(why, vec![Refusal::TooLarge], "{}", &stanza[..40]);
            assert_eq!(out, format!("{HEADER}<message/><presence/>"));
        }
        let fits = format!(
            "{HEADER}<message><x v='{}'/></message>",
            "A".repeat(MAX_TOKEN_BYTES - 1)
        );
        assert_eq!(whole(&fits), (fits.clone(), vec![]));
        // Long text is fine: the parser splits it.
        let text = format!(
            "{HEADER}<message><body>{}</body></message>",
            "t".repeat(3 * MAX_TOKEN_BYTES)
        );
        assert_eq!(whole(&text), (text.clone(), vec![]));
    }

    #[test]
    fn stanzas_over_the_size_limit_are_refused_without_holding_them() {
        let limits = Limits {
            max_stanza_bytes: 100,
            ..Limits::default()
        };
        let big = format!(
            "{HEADER}<presence><status>{}</status></presence><iq type='result' id='x'/>",
            "s".repeat(10_000)
        );
        let mut g = StanzaGuard::new(limits);
        let mut out = Vec::new();
        let mut why = Vec::new();
        g.feed(big.as_bytes(), &mut out, &mut |r| why.push(r))
            .unwrap();
        assert_eq!(why, vec![Refusal::TooLarge]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{HEADER}<presence type='error'/><iq type='result' id='x'/>")
        );
        assert!(g.pending.capacity() <= 64 * 1024);
    }

    #[test]
    fn a_refused_iq_request_keeps_what_the_error_reply_needs() {
        let xml = format!(
            "{HEADER}<iq type='set' id='q1' from=\"d@b/r\"><set xmlns='urn:xmpp:iot:control'><x v='{}'/></set></iq>",
            "A".repeat(MAX_TOKEN_BYTES)
        );
        let (out, why) = whole(&xml);
        assert_eq!(why, vec![Refusal::TooLarge]);
        assert_eq!(
            out,
            format!("{HEADER}<iq type='set' id='q1' from=\"d@b/r\"><refused xmlns='{NS_REFUSED}' reason='xml_too_large'/></iq>")
        );
        // An answer (or an iq without id) is just dropped to a result.
        let xml = format!(
            "{HEADER}<iq type='result'>{}{}</iq>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert!(whole(&xml)
            .0
            .ends_with("<iq type='result' id='polyhub-refused'/>"));
    }

    #[test]
    fn comments_and_processing_instructions_in_stanzas_are_refused() {
        for inner in ["<!-- hi -->", "<?pi x?>", "<!DOCTYPE x>"] {
            let (out, why) = whole(&format!(
                "{HEADER}<message><body>a</body>{inner}</message><presence/>"
            ));
            assert_eq!(why, vec![Refusal::Malformed], "{inner}");
            assert_eq!(out, format!("{HEADER}<message/><presence/>"));
        }
        // At stream level they are the parser's business.
        let xml = format!("{HEADER}<!-- c --><presence/>");
        assert_eq!(whole(&xml), (xml.clone(), vec![]));
    }

    #[test]
    fn bytes_that_are_not_xml_are_an_error_not_a_panic() {
        let mut g = StanzaGuard::new(Limits::default());
        let mut out = Vec::new();
        let r = g.feed(
            format!("{HEADER}<message a=b/>").as_bytes(),
            &mut out,
            &mut |_| {},
        );
        assert!(r.is_err());
        let mut g = StanzaGuard::new(Limits::default());
        assert!(g.feed(b"</x>", &mut out, &mut |_| {}).is_err());
    }
}
