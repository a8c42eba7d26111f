//! Identity and access (`[auth]`): Mosquitto's password file and ACL file,
//! read as Mosquitto 2 reads them and applied with its semantics, so that a
//! Mosquitto user's files work unchanged and a device has the same rights
//! over every protocol. Adapters reach it through
//! [`polyhub_sdk::AdapterContext::authenticate`] and
//! [`polyhub_sdk::AdapterContext::authorize`].
//!
//! [`Auth`] is cheap to clone and reloadable: [`Auth::reload`] re-reads both
//! files and swaps them in at once, keeping the old ones when either is
//! wrong.

pub mod acl;
pub mod filter;
pub mod password;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use polyhub_sdk::{Access, Action, Denied, Identity, Refused};
use thiserror::Error;

pub use acl::Acl;
pub use password::{PasswordFile, PasswordHash};

/// Why a password or ACL file cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The file could not be read.
    #[error("{file}: cannot read the {what}: {source}")]
    Read {
        /// The path.
        file: String,
        /// Which file (`password file`, `ACL file`).
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("{file}:{line}: {message}")]
    Line {
        /// The path.
        file: String,
        /// The line number, from 1.
        line: usize,
        /// What is wrong and what would be valid.
        message: String,
    },
    /// Something else is wrong with a request about the file.
    #[error("{file}: {message}")]
    Invalid {
        /// The path.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The file could not be written.
    #[error("{file}: cannot write: {source}")]
    Write {
        /// The path.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where the files are and whether anonymous clients are let in
/// (`[auth]`, with paths resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// The password file (`mosquitto_passwd` format).
    pub password_file: Option<PathBuf>,
    /// The ACL file (Mosquitto `acl_file` format).
    pub acl_file: Option<PathBuf>,
    /// Whether clients without a user name are let in.
    pub allow_anonymous: bool,
}

/// The files as last read.
#[derive(Debug, Default)]
struct Loaded {
    passwords: Option<PasswordFile>,
    acl: Option<Acl>,
}

/// The hub's users and ACL. Clones share one state.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: AuthSettings,
    loaded: RwLock<Arc<Loaded>>,
}

/// A `$7$` hash checked against when the user does not exist, so that an
/// unknown user costs as long as a wrong password.
fn decoy() -> &'static PasswordHash {
    static DECOY: std::sync::OnceLock<PasswordHash> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| PasswordHash::Pbkdf2 {
        iterations: password::DEFAULT_ITERATIONS,
        salt: [0; password::SALT_LEN],
        hash: [0; password::HASH_LEN],
    })
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Users in the password file (0 without one).
    pub users: usize,
    /// Users with rules of their own in the ACL file (0 without one).
    pub acl_users: usize,
}

impl Auth {
    /// Reads both files; an error names the file, the line and the problem.
    pub fn load(settings: AuthSettings) -> Result<Auth, AuthError> {
        let loaded = Self::read(&settings)?;
        Ok(Auth {
            inner: Arc::new(Inner {
                settings,
                loaded: RwLock::new(Arc::new(loaded)),
            }),
        })
    }

    fn read(settings: &AuthSettings) -> Result<Loaded, AuthError> {
        Ok(Loaded {
            passwords: settings
                .password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()?,
            acl: settings.acl_file.as_deref().map(Acl::load).transpose()?,
        })
    }

    /// Re-reads both files and swaps them in together. On an error the old
    /// users and rules stay in force and the error is returned.
    pub fn reload(&self) -> Result<ReloadSummary, AuthError> {
        let loaded = Self::read(&self.inner.settings)?;
        let summary = summary(&loaded);
        *self.inner.loaded.write() = Arc::new(loaded);
        Ok(summary)
    }

    /// What is loaded now.
    pub fn summary(&self) -> ReloadSummary {
        summary(&self.inner.loaded.read())
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &AuthSettings {
        &self.inner.settings
    }

    /// Checks a user name and password, as Mosquitto does: without a user
    /// name, anonymous if `allow_anonymous`; with one, it must be in the
    /// password file with that password. Without a password file, anyone is
    /// let in as the user they claim when `allow_anonymous` is on, and
    /// nobody otherwise.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, Refused> {
        let Some(user) = username else {
            return if self.inner.settings.allow_anonymous {
                Ok(Identity::anonymous())
            } else {
                Err(Refused::AnonymousNotAllowed)
            };
        };
        let loaded = self.inner.loaded.read().clone();
        let Some(passwords) = &loaded.passwords else {
            return if self.inner.settings.allow_anonymous {
                Ok(Identity::user(user))
            } else {
                Err(Refused::AnonymousNotAllowed)
            };
        };
        let Some(password) = password else {
            return Err(Refused::MissingPassword);
        };
        match passwords.get(user) {
            Some(hash) if hash.verify(password) => Ok(Identity::user(user)),
            Some(_) => Err(Refused::WrongPassword),
            None => {
                decoy().verify(password);
                Err(Refused::UnknownUser)
            }
        }
    }

    /// Whether `identity`, connected as `client_id`, may do `action` on
    /// `topic` (a topic filter for [`Action::Subscribe`]). Without an ACL
    /// file everything is allowed, except publishing on `$SYS`.
    pub fn authorize(
        &self,
        identity: &Identity,
        client_id: &str,
        topic: &str,
        action: Action,
    ) -> Result<(), Denied> {
        reserved(topic, action)?;
        let loaded = self.inner.loaded.read();
        match &loaded.acl {
            None => Ok(()),
            Some(acl) => acl.check(identity, client_id, topic, action),
        }
    }
}

fn summary(loaded: &Loaded) -> ReloadSummary {
    ReloadSummary {
        users: loaded.passwords.as_ref().map_or(0, PasswordFile::len),
        acl_users: loaded.acl.as_ref().map_or(0, Acl::user_count),
    }
}

/// Mosquitto's rules for `$` topics, before any ACL: nobody publishes on
/// `$SYS` (but the bridge-state topics `$SYS/broker/connection/+/state`),
/// and `$share/…` is only a subscription prefix.
fn reserved(topic: &str, action: Action) -> Result<(), Denied> {
    if topic.starts_with("$SYS") {
        if action == Action::Write && !filter::matches("$SYS/broker/connection/+/state", topic) {
            return Err(Denied::Reserved);
        }
    } else if topic.starts_with("$share") && action != Action::Subscribe {
        return Err(Denied::Reserved);
    }
    Ok(())
}

impl Access for Auth {
    fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, Refused> {
        Auth::authenticate(self, username, password)
    }

    fn authorize(
        &self,
        identity: &Identity,
        client_id: &str,
        topic: &str,
        action: Action,
    ) -> Result<(), Denied> {
        Auth::authorize(self, identity, client_id, topic, action)
    }
}

/// Resolves a path from the config file against the config's directory.
pub fn resolve(path: &Path, base_dir: Option<&Path>) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, anonymous: bool) -> AuthSettings {
        AuthSettings {
            password_file: Some(dir.join("pw")),
            acl_file: Some(dir.join("acl")),
            allow_anonymous: anonymous,
        }
    }

    #[test]
    fn users_log_in_with_their_password_only() {
        let dir = tempfile::tempdir().unwrap();
        password::set_password(&dir.path().join("pw"), "u1", b"pw1", 101).unwrap();
        std::fs::write(dir.path().join("acl"), "user u1\ntopic a\n").unwrap();
        let auth = Auth::load(settings(dir.path(), false)).unwrap();
        assert_eq!(
            auth.authenticate(Some("u1"), Some(b"pw1")),
            Ok(Identity::user("u1"))
        );
        assert_eq!(
            auth.authenticate(Some("u1"), Some(b"no")),
            Err(Refused::WrongPassword)
        );
        assert_eq!(
            auth.authenticate(Some("u1"), None),
            Err(Refused::MissingPassword)
        );
        assert_eq!(
            auth.authenticate(Some("u117"), Some(b"pw1")),
            Err(Refused::UnknownUser)
        );
        assert_eq!(
            auth.authenticate(None, None),
            Err(Refused::AnonymousNotAllowed)
        );
        let open = Auth::load(settings(dir.path(), true)).unwrap();
        assert_eq!(open.authenticate(None, None), Ok(Identity::anonymous()));
        // A user name still needs its password.
        assert!(open.authenticate(Some("u117"), Some(b"x")).is_err());
    }

    #[test]
    fn without_a_password_file_claimed_names_are_taken_when_anonymous_is_on() {
        let open = Auth::load(AuthSettings {
            password_file: None,
            acl_file: None,
            allow_anonymous: true,
        })
        .unwrap();
        assert_eq!(open.authenticate(Some("u"), None), Ok(Identity::user("u")));
        assert!(open
            .authorize(&Identity::anonymous(), "c", "a/b", Action::Write)
            .is_ok());
        assert_eq!(
            open.authorize(&Identity::anonymous(), "c", "$SYS/x", Action::Write),
            Err(Denied::Reserved)
        );
        assert!(open
            .authorize(
                &Identity::anonymous(),
                "c",
                "$SYS/broker/connection/b/state",
                Action::Write
            )
            .is_ok());
    }

    #[test]
    fn a_failed_reload_keeps_the_old_rules() {
        let dir = tempfile::tempdir().unwrap();
        password::set_password(&dir.path().join("pw"), "u1", b"pw1", 101).unwrap();
        std::fs::write(dir.path().join("acl"), "user u1\ntopic a\n").unwrap();
        let auth = Auth::load(settings(dir.path(), false)).unwrap();
        let u1 = Identity::user("u1");
        assert!(auth.authorize(&u1, "c", "a", Action::Write).is_ok());
        std::fs::write(dir.path().join("acl"), "user u1\ntopic b\nbogus\n").unwrap();
        let e = auth.reload().unwrap_err().to_string();
        assert!(e.ends_with("acl:3: unknown keyword `bogus`; expected `user NAME`, `topic [ACCESS] FILTER` or `pattern [ACCESS] FILTER`"), "{e}");
        assert!(
            auth.authorize(&u1, "c", "a", Action::Write).is_ok(),
            "old rules"
        );
        std::fs::write(dir.path().join("acl"), "user u1\ntopic b\n").unwrap();
        password::set_password(&dir.path().join("pw"), "u2", b"pw2", 101).unwrap();
        let clone = auth.clone();
        assert_eq!(
            auth.reload().unwrap(),
            ReloadSummary {
                users: 2,
                acl_users: 1
            }
        );
        assert!(clone.authorize(&u1, "c", "a", Action::Write).is_err());
        assert!(clone.authorize(&u1, "c", "b", Action::Write).is_ok());
        assert!(clone.authenticate(Some("u2"), Some(b"pw2")).is_ok());
    }
}
