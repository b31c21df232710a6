//! Node identity as certificates: names, a development CA that issues node and client
//! certificates (rcgen), and PEM files in and out.
//!
//! A node's certificate carries the DNS name `node-<id>.keel` as its subject alternative name
//! (and common name); a key-value client's carries `client.keel`. Both are signed by the cluster
//! CA, which every node and client trusts and nothing else. `keel-bench certs` calls
//! [`write_dev_certs`]; production clusters issue the same names from their own CA.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use keel_engine::core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The DNS name a node's certificate must carry.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}.keel")
}

/// The DNS name of key-value client certificates.
pub const CLIENT_DNS_NAME: &str = "client.keel";

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
}

/// A certificate chain and its private key: what a node or client presents.
#[derive(Debug)]
pub struct Identity {
    /// The leaf first, then any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads a chain and a key from PEM files.
    pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let pem_err = |path: &Path, e: &dyn std::fmt::Display| CertError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let cert_chain = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| pem_err(cert_path, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(cert_path, &e))?;
        if cert_chain.is_empty() {
            return Err(pem_err(cert_path, &"no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_err(key_path, &e))?;
        Ok(Self { cert_chain, key })
    }
}

/// Loads the cluster CA certificate(s) every peer is checked against.
pub fn load_ca_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem_err = |e: &dyn std::fmt::Display| CertError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&e))?;
    if certs.is_empty() {
        return Err(pem_err(&"no certificate in the file"));
    }
    Ok(certs)
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a day ago (clock skew between hosts) to `days` from now.
    pub fn days_from_now(days: u64) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(86_400),
            not_after: now + Duration::from_secs(86_400 * days),
        }
    }

    /// A window that closed a day ago: for tests of expiry.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(86_400 * 30),
            not_after: now - Duration::from_secs(86_400),
        }
    }
}

/// A certificate just issued, with its PEM forms for writing out.
#[derive(Clone, Debug)]
pub struct Issued {
    pub identity: Identity,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority for development and tests: generated in memory, written as PEM.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

impl DevCa {
    /// A new CA named `common_name`, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let validity = Validity::days_from_now(3650);
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Self { cert, key })
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for node `id`, valid for a year.
    pub fn issue_node(&self, id: NodeId) -> Result<Issued, CertError> {
        self.issue(&node_dns_name(id), Validity::days_from_now(365))
    }

    /// A certificate for node `id` that also names the hosts it runs on (DNS names or IP
    /// addresses), for tools that check those; keel itself checks only the node id.
    pub fn issue_node_on(&self, id: NodeId, hosts: &[String]) -> Result<Issued, CertError> {
        let mut names = vec![node_dns_name(id)];
        names.extend(hosts.iter().cloned());
        self.issue_names(&names, Validity::days_from_now(365))
    }

    /// A certificate for key-value clients, valid for a year.
    pub fn issue_client(&self) -> Result<Issued, CertError> {
        self.issue(CLIENT_DNS_NAME, Validity::days_from_now(365))
    }

    /// A leaf certificate for `dns_name`, usable by both ends of a TLS connection (peers dial
    /// and accept).
    pub fn issue(&self, dns_name: &str, validity: Validity) -> Result<Issued, CertError> {
        self.issue_names(&[dns_name.to_owned()], validity)
    }

    /// A leaf certificate whose subject is the first of `names`, all of them in its SAN (rcgen
    /// makes IP address entries of names that parse as addresses).
    fn issue_names(&self, names: &[String], validity: Validity) -> Result<Issued, CertError> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
        let subject = names.first().map_or("", String::as_str);
        params.distinguished_name.push(DnType::CommonName, subject);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(gen_err)?;
        Ok(Issued {
            identity: Identity {
                cert_chain: vec![cert.der().clone()],
                key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            },
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The files [`write_dev_certs`] writes into a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
        }
    }

    pub fn node_cert(dir: &Path, id: NodeId) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("node-{id}.pem")),
            dir.join(format!("node-{id}-key.pem")),
        )
    }

    pub fn client_cert(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("client.pem"), dir.join("client-key.pem"))
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// Writes a new dev CA, a certificate for each node in `ids` and one client certificate into
/// `dir` (created if missing). Private keys are written readable by the owner only.
pub fn write_dev_certs(dir: &Path, ids: &[NodeId]) -> Result<CertPaths, CertError> {
    let nodes: Vec<(NodeId, Vec<String>)> = ids.iter().map(|&id| (id, Vec::new())).collect();
    write_dev_certs_for(dir, &nodes)
}

/// [`write_dev_certs`] for nodes on named hosts: each node's certificate also names its hosts.
pub fn write_dev_certs_for(
    dir: &Path,
    nodes: &[(NodeId, Vec<String>)],
) -> Result<CertPaths, CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca = DevCa::generate("keel dev CA")?;
    let paths = CertPaths::in_dir(dir);
    write_file(&paths.ca_cert, &ca.cert_pem(), false)?;
    write_file(&paths.ca_key, &ca.key_pem(), true)?;
    for (id, hosts) in nodes {
        let id = *id;
        let issued = ca.issue_node_on(id, hosts)?;
        let (cert, key) = CertPaths::node_cert(dir, id);
        write_file(&cert, &issued.cert_pem, false)?;
        write_file(&key, &issued.key_pem, true)?;
    }
    let issued = ca.issue_client()?;
    let (cert, key) = CertPaths::client_cert(dir);
    write_file(&cert, &issued.cert_pem, false)?;
    write_file(&key, &issued.key_pem, true)?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_round_trip_through_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_dev_certs(dir.path(), &[1, 2]).unwrap();
        let ca = load_ca_pem(&paths.ca_cert).unwrap();
        assert_eq!(ca.len(), 1);
        let (cert, key) = CertPaths::node_cert(dir.path(), 2);
        let id = Identity::load_pem(&cert, &key).unwrap();
        assert_eq!(id.cert_chain.len(), 1);
        let (cert, key) = CertPaths::client_cert(dir.path());
        Identity::load_pem(&cert, &key).unwrap();
        assert!(
            Identity::load_pem(&paths.ca_key, &key).is_err(),
            "a key is no certificate"
        );
    }
}
