//! Mosquitto's password file (`mosquitto_passwd`): one `user:hash` line per
//! user, `#` comments. Two hash formats, as Mosquitto 2 reads them
//! (`src/security_default.c`, `src/password_mosq.c`):
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 of the password, 64 bytes
//!   (Mosquitto 2's default, 101 iterations);
//! - `$6$SALT$HASH`: one SHA-512 of the password followed by the salt (not
//!   glibc's `crypt`), Mosquitto 1.6's default.
//!
//! SALT is 12 bytes and HASH 64, both base64.

use std::io::Write;
use std::path::Path;

use ahash::AHashMap;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::AuthError;

/// Salt length `mosquitto_passwd` writes and Mosquitto requires.
pub const SALT_LEN: usize = 12;
/// Length of a SHA-512 (and of the PBKDF2 output).
pub const HASH_LEN: usize = 64;
/// PBKDF2 iterations `mosquitto_passwd` uses by default (Mosquitto 2.0's
/// `PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;

/// Base64 as OpenSSL writes it (padded), read with or without padding.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// One user's stored password.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 {
        /// The salt.
        salt: [u8; SALT_LEN],
        /// The digest.
        hash: [u8; HASH_LEN],
    },
    /// `$7$`: PBKDF2-HMAC-SHA512(password, salt, iterations).
    Pbkdf2 {
        /// Iteration count.
        iterations: u32,
        /// The salt.
        salt: [u8; SALT_LEN],
        /// The derived key.
        hash: [u8; HASH_LEN],
    },
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash($6$)"),
            PasswordHash::Pbkdf2 { iterations, .. } => {
                write!(f, "PasswordHash($7$, {iterations} iterations)")
            }
        }
    }
}

fn decode<const N: usize>(field: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = B64
        .decode(field)
        .map_err(|e| format!("the {what} `{field}` is not base64: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "the {what} is {} bytes long, Mosquitto's are {N} bytes",
            b.len()
        )
    })
}

impl PasswordHash {
    /// Parses the part after `user:`.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let Some(rest) = text.strip_prefix('$') else {
            return Err(
                "the password is not hashed (a hash starts with `$7$` or `$6$`); hash the file \
                 with `mosquitto_passwd -U FILE`, or set each user with `polyhub passwd FILE USER`"
                    .into(),
            );
        };
        let fields: Vec<&str> = rest.split('$').collect();
        match fields.as_slice() {
            ["7", iterations, salt, hash] => {
                let iterations: u32 = iterations.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    format!("`{iterations}` is not an iteration count (a whole number, at least 1)")
                })?;
                Ok(PasswordHash::Pbkdf2 {
                    iterations,
                    salt: decode(salt, "salt")?,
                    hash: decode(hash, "hash")?,
                })
            }
            ["6", salt, hash] => Ok(PasswordHash::Sha512 {
                salt: decode(salt, "salt")?,
                hash: decode(hash, "hash")?,
            }),
            ["7", ..] => Err("a `$7$` hash has the form $7$ITERATIONS$SALT$HASH".into()),
            ["6", ..] => Err("a `$6$` hash has the form $6$SALT$HASH".into()),
            [kind, ..] => Err(format!(
                "unknown hash type `${kind}$`; Mosquitto's are `$7$` (PBKDF2-SHA512) and `$6$` (SHA-512)"
            )),
            [] => Err("empty hash".into()),
        }
    }

    /// A new `$7$` hash of `password` with a random salt.
    pub fn new_pbkdf2(password: &[u8], iterations: u32) -> Result<PasswordHash, String> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
        Ok(PasswordHash::Pbkdf2 {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` is this hash's password (compared in constant time).
    pub fn verify(&self, password: &[u8]) -> bool {
        let mut computed = [0u8; HASH_LEN];
        let stored = match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                computed.copy_from_slice(&d.finalize());
                hash
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut computed);
                hash
            }
        };
        bool::from(computed.ct_eq(stored))
    }

    /// The hash as written after `user:`.
    pub fn encode(&self) -> String {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
        }
    }
}

/// Every user of a password file.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: AHashMap<Box<str>, PasswordHash>,
}

/// The `user` and hash fields of a line, as Mosquitto splits it: at the
/// first `:`, the hash up to the next `:`, both trimmed of white space.
/// `None` for comments and lines without `:`.
fn split_line(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let (user, rest) = line.split_once(':')?;
    let hash = rest.split(':').next().unwrap_or("");
    Some((user.trim(), hash.trim()))
}

impl PasswordFile {
    /// Parses a password file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<PasswordFile, AuthError> {
        let mut users = AHashMap::new();
        let mut lines_of: AHashMap<Box<str>, usize> = AHashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let err = |message: String| AuthError::Line {
                file: file.to_owned(),
                line: n,
                message,
            };
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = split_line(line) else {
                return Err(err(
                    "expected `user:hash` (a `mosquitto_passwd` line) or a `#` comment".into(),
                ));
            };
            if user.is_empty() {
                return Err(err("empty user name before `:`".into()));
            }
            if hash.is_empty() {
                return Err(err(format!("user `{user}` has no password hash after `:`")));
            }
            let parsed =
                PasswordHash::parse(hash).map_err(|m| err(format!("user `{user}`: {m}")))?;
            if let Some(first) = lines_of.insert(Box::from(user), n) {
                return Err(err(format!(
                    "user `{user}` is already on line {first}; keep one line per user"
                )));
            }
            users.insert(Box::from(user), parsed);
        }
        Ok(PasswordFile { users })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            file: file.clone(),
            what: "password file",
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// The user's hash.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Checks a user name for a password file line, as `mosquitto_passwd` does.
pub fn check_username(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("the user name is empty".into());
    }
    if user.len() > 65_535 {
        return Err("the user name is longer than 65535 bytes".into());
    }
    if user.chars().any(char::is_control) {
        return Err("the user name holds a control character".into());
    }
    if user.contains(':') {
        return Err("the user name holds `:`, which separates user and hash".into());
    }
    if user.trim() != user || user.starts_with('#') {
        return Err(
            "the user name starts with `#` or white space, or ends with white space, \
             which Mosquitto would not read back"
                .into(),
        );
    }
    Ok(())
}

/// Writes `user`'s line with a new `$7$` hash of `password` into the
/// password file at `path` (created, readable by its owner only, if
/// missing), replacing the user's old line and keeping every other line.
/// The file is replaced atomically. Returns whether the user was there.
pub fn set_password(
    path: &Path,
    user: &str,
    password: &[u8],
    iterations: u32,
) -> Result<bool, AuthError> {
    let file = path.display().to_string();
    let bad = |message: String| AuthError::Invalid {
        file: file.clone(),
        message,
    };
    check_username(user).map_err(bad)?;
    if iterations == 0 {
        return Err(bad("the iteration count must be at least 1".into()));
    }
    let old = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AuthError::Read {
                file,
                what: "password file",
                source,
            })
        }
    };
    let line = format!(
        "{user}:{}",
        PasswordHash::new_pbkdf2(password, iterations)
            .map_err(bad)?
            .encode()
    );
    let mut out = String::new();
    let mut found = false;
    for l in old.as_deref().unwrap_or("").lines() {
        if split_line(l).is_some_and(|(u, _)| u == user) {
            if !found {
                out.push_str(&line);
                out.push('\n');
            }
            found = true;
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(&line);
        out.push('\n');
    }
    write_atomically(path, out.as_bytes(), old.is_none()).map_err(|source| AuthError::Write {
        file: path.display().to_string(),
        source,
    })?;
    Ok(found)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`. A new file is readable by its owner only; an existing one keeps
/// its permissions.
fn write_atomically(path: &Path, bytes: &[u8], new: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "passwords".into());
    let tmp = dir.join(format!(".{name}.polyhub-{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if !new {
            let perms = std::fs::metadata(path)?.permissions();
            std::fs::set_permissions(&tmp, perms)?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `$6$` hash computed from its definition.
    fn sha512_line(password: &str, salt: &[u8; SALT_LEN]) -> String {
        let mut d = Sha512::new();
        d.update(password.as_bytes());
        d.update(salt);
        format!("$6${}${}", B64.encode(salt), B64.encode(d.finalize()))
    }

    #[test]
    fn pbkdf2_hashes_round_trip_and_verify() {
        let h = PasswordHash::new_pbkdf2(b"secret", 101).unwrap();
        let text = h.encode();
        assert!(text.starts_with("$7$101$"), "{text}");
        let back = PasswordHash::parse(&text).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(b"secret"));
        assert!(!back.verify(b"Secret"));
        assert!(!back.verify(b""));
    }

    #[test]
    fn sha512_hashes_are_one_digest_of_password_then_salt() {
        let line = sha512_line("pw", b"abcdefghijkl");
        let h = PasswordHash::parse(&line).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pw "));
        assert_eq!(h.encode(), line);
    }

    #[test]
    fn a_known_pbkdf2_vector_verifies() {
        // PBKDF2-HMAC-SHA512("password", "salt", 1), RFC 6070-style vector
        // (first bytes 867f70cf1ade02cf…), with a 12-byte salt instead.
        let salt = *b"saltsaltsalt";
        let mut expected = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"password", &salt, 2, &mut expected);
        let text = format!("$7$2${}${}", B64.encode(salt), B64.encode(expected));
        assert!(PasswordHash::parse(&text).unwrap().verify(b"password"));
        let mut one = [0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"password", b"salt", 1, &mut one);
        assert_eq!(&one[..4], &[0x86, 0x7f, 0x70, 0xcf]);
    }

    #[test]
    fn bad_lines_name_the_line_and_what_is_wrong() {
        let ok = PasswordHash::new_pbkdf2(b"x", 1).unwrap().encode();
        for (text, line, needle) in [
            ("u:plain\n".to_owned(), 1, "not hashed"),
            (format!("# c\n\nu:{ok}\nu:{ok}\n"), 4, "already on line 3"),
            ("u:$5$abc$def\n".into(), 1, "unknown hash type `$5$`"),
            ("u:$7$0$AAAAAAAAAAAAAAAA$x\n".into(), 1, "iteration count"),
            ("u:$7$10$AAAA$AAAA\n".into(), 1, "salt is 3 bytes"),
            ("u:$7$10$!!!$AAAA\n".into(), 1, "not base64"),
            ("u:$6$AAAAAAAAAAAAAAAA\n".into(), 1, "$6$SALT$HASH"),
            ("garbage\n".into(), 1, "expected `user:hash`"),
            (":abc\n".into(), 1, "empty user name"),
            ("u:\n".into(), 1, "no password hash"),
        ] {
            let e = PasswordFile::parse(&text, "pw").unwrap_err().to_string();
            assert!(e.starts_with(&format!("pw:{line}: ")), "{text:?}: {e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn lines_are_split_and_trimmed_as_mosquitto_does() {
        let h = PasswordHash::new_pbkdf2(b"x", 1).unwrap().encode();
        let f = PasswordFile::parse(&format!("#comment\n  alice : {h} :extra\r\n"), "pw").unwrap();
        assert!(f.get("alice").unwrap().verify(b"x"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn set_password_replaces_one_line_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        assert!(!set_password(&path, "a", b"1", 101).unwrap());
        assert!(!set_password(&path, "b", b"2", 101).unwrap());
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(set_password(&path, "a", b"3", 101).unwrap());
        let after = std::fs::read_to_string(&path).unwrap();
        assert_eq!(after.lines().count(), 2);
        assert_eq!(after.lines().nth(1), before.lines().nth(1), "b kept");
        let f = PasswordFile::load(&path).unwrap();
        assert!(f.get("a").unwrap().verify(b"3"));
        assert!(f.get("b").unwrap().verify(b"2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = set_password(&path, "x:y", b"1", 101)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`:`"), "{e}");
    }
}
