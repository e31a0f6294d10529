//! TLS for the listeners: the certificate chain and private key from PEM files, served with
//! rustls (ring), offering HTTP/2 and HTTP/1.1 by ALPN; with a client CA, clients are asked
//! for certificates (mTLS), and those that show one it signed are named by it (a tenant's
//! `client_cert_sha256`); clients without one are still served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the TLS certificate chain {path}: {source}")]
    Certificate { path: PathBuf, source: tokio_rustls::rustls::pki_types::pem::Error },
    #[error("reading the TLS private key {path}: {source}")]
    Key { path: PathBuf, source: tokio_rustls::rustls::pki_types::pem::Error },
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
    #[error("reading the client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// An acceptor for the certificate chain in `cert` and the private key in `key` (PEM),
/// asking clients for certificates signed by the CAs in `client_ca` (PEM), if given.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate { path: cert.to_path_buf(), source })?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::Key { path: key.to_path_buf(), source })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let bad = |reason: String| TlsError::ClientCa { path: path.to_path_buf(), reason };
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                roots.add(certificate.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
