//! CoAP over DTLS 1.2 with pre-shared keys (RFC 7252 §9.1.3.1): the
//! `psk_file` of identities and keys, and one OpenSSL session per peer
//! address, fed the peer's datagrams from memory (no socket of its own), so
//! that the plain server's request handling serves the decrypted messages.
//!
//! Bounds: at most `max_dtls_sessions` sessions; a handshake not finished
//! within `dtls_handshake_timeout_secs`, or a session silent for
//! `dtls_idle_timeout_secs`, is dropped. The hub does not retransmit its
//! handshake flights on a timer: a client whose flight was lost
//! retransmits, and OpenSSL answers that with its own flight again. A ClientHello gets a
//! HelloVerifyRequest (a stateless cookie) first, so a spoofed source
//! address gets no more than one small datagram back.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslStream, SslVersion,
};
use parking_lot::Mutex;
use polyhub_sdk::{AdapterContext, Identity, Refused};
use tracing::debug;

/// Longest key in a `psk_file` (bytes).
pub const MAX_KEY: usize = 64;

/// DTLS record MTU: fits an IPv6 minimum-MTU path with room for headers.
const MTU: u32 = 1200;

/// The identities and keys of a `psk_file`: one `identity:key` per line,
/// the key the bytes after the first `:` (as libcoap's `-k KEY` takes them);
/// blank lines and lines starting with `#` are ignored.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PskKeys {
    keys: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for PskKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("PskKeys")
            .field("identities", &self.keys.len())
            .finish()
    }
}

impl PskKeys {
    /// Parses a `psk_file`'s text; the error names the line.
    pub fn parse(text: &str) -> Result<PskKeys, String> {
        let mut keys = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((identity, key)) = line.split_once(':') else {
                return Err(format!("line {n}: expected `identity:key`"));
            };
            if identity.is_empty() {
                return Err(format!("line {n}: empty identity"));
            }
            if key.is_empty() || key.len() > MAX_KEY {
                return Err(format!("line {n}: the key must be 1 to {MAX_KEY} bytes"));
            }
            if keys
                .insert(identity.to_owned(), key.as_bytes().to_vec())
                .is_some()
            {
                return Err(format!("line {n}: identity `{identity}` appears twice"));
            }
        }
        Ok(PskKeys { keys })
    }

    /// Reads and parses a `psk_file`.
    pub fn load(path: &Path) -> Result<PskKeys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        PskKeys::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key of `identity`.
    pub fn key(&self, identity: &str) -> Option<&[u8]> {
        self.keys.get(identity).map(Vec::as_slice)
    }

    /// How many identities.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The bounds of the DTLS sessions (see `CoapConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsLimits {
    /// Most sessions (handshaking or established) at once.
    pub max_sessions: usize,
    /// Longest handshake.
    pub handshake_timeout: Duration,
    /// Longest silence of an established session.
    pub idle_timeout: Duration,
}

/// The memory "socket" of one session: the datagram being read, and the
/// records OpenSSL wrote, to be sent by the caller.
#[derive(Debug, Default)]
struct Datagrams {
    incoming: Option<Vec<u8>>,
    outgoing: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.incoming.take() {
            Some(d) => {
                // A datagram is read whole or not at all (a longer one is cut,
                // and OpenSSL then drops the damaged record).
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Session {
    stream: SslStream<Datagrams>,
    /// The PSK identity, once the handshake is done.
    identity: Option<Identity>,
    started: Instant,
    last_seen: Instant,
}

/// What one datagram from a peer produced.
#[derive(Debug, Default)]
pub struct Opened {
    /// Records to send back to the peer (handshake flights, alerts).
    pub replies: Vec<Vec<u8>>,
    /// Decrypted CoAP messages.
    pub messages: Vec<Vec<u8>>,
}

/// The DTLS sessions of one listener, by peer address.
pub struct Sessions {
    ctx: AdapterContext,
    tls: SslContext,
    peer_index: openssl::ex_data::Index<Ssl, SocketAddr>,
    keys: Arc<PskKeys>,
    limits: DtlsLimits,
    map: Mutex<HashMap<SocketAddr, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("sessions", &self.map.lock().len())
            .field("limits", &self.limits)
            .finish()
    }
}

/// Why the DTLS server could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("DTLS setup: {0}")]
pub struct DtlsSetupError(#[from] ErrorStack);

impl Sessions {
    /// Sessions checked against `keys`, bounded by `limits`.
    pub fn new(
        ctx: AdapterContext,
        keys: Arc<PskKeys>,
        limits: DtlsLimits,
    ) -> Result<Sessions, DtlsSetupError> {
        let peer_index = Ssl::new_ex_index::<SocketAddr>()?;
        let mut b = SslContextBuilder::new(SslMethod::dtls_server())?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
        // PSK cipher suites only (no certificates); libcoap prefers CCM_8.
        b.set_cipher_list("PSK:!eNULL:!aNULL@STRENGTH")?;
        b.set_options(SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU);
        let (psk_keys, psk_ctx) = (keys.clone(), ctx.clone());
        b.set_psk_server_callback(move |ssl, identity, psk| {
            let name = identity.map(String::from_utf8_lossy).unwrap_or_default();
            match psk_keys.key(&name) {
                Some(key) if key.len() <= psk.len() => {
                    psk[..key.len()].copy_from_slice(key);
                    Ok(key.len())
                }
                _ => {
                    let peer = ssl.ex_data(peer_index).map(ToString::to_string);
                    psk_ctx.auth_denied(
                        &Identity::user(&name),
                        "connect",
                        "",
                        peer.as_deref(),
                        &Refused::UnknownUser,
                    );
                    // No key: the handshake fails (unknown_psk_identity).
                    Ok(0)
                }
            }
        });
        // A stateless cookie: HMAC of the peer's address under a key drawn
        // at start.
        let secret = {
            let mut s = [0u8; 32];
            openssl::rand::rand_bytes(&mut s)?;
            PKey::hmac(&s)?
        };
        let cookie = Arc::new(move |peer: Option<&SocketAddr>| -> Option<Vec<u8>> {
            let peer = peer?;
            let mut signer = Signer::new(MessageDigest::sha256(), &secret).ok()?;
            signer.update(peer.to_string().as_bytes()).ok()?;
            signer.sign_to_vec().ok()
        });
        let make = cookie.clone();
        b.set_cookie_generate_cb(move |ssl, out| {
            let c = make(ssl.ex_data(peer_index)).unwrap_or_default();
            let n = c.len().min(out.len());
            out[..n].copy_from_slice(&c[..n]);
            Ok(n)
        });
        b.set_cookie_verify_cb(move |ssl, got| {
            cookie(ssl.ex_data(peer_index)).is_some_and(|c| openssl::memcmp::eq(&c, got))
        });
        Ok(Sessions {
            ctx,
            tls: b.build(),
            peer_index,
            keys,
            limits,
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Sessions held (handshaking or established).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }

    /// The PSK identity of `peer`'s established session.
    pub fn identity(&self, peer: SocketAddr) -> Option<Identity> {
        self.map.lock().get(&peer).and_then(|s| s.identity.clone())
    }

    fn refuse(&self, reason: &'static str, peer: SocketAddr) {
        self.ctx.metrics().record_rejected(reason);
        debug!(adapter = %self.ctx.name(), peer = %peer, reason, "Refused a DTLS peer.");
    }

    /// Feeds one datagram from `peer` to its session (a new one for a
    /// handshake record when there is room).
    pub fn open(&self, peer: SocketAddr, datagram: &[u8], now: Instant) -> Opened {
        let mut out = Opened::default();
        let mut map = self.map.lock();
        if !map.contains_key(&peer) {
            // Content type 22: a handshake record (the ClientHello).
            if datagram.first() != Some(&22) {
                self.refuse("dtls_no_session", peer);
                return out;
            }
            if map.len() >= self.limits.max_sessions {
                self.expire_locked(&mut map, now);
            }
            if map.len() >= self.limits.max_sessions {
                self.refuse("too_many_sessions", peer);
                return out;
            }
            match self.new_session(peer, now) {
                Ok(s) => {
                    map.insert(peer, s);
                }
                Err(e) => {
                    self.ctx.metrics().record_error();
                    debug!(adapter = %self.ctx.name(), error = %e, "Cannot start a DTLS session.");
                    return out;
                }
            }
        }
        let Some(s) = map.get_mut(&peer) else {
            return out;
        };
        s.last_seen = now;
        s.stream.get_mut().incoming = Some(datagram.to_vec());
        let mut failed = None;
        if s.identity.is_none() {
            match s.stream.accept() {
                Ok(()) => {
                    let name = s
                        .stream
                        .ssl()
                        .psk_identity()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    debug!(adapter = %self.ctx.name(), peer = %peer, identity = %name, "DTLS session established.");
                    s.identity = Some(Identity::user(&name));
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if failed.is_none() && s.identity.is_some() {
            // A record's plaintext is never longer than its datagram.
            let mut buf = vec![0u8; datagram.len()];
            loop {
                match s.stream.ssl_read(&mut buf) {
                    Ok(n) => out.messages.push(buf[..n].to_vec()),
                    Err(e) if e.code() == ErrorCode::WANT_READ => break,
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                        // close_notify: the peer ended the session.
                        failed = Some(String::new());
                        break;
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        out.replies = std::mem::take(&mut s.stream.get_mut().outgoing);
        if let Some(why) = failed {
            let established = s.identity.is_some();
            let identity = s
                .stream
                .ssl()
                .psk_identity()
                .map(|i| String::from_utf8_lossy(i).into_owned());
            map.remove(&peer);
            if why.is_empty() {
                return out;
            }
            if established {
                self.refuse("dtls_bad_record", peer);
            } else {
                self.refuse("dtls_handshake_failed", peer);
                // A known identity whose handshake fails (an unknown one was
                // counted by the callback).
                if let Some(name) = identity.filter(|n| self.keys.key(n).is_some()) {
                    self.ctx.auth_denied(
                        &Identity::user(&name),
                        "connect",
                        "",
                        Some(&peer.to_string()),
                        &Refused::WrongPassword,
                    );
                }
            }
            debug!(adapter = %self.ctx.name(), peer = %peer, error = %why, "DTLS session failed.");
        }
        out
    }

    fn new_session(&self, peer: SocketAddr, now: Instant) -> Result<Session, ErrorStack> {
        let mut ssl = Ssl::new(&self.tls)?;
        ssl.set_ex_data(self.peer_index, peer);
        ssl.set_mtu(MTU)?;
        ssl.set_accept_state();
        let stream = SslStream::new(ssl, Datagrams::default())?;
        Ok(Session {
            stream,
            identity: None,
            started: now,
            last_seen: now,
        })
    }

    /// Encrypts a CoAP message for `peer`'s established session: the
    /// records to send (none without a session).
    pub fn seal(&self, peer: SocketAddr, message: &[u8]) -> Vec<Vec<u8>> {
        let mut map = self.map.lock();
        let Some(s) = map.get_mut(&peer).filter(|s| s.identity.is_some()) else {
            return Vec::new();
        };
        if let Err(e) = s.stream.ssl_write(message) {
            debug!(adapter = %self.ctx.name(), peer = %peer, error = %e, "DTLS write failed.");
            map.remove(&peer);
            return Vec::new();
        }
        std::mem::take(&mut s.stream.get_mut().outgoing)
    }

    /// Drops handshakes past their timeout and sessions idle past theirs.
    pub fn expire(&self, now: Instant) {
        let mut map = self.map.lock();
        self.expire_locked(&mut map, now);
    }

    fn expire_locked(&self, map: &mut HashMap<SocketAddr, Session>, now: Instant) {
        let limits = self.limits;
        let mut timed_out = Vec::new();
        let mut idle = 0;
        map.retain(|peer, s| {
            if s.identity.is_none() {
                let keep = now.duration_since(s.started) < limits.handshake_timeout;
                if !keep {
                    let name = s
                        .stream
                        .ssl()
                        .psk_identity()
                        .map(|i| String::from_utf8_lossy(i).into_owned());
                    timed_out.push((*peer, name));
                }
                keep
            } else {
                let keep = now.duration_since(s.last_seen) < limits.idle_timeout;
                idle += usize::from(!keep);
                keep
            }
        });
        for (peer, name) in timed_out {
            self.refuse("dtls_handshake_timeout", peer);
            // DTLS drops a record it cannot decrypt without a word (RFC 6347
            // §4.1.2.7): a client with the wrong key sends a Finished the hub
            // never sees, and its handshake ends here. A known identity
            // whose handshake does not finish is counted as refused.
            if let Some(name) = name.filter(|n| self.keys.key(n).is_some()) {
                self.ctx.auth_denied(
                    &Identity::user(&name),
                    "connect",
                    "",
                    Some(&peer.to_string()),
                    &"DTLS handshake not finished (wrong key?)",
                );
            }
        }
        if idle > 0 {
            self.ctx
                .metrics()
                .add("dtls_sessions_idle_closed", idle as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_psk_file_holds_identities_and_keys() {
        let k = PskKeys::parse("# devices\nuser1:user1-secret\n\nuser2:a:b\r\n").unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k.key("user1"), Some(&b"user1-secret"[..]));
        // Only the first `:` separates.
        assert_eq!(k.key("user2"), Some(&b"a:b"[..]));
        assert_eq!(k.key("user3"), None);
        assert!(!format!("{k:?}").contains("secret"));
    }

    #[test]
    fn bad_psk_lines_are_named() {
        assert_eq!(
            PskKeys::parse("a:1\nnocolon\n").unwrap_err(),
            "line 2: expected `identity:key`"
        );
        assert!(PskKeys::parse(":k").unwrap_err().contains("empty identity"));
        assert!(PskKeys::parse("a:").unwrap_err().contains("1 to 64 bytes"));
        let long = format!("a:{}", "k".repeat(MAX_KEY + 1));
        assert!(PskKeys::parse(&long).is_err());
        assert!(PskKeys::parse("a:1\na:2").unwrap_err().contains("twice"));
    }
}
