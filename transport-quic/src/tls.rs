//! Mutual TLS for QUIC: rustls configurations with the `ring` provider chosen explicitly (no
//! process-level default), and certificate verifiers that refuse, log and count by reason.
//!
//! Both directions check the chain up to the cluster CA and the validity window (webpki). The
//! dialling side also checks that the server's certificate names the node it meant to reach
//! (`node-<id>.keel`); the accepting side learns the dialler's node id from its certificate
//! after the handshake ([`identify_node`]) and then holds every frame to that id.

use std::sync::Arc;

use keel_engine::core::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};

use crate::certs::{node_dns_name, Identity};
use crate::metrics::{HandshakeRefusal, TransportMetrics};

/// ALPN of node-to-node connections.
pub const PEER_ALPN: &[u8] = b"keel-peer/1";
/// ALPN of key-value client connections.
pub const KV_ALPN: &[u8] = b"keel-kv/1";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the cluster CA set is empty or unusable: {0}")]
    Roots(String),
    #[error("the node's certificate or key is unusable: {0}")]
    Identity(String),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC needs TLS 1.3 with an initial cipher suite: {0}")]
    Quic(String),
}

/// The crypto provider every keel TLS config uses: `ring`, picked here rather than taken from a
/// process-wide default that another library could have installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in ca {
        store
            .add(cert.clone())
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(TlsError::Roots("no CA certificate".into()));
    }
    Ok(Arc::new(store))
}

/// Maps a verification failure to the reason it is counted under.
pub fn refusal_of(e: &rustls::Error) -> HandshakeRefusal {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => HandshakeRefusal::UnknownCa,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => HandshakeRefusal::Expired,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                HandshakeRefusal::WrongId
            }
            _ => HandshakeRefusal::BadCertificate,
        },
        _ => HandshakeRefusal::BadCertificate,
    }
}

/// Checks a server's certificate (chain, validity, the dialled node's name) and counts refusals.
#[derive(Debug)]
struct CountingServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    metrics: Arc<TransportMetrics>,
    local: String,
}

impl ServerCertVerifier for CountingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| {
                let reason = refusal_of(e);
                self.metrics.handshake_refused(reason);
                tracing::warn!(
                    local = %self.local,
                    peer = ?server_name,
                    reason = reason.name(),
                    error = %e,
                    "refused a peer's certificate"
                );
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks a dialler's certificate (chain and validity; its node id is checked after the
/// handshake, once the ALPN says whether it is a peer or a client) and counts refusals.
#[derive(Debug)]
struct CountingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    metrics: Arc<TransportMetrics>,
    local: String,
}

impl ClientCertVerifier for CountingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                let reason = refusal_of(e);
                self.metrics.handshake_refused(reason);
                tracing::warn!(
                    local = %self.local,
                    reason = reason.name(),
                    error = %e,
                    "refused a dialler's certificate"
                );
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls config a node (or client) dials with: presents `identity`, trusts only `ca`.
pub fn client_config(
    identity: &Identity,
    ca: &[CertificateDer<'static>],
    alpn: &[u8],
    metrics: Arc<TransportMetrics>,
    local: String,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
            .build()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    let verifier = Arc::new(CountingServerVerifier {
        inner,
        metrics,
        local,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// The rustls config a node accepts with: presents `identity`, requires a client certificate
/// from `ca`, and speaks both the peer and the key-value ALPN.
pub fn server_config(
    identity: &Identity,
    ca: &[CertificateDer<'static>],
    metrics: Arc<TransportMetrics>,
    local: String,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let inner =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
            .build()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    let verifier = Arc::new(CountingClientVerifier {
        inner,
        metrics,
        local,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec(), KV_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// The endpoint config of a node: the keys behind its connection ids and stateless resets are
/// derived from the node's private key, so they survive a restart.
///
/// A peer that dialled this node before it crashed keeps sending on the old connection, which
/// the restarted process does not know. The process answers with a stateless reset only if it
/// recognises the connection id as one of its own, and the peer honours the reset only if its
/// token matches the one the old process issued. With quinn's defaults (random keys per
/// process) neither happens: the peer keeps the dead connection until its idle timeout (10 s by
/// default), and since only the lower id dials, the restarted node stays cut off from it that
/// long. With the same keys the reset is sent and recognised, and the peer redials at once.
pub fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::new(Arc::new(derive_key(identity, b"stateless reset")));
    let cid_key = derive_key(identity, b"connection id");
    let cid_key = u64::from_le_bytes(
        ring::hmac::sign(&cid_key, b"")
            .as_ref()
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .expect("an HMAC-SHA256 tag has 32 bytes"),
    );
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    cfg
}

/// HMAC(label, private key) as a key: as secret as the node's key, and the same in every run.
fn derive_key(identity: &Identity, purpose: &[u8]) -> ring::hmac::Key {
    use ring::hmac;
    let label = hmac::Key::new(hmac::HMAC_SHA256, &[b"keel-quic v1 ", purpose].concat());
    let derived = hmac::sign(&label, identity.key.secret_der());
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

/// The server name to dial node `id` by: its certificate must carry it.
pub fn server_name_of(id: NodeId) -> String {
    node_dns_name(id)
}

/// Which of `candidates` the (already chain-verified) certificate `leaf` names. `None` if it
/// names none of them, or more than one (a certificate must name exactly one node).
pub fn identify_node(
    leaf: &CertificateDer<'_>,
    candidates: impl IntoIterator<Item = NodeId>,
) -> Option<NodeId> {
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let mut found = None;
    for id in candidates {
        let Ok(name) = ServerName::try_from(node_dns_name(id)) else {
            continue;
        };
        if cert.verify_is_valid_for_subject_name(&name).is_ok() {
            if found.is_some() {
                return None;
            }
            found = Some(id);
        }
    }
    found
}

/// The leaf certificate a connection's peer presented.
pub fn peer_leaf(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().cloned()
}

/// The ALPN a connection negotiated.
pub fn alpn_of(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    data.protocol
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::DevCa;

    #[test]
    fn the_stateless_reset_key_is_the_same_in_every_run_and_differs_between_nodes() {
        use ring::hmac;
        let ca = DevCa::generate("test").unwrap();
        let node = ca.issue_node(1).unwrap();
        // A restart reads the same files again.
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("n.pem"), dir.path().join("n-key.pem"));
        std::fs::write(&cert, &node.cert_pem).unwrap();
        std::fs::write(&key, &node.key_pem).unwrap();
        let restarted = Identity::load_pem(&cert, &key).unwrap();
        let other = ca.issue_node(2).unwrap().identity;
        let cid = b"a connection id";
        let token = |id: &Identity| {
            hmac::sign(&derive_key(id, b"stateless reset"), cid)
                .as_ref()
                .to_vec()
        };
        assert_eq!(token(&node.identity), token(&restarted));
        assert_ne!(token(&node.identity), token(&other));
    }

    #[test]
    fn a_node_certificate_names_exactly_its_node() {
        let ca = DevCa::generate("test").unwrap();
        let leaf = ca.issue_node(7).unwrap().identity.cert_chain[0].clone();
        assert_eq!(identify_node(&leaf, [1, 2, 7, 9]), Some(7));
        assert_eq!(identify_node(&leaf, [1, 2, 3]), None);
        let client = ca.issue_client().unwrap().identity.cert_chain[0].clone();
        assert_eq!(identify_node(&client, 1..=10), None);
    }
}
