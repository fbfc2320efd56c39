//! TLS termination (features `server` and `tls`): the certificate and key
//! from PEM files, ALPN `h2` and `http/1.1`, and a certificate that can be
//! swapped while serving (new handshakes get the new one; connections
//! already open keep theirs).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::TlsConfig;

/// The certificate new handshakes get; swapped by a reload.
struct Resolver(ArcSwap<CertifiedKey>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A server's TLS: its files, the swappable certificate, the acceptor.
pub(crate) struct Tls {
    files: TlsConfig,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads `files` and builds the acceptor; `http2` offers ALPN `h2`.
    pub(crate) fn new(files: &TlsConfig, http2: bool) -> Result<Self, String> {
        let key = load(files)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(key)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Self {
            files: files.clone(),
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the files again and serves what they hold to new handshakes.
    /// On an error the certificate in use stays.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let key = load(&self.files)?;
        self.resolver.0.store(Arc::new(key));
        Ok(())
    }
}

/// The certificate chain and key in `files`, checked to belong together.
fn load(files: &TlsConfig) -> Result<CertifiedKey, String> {
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"));
    let chain = CertificateDer::pem_slice_iter(&read(&files.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid certificate PEM in `{}`: {e}", files.cert_file))?;
    if chain.is_empty() {
        return Err(format!("`{}` holds no certificate", files.cert_file));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key_file)?)
        .map_err(|e| format!("invalid private key PEM in `{}`: {e}", files.key_file))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unusable private key in `{}`: {e}", files.key_file))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(format!(
            "the key in `{}` does not match the certificate in `{}`: {e}",
            files.key_file, files.cert_file
        )),
    }
}
