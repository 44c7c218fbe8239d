//! The cluster's certificates. On a cluster's first start `keelson server` makes two CAs under
//! `<data-dir>/tls` — one that signs serving certificates (clients trust it), one that signs
//! client certificates (the API server trusts it) — and reads them on every later start. Leaf
//! certificates (the API server's serving certificate, the admin's and the components' client
//! certificates) are minted from them at each start: they are cheap, and a serving certificate
//! made at start always names the addresses the server has now.
//!
//! A client certificate carries a Kubernetes identity as Kubernetes reads one: the subject's
//! common name is the user, its organizations are the groups.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

/// How long a CA made here is valid, in days.
pub const CA_VALIDITY_DAYS: i64 = 3_650;
/// How long a leaf certificate minted here is valid, in days (as kubeadm's and k3s's).
pub const LEAF_VALIDITY_DAYS: i64 = 365;
/// A certificate is valid from this long before it was made, in seconds: clocks of the machines
/// that check it may be a little behind.
const BACKDATE_SECONDS: i64 = 3_600;

/// The user Kubernetes' bootstrap policy gives every right to (through its group).
pub const ADMIN_USER: &str = "system:admin";
pub const MASTERS_GROUP: &str = "system:masters";
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
pub const NODES_GROUP: &str = "system:nodes";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Certificate { what: String, source: rcgen::Error },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Certificate { what: what.to_string(), source }
}

/// The TLS crypto provider of every server and client in the process: ring, the one kube-rs's
/// client is built with too (rustls marks it deprecated for lacking post-quantum key exchange;
/// aws-lc-rs, which has it, adds a C library build to every build).
#[allow(deprecated)]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A Kubernetes identity: a user and its groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn new(user: &str, groups: &[&str]) -> Self {
        Identity { user: user.to_string(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    /// The identity a node's agent has (Kubernetes' Node authorizer recognises it).
    pub fn node(name: &str) -> Self {
        Identity::new(&format!("system:node:{name}"), &[NODES_GROUP])
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A CA: its certificate (PEM) and what signs with it.
struct Ca {
    cert: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The cluster's CAs, as kept under one directory.
pub struct Pki {
    dir: PathBuf,
    server_ca: Ca,
    client_ca: Ca,
    /// The key service-account tokens are signed with (PEM, ECDSA P-256).
    service_account_key: String,
}

impl Pki {
    /// The CAs under `dir`, made there first if the directory holds none.
    /// Several servers may open one directory at once (servers of one machine sharing their
    /// CAs): a lock file makes one of them make the CAs and the others read them.
    pub fn open(dir: &Path) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        // SAFETY: flock on a descriptor this function owns; released when `lock` is dropped.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(PkiError::Io { path: lock_path, source: std::io::Error::last_os_error() });
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
            server_ca: open_ca(dir, "server-ca", "keelson-server-ca")?,
            client_ca: open_ca(dir, "client-ca", "keelson-client-ca")?,
            service_account_key: open_key(dir, "service-account.key")?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key service-account tokens are signed with, PEM.
    pub fn service_account_key(&self) -> &str {
        &self.service_account_key
    }

    /// The CA that signs serving certificates, PEM: what clients trust.
    pub fn server_ca(&self) -> &str {
        &self.server_ca.cert
    }

    /// The CA that signs client certificates, PEM: what the API server trusts.
    pub fn client_ca(&self) -> &str {
        &self.client_ca.cert
    }

    pub fn client_ca_path(&self) -> PathBuf {
        self.dir.join("client-ca.crt")
    }

    /// A serving certificate for these names and addresses.
    pub fn serving(&self, common_name: &str, names: &[String]) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(cert_error("a serving certificate's names"))?;
        params.distinguished_name = name(common_name, &[]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf(params, &self.server_ca)
    }

    /// A client certificate for `who`. At most one group: the certificate library keeps one
    /// value per attribute type, and a second organization would replace the first.
    pub fn client(&self, who: &Identity) -> Result<Pem, PkiError> {
        if who.groups.len() > 1 {
            return Err(PkiError::Invalid {
                path: self.dir.clone(),
                why: format!("a client certificate names at most one group; {} has {:?}", who.user, who.groups),
            });
        }
        let mut params = CertificateParams::default();
        let groups: Vec<&str> = who.groups.iter().map(String::as_str).collect();
        params.distinguished_name = name(&who.user, &groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        leaf(params, &self.client_ca)
    }

    /// A kubeconfig that reaches `server` as `who`, trusting the server CA.
    pub fn kubeconfig(&self, server: &str, who: &Identity) -> Result<String, PkiError> {
        Ok(kubeconfig(server, Some(&self.server_ca.cert), Some(&self.client(who)?)))
    }
}

/// A kubeconfig for `server`; with `ca`, the CA its serving certificate comes from; with
/// `credentials`, a client certificate to present.
pub fn kubeconfig(server: &str, ca: Option<&str>, credentials: Option<&Pem>) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = ca.map(|ca| format!("\n    certificate-authority-data: {}", b64(ca))).unwrap_or_default();
    let user = match credentials {
        Some(p) => format!("\n    client-certificate-data: {}\n    client-key-data: {}", b64(&p.cert), b64(&p.key)),
        None => " {}".to_string(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keelson\n  cluster:\n    server: {server}{ca}\n\
         contexts:\n- name: keelson\n  context:\n    cluster: keelson\n    user: keelson\n    namespace: default\n\
         current-context: keelson\nusers:\n- name: keelson\n  user:{user}\n"
    )
}

/// Writes `contents` to `path` readable by its owner only (credentials).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    // Written beside and renamed, so that a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    // A file that existed keeps the mode it had; credentials must not.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as RFC 5280 wants.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(BACKDATE_SECONDS);
    params.not_after = now + time::Duration::days(days);
}

fn leaf(mut params: CertificateParams, ca: &Ca) -> Result<Pem, PkiError> {
    validity(&mut params, LEAF_VALIDITY_DAYS);
    params.serial_number = Some(serial());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(cert_error("a key"))?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(cert_error("a certificate"))?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// The private key `<file>` under `dir` (PEM), made if it does not exist.
fn open_key(dir: &Path, file: &str) -> Result<String, PkiError> {
    let path = dir.join(file);
    if path.exists() {
        let pem = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        KeyPair::from_pem(&pem)
            .map_err(|e| PkiError::Invalid { path: path.clone(), why: format!("not a private key: {e}") })?;
        return Ok(pem);
    }
    let pem = KeyPair::generate().map_err(cert_error("a key"))?.serialize_pem();
    write_private(&path, &pem)?;
    tracing::info!(path = %path.display(), "made the service-account signing key");
    Ok(pem)
}

/// The CA `<file>.crt`/`<file>.key` under `dir`, made if neither exists.
fn open_ca(dir: &Path, file: &str, common_name: &str) -> Result<Ca, PkiError> {
    let (cert_path, key_path) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = std::fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| PkiError::Invalid { path: key_path.clone(), why: format!("not a private key: {e}") })?;
            let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|e| PkiError::Invalid {
                path: cert_path.clone(),
                why: format!("not a CA certificate: {e}"),
            })?;
            Ok(Ca { cert, issuer })
        }
        (false, false) => {
            let mut params = CertificateParams::default();
            params.distinguished_name =
                name(&format!("{common_name}@{}", time::OffsetDateTime::now_utc().unix_timestamp()), &[]);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            params.serial_number = Some(serial());
            validity(&mut params, CA_VALIDITY_DAYS);
            let key = KeyPair::generate().map_err(cert_error("a CA key"))?;
            let cert = params.self_signed(&key).map_err(cert_error("a CA certificate"))?.pem();
            // The key first: a certificate without its key is refused at the next start, never
            // silently replaced.
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert)?;
            tracing::info!(path = %cert_path.display(), "made a CA");
            Ok(Ca { cert, issuer: Issuer::new(params, key) })
        }
        _ => Err(PkiError::Invalid {
            path: dir.to_path_buf(),
            why: format!("holds one of {file}.crt and {file}.key without the other; restore it or remove both"),
        }),
    }
}

/// The identity a client certificate (DER) names: its subject's common name and organizations.
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    Some(Identity { user, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cas_are_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::open(dir.path()).unwrap();
        let again = Pki::open(dir.path()).unwrap();
        assert_eq!(first.server_ca(), again.server_ca());
        assert_eq!(first.client_ca(), again.client_ca());
        assert_ne!(first.server_ca(), first.client_ca());
        assert_eq!(first.service_account_key(), again.service_account_key());
        for key in ["client-ca.key", "server-ca.key", "service-account.key"] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        // A leaf minted after the reopening still chains to the same CA.
        let pem = again.client(&Identity::node("n1")).unwrap();
        let der = pem_der(&pem.cert);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = pem_der(first.client_ca());
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca.subject());
    }

    #[test]
    fn a_client_certificate_carries_its_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open(dir.path()).unwrap();
        let who = Identity::new("jane", &["dev"]);
        let pem = pki.client(&who).unwrap();
        assert_eq!(identity_of(&pem_der(&pem.cert)), Some(who));
        let nobody = Identity::new("joe", &[]);
        assert_eq!(identity_of(&pem_der(&pki.client(&nobody).unwrap().cert)), Some(nobody));
        let e = pki.client(&Identity::new("jane", &["dev", "ops"])).err().expect("refused");
        assert!(e.to_string().contains("at most one group"), "{e}");
    }

    #[test]
    fn servers_opening_one_directory_at_once_share_its_cas() {
        let dir = tempfile::tempdir().unwrap();
        let opened: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| Pki::open(dir.path()).unwrap().server_ca().to_string())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(opened.iter().all(|ca| *ca == opened[0]), "several CAs were made");
    }

    #[test]
    fn a_ca_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Pki::open(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("server-ca.key")).unwrap();
        let e = Pki::open(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("server-ca.crt and server-ca.key"), "{e}");
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }
}
