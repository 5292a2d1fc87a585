//! TLS with rustls, configured from libpq's `ssl*` settings (feature `tls`).
//!
//! - `sslrootcert` (default `~/.postgresql/root.crt`): the certificate
//!   authorities to trust. If the file exists, the server's chain is checked
//!   against it in every mode that uses TLS, as libpq does.
//! - `sslmode=verify-full` also checks that the certificate names the host;
//!   `verify-ca` checks the chain only; `require` and `prefer` check nothing
//!   when there is no root certificate file.
//! - `sslcert` / `sslkey` (default `~/.postgresql/postgresql.crt` / `.key`):
//!   a client certificate, sent when the certificate file exists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{Env, Plan, SettingsError, SslMode};

/// Builds the connector for `plan`.
///
/// # Errors
///
/// A verifying `sslmode` without a root certificate file, a file that
/// cannot be read or parsed, a client certificate without its key, or a key
/// that others may read.
pub(crate) fn connector(plan: &Plan, env: &dyn Env) -> Result<MakeRustlsConnect, SettingsError> {
    let options = &plan.options;
    let home_file = |name: &str| env.home().map(|h| h.join(".postgresql").join(name));
    let file = |keyword: &str, default: &str| -> Option<PathBuf> {
        match options.get(keyword).filter(|v| !v.is_empty()) {
            Some(v) => Some(PathBuf::from(v)),
            None => home_file(default),
        }
    };
    if options.get("sslcrl").is_some_and(|v| !v.is_empty())
        || options.get("sslcrldir").is_some_and(|v| !v.is_empty())
    {
        return Err(SettingsError::new(
            "sslcrl and sslcrldir are not supported by pgtx",
        ));
    }
    // aws-lc-rs: rustls' default provider. Its ring provider is deprecated
    // (no post-quantum key exchange) as of rustls 0.23.48.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let root_file = file("sslrootcert", "root.crt").filter(|f| f.exists());
    let verifier: Arc<dyn ServerCertVerifier> = match root_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(&path, "root certificate")? {
                roots.add(cert).map_err(|e| {
                    SettingsError::new(format!(
                        "could not read root certificate file \"{}\": {e}",
                        path.display()
                    ))
                })?;
            }
            let full =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        SettingsError::new(format!(
                            "could not use root certificate file \"{}\": {e}",
                            path.display()
                        ))
                    })?;
            if plan.sslmode == SslMode::VerifyFull {
                full
            } else {
                Arc::new(ChainOnly(full))
            }
        }
        None if matches!(plan.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            let shown = file("sslrootcert", "root.crt")
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.postgresql/root.crt".into());
            return Err(SettingsError::new(format!(
                "root certificate file \"{shown}\" does not exist; either provide the file or \
                 change sslmode to disable server certificate verification"
            )));
        }
        None => Arc::new(NoVerification(provider.clone())),
    };

    let versions = protocol_versions(
        options.get("ssl_min_protocol_version"),
        options.get("ssl_max_protocol_version"),
    )?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| SettingsError::new(format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);

    let cert_file = file("sslcert", "postgresql.crt").filter(|f| f.exists());
    let mut config = match cert_file {
        Some(cert_path) => {
            let certs = read_certs(&cert_path, "certificate")?;
            let key_path = file("sslkey", "postgresql.key")
                .filter(|f| f.exists())
                .ok_or_else(|| {
                    SettingsError::new(format!(
                        "certificate present, but not private key file (certificate \"{}\")",
                        cert_path.display()
                    ))
                })?;
            check_key_permissions(&key_path)?;
            let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                SettingsError::new(format!(
                    "could not load private key file \"{}\": {e}",
                    key_path.display()
                ))
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                SettingsError::new(format!(
                    "certificate \"{}\" does not match private key file \"{}\": {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    if options.get("sslsni") == Some("0") {
        config.enable_sni = false;
    }
    Ok(MakeRustlsConnect::new(config))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            SettingsError::new(format!(
                "could not read {what} file \"{}\": {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(SettingsError::new(format!(
            "no certificate found in {what} file \"{}\"",
            path.display()
        )));
    }
    Ok(certs)
}

/// libpq's rule: a key owned by the user must be u=rw (0600) or less, one
/// owned by root u=rw,g=r (0640) or less.
fn check_key_permissions(path: &Path) -> Result<(), SettingsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        SettingsError::new(format!(
            "could not stat private key file \"{}\": {e}",
            path.display()
        ))
    })?;
    let mode = meta.mode();
    let mine = meta.uid() == nix::unistd::geteuid().as_raw();
    if (mine && mode & 0o077 != 0) || (meta.uid() == 0 && mode & 0o037 != 0) {
        return Err(SettingsError::new(format!(
            "private key file \"{}\" has group or world access; file must have permissions \
             u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) \
             or less if owned by root",
            path.display()
        )));
    }
    Ok(())
}

fn protocol_versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, SettingsError> {
    // rustls has nothing older than TLS 1.2, libpq's default minimum.
    let rank = |keyword: &str, value: Option<&str>, default: u8| match value {
        None | Some("") => Ok(default),
        Some("TLSv1" | "TLSv1.1" | "TLSv1.2") => Ok(2),
        Some("TLSv1.3") => Ok(3),
        Some(other) => Err(SettingsError::new(format!(
            "invalid {keyword} value: \"{other}\""
        ))),
    };
    let low = rank("ssl_min_protocol_version", min, 2)?;
    let high = rank("ssl_max_protocol_version", max, 3)?;
    let versions: Vec<_> = [(2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(n, _)| (low..=high).contains(n))
        .map(|(_, v)| v)
        .collect();
    if versions.is_empty() {
        return Err(SettingsError::new(
            "invalid SSL protocol version range: ssl_min_protocol_version is above \
             ssl_max_protocol_version",
        ));
    }
    Ok(versions)
}

/// `verify-ca`, or `require`/`prefer` with a root certificate file: the
/// chain must lead to a trusted authority; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means
        // the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`/`prefer`/`allow` without a root certificate file: encryption
/// without authentication of the server, exactly as libpq does it. The
/// handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
