//! TLS for adapters that connect out (feature `tls`): one way to trust a
//! server, for every adapter. The trusted roots are the system's (read by
//! `rustls-native-certs`) plus, when the config names one, a `ca_file` of
//! PEM certificates for a private CA. The crypto provider is aws-lc-rs, named
//! explicitly, so the adapter does not depend on which rustls providers the
//! rest of the binary enables.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
pub use tokio_rustls::rustls;

/// Why no TLS client configuration could be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The `ca_file` could not be read or holds no usable certificate.
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::CaFile { path, reason } => write!(f, "ca_file {}: {reason}", path.display()),
            TlsError::Config(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The certificates of a PEM `ca_file`; an error when the file cannot be
/// read, holds a bad PEM block, or holds no certificate at all.
pub fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The trusted roots: the system's plus those of `ca_file`.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        for cert in ca_certificates(path)? {
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: path.to_owned(),
                reason: format!("bad certificate: {e}"),
            })?;
        }
    }
    Ok(roots)
}

/// A client configuration trusting the system's roots plus `ca_file`, with
/// no client certificate.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let roots = roots(ca_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = std::env::temp_dir().join(format!("polyhub-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(e.to_string().contains("empty.pem: no certificate"), "{e}");
        let e = client_config(Some(&dir.join("absent.pem"))).unwrap_err();
        assert!(e.to_string().contains("absent.pem: cannot read it"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn system_roots_alone_make_a_config() {
        assert!(client_config(None).is_ok());
    }
}
