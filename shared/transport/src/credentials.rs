//! Mutual-TLS credentials: a private CA made for one hotsync setup, and a certificate for each
//! side signed by it. Each side trusts that CA only, so an agent serves nobody but the host
//! holding `host.key`, and the host talks to no agent but the one holding `agent.key`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use hotsync_core::proto::AGENT_SERVER_NAME;

/// The CA certificate both sides trust.
pub const CA_CERT: &str = "ca.pem";
/// The host's certificate and key.
pub const HOST_CERT: &str = "host.pem";
pub const HOST_KEY: &str = "host.key";
/// The agent's certificate and key.
pub const AGENT_CERT: &str = "agent.pem";
pub const AGENT_KEY: &str = "agent.key";

/// Which side a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Host,
    Agent,
}

impl Role {
    fn files(self) -> (&'static str, &'static str) {
        match self {
            Role::Host => (HOST_CERT, HOST_KEY),
            Role::Agent => (AGENT_CERT, AGENT_KEY),
        }
    }
}

/// What is wrong with a credentials directory.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}. Create credentials with `hotsync credentials --out {dir}`")]
    Missing { path: PathBuf, dir: String, source: std::io::Error },
    #[error("{path} is not a valid PEM {what}: {reason}")]
    Invalid { path: PathBuf, what: &'static str, reason: String },
    #[error("cannot write credentials to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already holds credentials; pass another directory or delete them first")]
    Exists { path: PathBuf },
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// One side's identity: the CA it trusts, its certificate and its key.
#[derive(Debug)]
pub struct Identity {
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Loads the identity of `role` from a credentials directory.
    pub fn load(dir: &Path, role: Role) -> Result<Self, CredentialsError> {
        let (cert_file, key_file) = role.files();
        let ca = read_cert(dir, CA_CERT)?;
        let cert = read_cert(dir, cert_file)?;
        let path = dir.join(key_file);
        let pem = read(dir, key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| CredentialsError::Invalid {
            path,
            what: "private key",
            reason: e.to_string(),
        })?;
        Ok(Self { ca, cert, key })
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, CredentialsError> {
    let path = dir.join(name);
    fs::read(&path).map_err(|source| CredentialsError::Missing { path, dir: dir.display().to_string(), source })
}

fn read_cert(dir: &Path, name: &str) -> Result<CertificateDer<'static>, CredentialsError> {
    let pem = read(dir, name)?;
    CertificateDer::from_pem_slice(&pem).map_err(|e| CredentialsError::Invalid {
        path: dir.join(name),
        what: "certificate",
        reason: e.to_string(),
    })
}

/// A freshly generated set, as PEM text, ready to be written to files or a Secret.
pub struct GeneratedCredentials {
    pub files: Vec<(&'static str, String)>,
}

impl GeneratedCredentials {
    /// A new CA, and host and agent certificates signed by it. The CA's key is not kept:
    /// nothing else can ever be signed into this trust domain.
    pub fn generate() -> Result<Self, CredentialsError> {
        let (ca_pem, issuer) = new_ca("hotsync CA")?;
        let agent = [AGENT_SERVER_NAME.to_owned()];
        let (agent_cert, agent_key) = leaf(&agent, ExtendedKeyUsagePurpose::ServerAuth, &issuer)?;
        let (host_cert, host_key) = leaf(&["hotsync-host".to_owned()], ExtendedKeyUsagePurpose::ClientAuth, &issuer)?;
        Ok(Self {
            files: vec![
                (CA_CERT, ca_pem),
                (HOST_CERT, host_cert),
                (HOST_KEY, host_key),
                (AGENT_CERT, agent_cert),
                (AGENT_KEY, agent_key),
            ],
        })
    }

    /// Writes the files into `dir` (created with mode 0700; keys 0600). Refuses to overwrite.
    pub fn write_to(&self, dir: &Path) -> Result<(), CredentialsError> {
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| CredentialsError::Write { path, source }
        };
        fs::create_dir_all(dir).map_err(werr(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(werr(dir))?;
        for (name, _) in &self.files {
            if dir.join(name).exists() {
                return Err(CredentialsError::Exists { path: dir.to_owned() });
            }
        }
        for (name, text) in &self.files {
            let path = dir.join(name);
            let mode = if [HOST_KEY, AGENT_KEY].contains(name) { 0o600 } else { 0o644 };
            let mut f =
                fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&path).map_err(werr(&path))?;
            f.write_all(text.as_bytes()).map_err(werr(&path))?;
        }
        Ok(())
    }
}

/// A TLS server certificate for DNS `names`, signed by a fresh CA (for the admission
/// webhook: the API server trusts `ca_pem` through the webhook's `caBundle`).
pub struct ServerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerTls {
    /// Generates the CA and the certificate; the CA key is not kept.
    pub fn generate(names: &[String]) -> Result<Self, CredentialsError> {
        let (ca_pem, issuer) = new_ca("hotsync webhook CA")?;
        let (cert_pem, key_pem) = leaf(names, ExtendedKeyUsagePurpose::ServerAuth, &issuer)?;
        Ok(Self { ca_pem, cert_pem, key_pem })
    }
}

/// A CA that may sign leaves only (path length 0): its PEM, and the issuer to sign with.
fn new_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>), CredentialsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = params.self_signed(&key)?.pem();
    Ok((pem, Issuer::new(params, key)))
}

/// A certificate for `names` (the first is also its common name), for one purpose.
fn leaf(
    names: &[String],
    purpose: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), CredentialsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, names.first().map_or("hotsync", String::as_str));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_load_for_both_roles() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        GeneratedCredentials::generate().unwrap().write_to(&creds).unwrap();
        Identity::load(&creds, Role::Host).unwrap();
        Identity::load(&creds, Role::Agent).unwrap();
        let mode = fs::metadata(creds.join(HOST_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "keys are private");
        assert!(matches!(
            GeneratedCredentials::generate().unwrap().write_to(&creds),
            Err(CredentialsError::Exists { .. })
        ));
    }

    #[test]
    fn a_missing_directory_says_how_to_make_one() {
        let err = Identity::load(Path::new("/nonexistent/creds"), Role::Host).unwrap_err();
        assert!(err.to_string().contains("hotsync credentials --out /nonexistent/creds"), "{err}");
    }
}
