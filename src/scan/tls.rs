//! TLS for `https://` trackers: the client configuration (rustls with the *ring* provider,
//! the Mozilla root store from `webpki-roots`, plus the operator's extra CA files from
//! `tracker.ca_files`) and the error text discovery records when a TLS exchange fails.
//!
//! Certificates are always verified (there is no "insecure" mode); the server name is the
//! tracker URL's host (SNI for a DNS name; an IP address literal is checked against the
//! certificate's IP addresses and sends no SNI, as RFC 6066 asks).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The config key the CA files come from (named in every error).
pub const CA_FILES_KEY: &str = "tracker.ca_files";

/// Why the TLS configuration could not be built. Every message names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("{CA_FILES_KEY}: cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{CA_FILES_KEY}: {} is not a PEM file of certificates: {message}", path.display())]
    BadPem { path: PathBuf, message: String },
    #[error("{CA_FILES_KEY}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{CA_FILES_KEY}: {}: certificate {index} is not a usable CA certificate: {message}", path.display())]
    BadCertificate {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Reads every certificate of one PEM file (other PEM sections, e.g. a key, are skipped).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let bytes = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, pem::Error>>()
        .map_err(|e| TlsConfigError::BadPem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The client configuration for `https://` trackers: the web PKI roots plus every
/// certificate of every file in `ca_files`.
pub fn client_config(ca_files: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in ca_files {
        for (index, cert) in read_ca_file(path)?.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::BadCertificate {
                    path: path.clone(),
                    index: index + 1,
                    message: e.to_string(),
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The text recorded for a failed TLS exchange: `tls: <rustls error>` (e.g.
/// "tls: invalid peer certificate: UnknownIssuer"), `tls <stage>: timed out` when a socket
/// timeout (the request's deadline) ran out, or `tls <stage>: <I/O error>` for another
/// socket error (reset, refused) during the TLS exchange.
pub fn error_text(stage: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => format!("tls: {tls}"),
        None if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            format!("tls {stage}: timed out")
        }
        None => format!("tls {stage}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    fn test_ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "swarmscan test CA");
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn no_files_gives_the_web_pki_roots() {
        let c = client_config(&[]).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);
    }

    #[test]
    fn good_ca_file_is_loaded() {
        let pem = test_ca_pem();
        // A second certificate and an unrelated PEM section in the same file are fine.
        let both = format!(
            "{pem}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}",
            test_ca_pem()
        );
        let (_dir, path) = temp_file("ca.pem", both.as_bytes());
        assert_eq!(read_ca_file(&path).unwrap().len(), 2);
        client_config(std::slice::from_ref(&path)).unwrap();
    }

    #[test]
    fn missing_file_names_key_and_file() {
        let path = PathBuf::from("/nonexistent/swarmscan-ca.pem");
        let e = client_config(std::slice::from_ref(&path)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, TlsConfigError::Read { .. }), "{text}");
        assert!(
            text.starts_with("tracker.ca_files: cannot read /nonexistent/swarmscan-ca.pem:"),
            "{text}"
        );
    }

    #[test]
    fn not_a_pem_names_key_and_file() {
        let (_dir, path) = temp_file("ca.pem", b"this is not a certificate\n");
        let e = client_config(std::slice::from_ref(&path)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, TlsConfigError::NoCertificate { .. }), "{text}");
        assert!(
            text.contains("tracker.ca_files") && text.contains(&path.display().to_string()),
            "{text}"
        );
        // A PEM section whose base64 is broken.
        let (_dir, path) = temp_file(
            "bad.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        let e = client_config(std::slice::from_ref(&path)).unwrap_err();
        assert!(matches!(e, TlsConfigError::BadPem { .. }), "{e}");
        assert!(e.to_string().contains("tracker.ca_files"), "{e}");
        // Valid PEM framing around bytes that are no certificate.
        let (_dir, path) = temp_file(
            "junk.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = client_config(std::slice::from_ref(&path)).unwrap_err();
        assert!(
            matches!(e, TlsConfigError::BadCertificate { index: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn error_text_names_tls() {
        let cert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            error_text("handshake", &cert),
            "tls: invalid peer certificate: UnknownIssuer"
        );
        // A socket read timeout shows as WouldBlock on Linux.
        let io = std::io::Error::from(std::io::ErrorKind::WouldBlock);
        assert_eq!(error_text("handshake", &io), "tls handshake: timed out");
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(error_text("receive", &reset), "tls receive: reset by peer");
    }
}
