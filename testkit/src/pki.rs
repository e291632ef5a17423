//! A throw-away public key infrastructure, made with `rcgen` when the test
//! runs and written to a temporary directory laid out like `keys/` after
//! `scripts/gen-keys.sh`, so tests go through the same file-loading code as
//! the binaries and nothing secret is ever committed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::Identity;

use crate::SetupResult;

/// The host names and addresses the test server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The workload identity of discount's certificate, as
/// `scripts/gen-keys.sh` issues it.
pub const DISCOUNT_IDENTITY: &str = "spiffe://ecommerce.local/discount";

/// The workload identity of the catalog's client certificate, and of every
/// client certificate [`Pki::issue_client`] makes.
pub const CATALOG_IDENTITY: &str = "spiffe://ecommerce.local/catalog";

/// A throw-away public key infrastructure in a temporary directory, laid out
/// like `keys/` after `scripts/gen-keys.sh`.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

/// What kind of client certificate [`Pki::issue_client`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// A good one: `clientAuth`, valid now.
    Valid,
    /// Valid for `clientAuth`, but expired in 2021.
    Expired,
    /// Valid now, but for `serverAuth` only: the wrong purpose.
    ServerPurpose,
}

impl Pki {
    /// Makes a CA and, signed by it, a server identity for [`SERVER_NAMES`]
    /// with the workload identity [`DISCOUNT_IDENTITY`], and a client
    /// identity with [`CATALOG_IDENTITY`]. ECDSA P-256, like the dev keys.
    ///
    /// # Errors
    /// Key generation or file writing failed.
    pub fn generate() -> SetupResult<Self> {
        let dir = tempfile::tempdir()?;

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        // pathlen:0, as scripts/gen-keys.sh makes its CA.
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, unique_ca_name());
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.path().join("ca.key"), ca_key.serialize_pem())?;

        let pki = Self {
            dir,
            ca_params,
            ca_key,
        };
        pki.issue_server_as("cert.pem", "private.key", &[DISCOUNT_IDENTITY])?;
        pki.issue_client("client", ClientCert::Valid)?;
        Ok(pki)
    }

    /// Issues a client certificate from this CA, with the workload identity
    /// [`CATALOG_IDENTITY`], into `<name>.pem` and `<name>.key`.
    ///
    /// # Errors
    /// Key generation or file writing failed.
    pub fn issue_client(&self, name: &str, kind: ClientCert) -> SetupResult<()> {
        let usage = match kind {
            ClientCert::ServerPurpose => ExtendedKeyUsagePurpose::ServerAuth,
            ClientCert::Valid | ClientCert::Expired => ExtendedKeyUsagePurpose::ClientAuth,
        };
        let names = vec![name.to_owned()];
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        let expired = kind == ClientCert::Expired;
        self.issue(
            &cert,
            &key,
            names,
            &[CATALOG_IDENTITY],
            name,
            usage,
            expired,
        )
    }

    /// Issues a valid client certificate carrying the workload identities
    /// `identities` (as URI subjectAltNames; none, one or several) into
    /// `<name>.pem` and `<name>.key`.
    ///
    /// # Errors
    /// Key generation or file writing failed, or an identity is not ASCII.
    pub fn issue_client_as(&self, name: &str, identities: &[&str]) -> SetupResult<()> {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        let names = vec![name.to_owned()];
        let usage = ExtendedKeyUsagePurpose::ClientAuth;
        self.issue(&cert, &key, names, identities, name, usage, false)
    }

    /// Issues an intermediate CA from this CA (which says `pathlen:0`: no
    /// CA below it), and from that a valid client certificate with the
    /// workload identity [`CATALOG_IDENTITY`], into `<name>.pem` (the
    /// client certificate, then the intermediate's) and `<name>.key`.
    ///
    /// # Errors
    /// Key generation, signing or file writing failed.
    pub fn issue_client_via_intermediate(&self, name: &str) -> SetupResult<()> {
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let intermediate_key = KeyPair::generate()?;
        let mut intermediate = CertificateParams::new(Vec::<String>::new())?;
        intermediate.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        intermediate.distinguished_name.push(
            DnType::CommonName,
            format!("{} intermediate", unique_ca_name()),
        );
        intermediate.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let intermediate_cert = intermediate.signed_by(&intermediate_key, &issuer)?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::URI(CATALOG_IDENTITY.try_into()?));
        params.is_ca = IsCa::ExplicitNoCa;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let below = Issuer::from_params(&intermediate, &intermediate_key);
        let cert = params.signed_by(&key, &below)?;
        let chain = format!("{}{}", cert.pem(), intermediate_cert.pem());
        std::fs::write(self.path(&format!("{name}.pem")), chain)?;
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem())?;
        Ok(())
    }

    /// Issues a server certificate for [`SERVER_NAMES`] carrying the
    /// workload identities `identities` into `cert_file` and `key_file`
    /// (`"cert.pem"` and `"private.key"` replace discount's).
    ///
    /// # Errors
    /// As [`Pki::issue_client_as`].
    pub fn issue_server_as(
        &self,
        cert_file: &str,
        key_file: &str,
        identities: &[&str],
    ) -> SetupResult<()> {
        let names = SERVER_NAMES.iter().map(|s| (*s).to_owned()).collect();
        let usage = ExtendedKeyUsagePurpose::ServerAuth;
        self.issue(
            cert_file,
            key_file,
            names,
            identities,
            "localhost",
            usage,
            false,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        cert_file: &str,
        key_file: &str,
        names: Vec<String>,
        identities: &[&str],
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> SetupResult<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        for identity in identities {
            params
                .subject_alt_names
                .push(SanType::URI((*identity).try_into()?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(self.path(cert_file), cert.pem())?;
        std::fs::write(self.path(key_file), key.serialize_pem())?;
        Ok(())
    }

    /// Writes into `file` this PKI's CA after `extra` other self-signed CA
    /// certificates, each with a subject of its own: a client-CA file as
    /// large as an operator might make one by pointing `--client-ca` at a
    /// bundle. The extra CAs share one key, so the cost is `extra`
    /// signatures and no key generation (10,000 take a few seconds in a
    /// debug build); with distinct subjects rustls still keeps each as a
    /// trust anchor of its own.
    ///
    /// # Errors
    /// Key generation, signing or file writing failed.
    pub fn write_ca_bundle(&self, file: &str, extra: usize) -> SetupResult<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut bundle = String::with_capacity((extra + 1) * 700);
        for n in 0..extra {
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("unrelated test CA {n}"));
            bundle.push_str(&params.self_signed(&key)?.pem());
        }
        bundle.push_str(&std::fs::read_to_string(self.path("ca.pem"))?);
        std::fs::write(self.path(file), bundle)?;
        Ok(())
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of one file, e.g. `"ca.pem"`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Copies this PKI's files into `dir`, replacing what is there: what an
    /// operator does when rotating certificates.
    ///
    /// # Errors
    /// A file could not be copied.
    pub fn install_into(&self, dir: &Path) -> SetupResult<()> {
        for name in [
            "ca.pem",
            "cert.pem",
            "private.key",
            "client.pem",
            "client.key",
        ] {
            std::fs::copy(self.path(name), dir.join(name))?;
        }
        Ok(())
    }

    /// The client identity `<name>.pem` + `<name>.key`, for tonic.
    ///
    /// # Errors
    /// A file could not be read.
    pub fn identity(&self, name: &str) -> SetupResult<Identity> {
        Ok(Identity::from_pem(
            std::fs::read(self.path(&format!("{name}.pem")))?,
            std::fs::read(self.path(&format!("{name}.key")))?,
        ))
    }
}

/// "ecommerce test CA N", different for every CA of the test run, so that a
/// certificate from another test CA is refused as UnknownIssuer (as it
/// would be in production), not checked against a namesake's key.
/// `count` self-signed CA certificates in PEM, each with a subject of its
/// own: a large trust bundle, as an operator's `--discount-ca` can be.
/// They share one key pair, since only parsing and storing them is being
/// exercised, and signing 10,000 key pairs' worth would take a debug test
/// minutes.
///
/// # Errors
/// Key generation or signing failed.
pub fn ca_bundle(count: usize) -> SetupResult<String> {
    let key = KeyPair::generate()?;
    let mut bundle = String::new();
    for n in 0..count {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{} bundle {n}", unique_ca_name()),
        );
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        bundle.push_str(&params.self_signed(&key)?.pem());
    }
    Ok(bundle)
}

fn unique_ca_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("ecommerce test CA {}-{n}", std::process::id())
}
