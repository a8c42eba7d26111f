//! Who sent a CoAP request: the `u`, `p` and `c` Uri-Query items of plain
//! CoAP (user, password, client id; cleartext, for labs), or the PSK
//! identity of a DTLS session, and the client id `%c` ACL rules see.

use std::net::SocketAddr;

use polyhub_sdk::Identity;

/// The credentials and client id a request carries in its Uri-Query.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueryCredentials {
    /// `u=`: the user name.
    pub user: Option<String>,
    /// `p=`: the password.
    pub password: Option<String>,
    /// `c=`: the client id `%c` rules see.
    pub client: Option<String>,
}

impl QueryCredentials {
    /// Whether the request named a user or gave a password.
    pub fn any(&self) -> bool {
        self.user.is_some() || self.password.is_some()
    }
}

/// Takes `u=`, `p=` and `c=` out of a request's Uri-Query items; the other
/// items (`retain`, `qos`, `href`, `rt` …) are returned in order. A second
/// `u`, `p` or `c` replaces the first.
pub fn split_query(query: &[String]) -> (QueryCredentials, Vec<String>) {
    let mut creds = QueryCredentials::default();
    let mut rest = Vec::with_capacity(query.len());
    for q in query {
        match q.split_once('=') {
            Some(("u", v)) => creds.user = Some(v.to_owned()),
            Some(("p", v)) => creds.password = Some(v.to_owned()),
            Some(("c", v)) => creds.client = Some(v.to_owned()),
            _ => rest.push(q.clone()),
        }
    }
    (creds, rest)
}

/// The client id of a request: its `c=` item, else the peer's address
/// (`127.0.0.1:40000`), which the peer does not choose.
pub fn client_id(creds: &QueryCredentials, peer: SocketAddr) -> String {
    creds.client.clone().unwrap_or_else(|| peer.to_string())
}

/// Who a request comes from, as the ACL sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The user (or anonymous).
    pub identity: Identity,
    /// The client id for `%c` rules.
    pub client_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn credentials_are_taken_out_of_the_query() {
        let (c, rest) = split_query(&q(&["retain", "u=user1", "p=a=b", "qos=0", "c=dev42"]));
        assert_eq!(c.user.as_deref(), Some("user1"));
        // Only the first `=` separates: a password may hold `=`.
        assert_eq!(c.password.as_deref(), Some("a=b"));
        assert_eq!(c.client.as_deref(), Some("dev42"));
        assert_eq!(rest, q(&["retain", "qos=0"]));
        assert!(c.any());
    }

    #[test]
    fn without_credentials_the_client_id_is_the_peer_address() {
        let (c, rest) = split_query(&q(&["href=/ps/a*", "u"]));
        // `u` without `=` is not a user name.
        assert!(!c.any());
        assert_eq!(rest, q(&["href=/ps/a*", "u"]));
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(client_id(&c, peer), "127.0.0.1:40000");
        let (c, _) = split_query(&q(&["c=dev42"]));
        assert_eq!(client_id(&c, peer), "dev42");
    }
}
