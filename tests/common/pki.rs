//! A throwaway PKI for TLS tests: CAs, a server certificate for localhost, and client
//! certificates named by SPIFFE ID, DNS name or common name.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Paths of a certificate and its key, and the PEM texts.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

pub enum ClientName<'a> {
    Spiffe(&'a str),
    /// Several URI SANs (not an X.509-SVID).
    Uris(&'a [&'a str]),
    Dns(&'a str),
    CommonName(&'a str),
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/<stem>.pem`.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    fn issue(&self, params: CertificateParams, dir: &Path, stem: &str) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pair = Pair {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&pair.cert, &pair.cert_pem).unwrap();
        std::fs::write(&pair.key, &pair.key_pem).unwrap();
        pair
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, dir: &Path, stem: &str) -> Pair {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .distinguished_name
            .push(DnType::CommonName, "inspector-keyd");
        self.issue(params, dir, stem)
    }

    pub fn client(&self, dir: &Path, stem: &str, name: ClientName<'_>) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        match name {
            ClientName::Spiffe(id) => params
                .subject_alt_names
                .push(SanType::URI(id.try_into().unwrap())),
            ClientName::Uris(uris) => {
                for uri in uris {
                    params
                        .subject_alt_names
                        .push(SanType::URI((*uri).try_into().unwrap()));
                }
            }
            ClientName::Dns(dns) => params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into().unwrap())),
            ClientName::CommonName(cn) => params.distinguished_name.push(DnType::CommonName, cn),
        }
        self.issue(params, dir, stem)
    }
}
