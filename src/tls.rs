//! rustls settings shared by `https://` upstreams and `rediss://` (feature
//! `tls`): ring as the provider, roots and client certificates from PEM,
//! each mistake said in words a configuration error can carry.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Root certificates from a PEM holding one or more.
pub(crate) fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("invalid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid root certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the PEM holds no certificate".to_owned());
    }
    Ok(roots)
}

/// Client settings on ring's provider checking servers against `roots`,
/// presenting `identity` (a PEM certificate chain and its key's PEM) to
/// servers that ask for one.
pub(crate) fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(&[u8], &[u8])>,
) -> Result<ClientConfig, String> {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    let Some((chain, key)) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid client certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the client certificate PEM holds no certificate".to_owned());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("invalid client key PEM: {e}"))?;
    // rustls checks that the key is one it can sign with and that it
    // matches the certificate.
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("unusable client certificate: {e}"))
}
