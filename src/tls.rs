//! The TLS listener (rustls, aws-lc-rs): client certificates verified against the
//! configured CA bundles (required unless token-only callers are allowed), the caller's
//! certificate name handed to authorization, and the certificate, key and CA files read
//! again when they change.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{
    authz::{CertName, TlsPeer},
    connection::{Admission, Guarded, Refusal, tune_tcp},
};

use crate::config::TlsFiles;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {message}")]
    File { path: PathBuf, message: String },
    #[error("`{path}` holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// A TLS file's bytes, once it is one the sidecar may trust.
fn read_tls_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::files::read_trusted(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |e: rustls::pki_types::pem::Error| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let pem = read_tls_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// What the TLS listener works with: the rustls configuration, and for each trust domain
/// bound to CA bundles, a verifier of those bundles alone.
pub struct TlsState {
    config: Arc<ServerConfig>,
    /// The AWS-protocol door's: the same certificate, HTTP/1.1, no client certificate.
    http1: Arc<ServerConfig>,
    trust_domains: HashMap<String, Arc<dyn ClientCertVerifier>>,
}

fn roots_of<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for path in files {
        for cert in certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(format!("CA in `{}`: {e}", path.display())))?;
        }
    }
    Ok(roots)
}

/// Builds the TLS state from the files as they are now.
pub fn tls_state(files: &TlsFiles) -> Result<TlsState, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut trust_domains = HashMap::new();
    for (domain, bundles) in &files.trust_domain_ca_files {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots_of(bundles)?),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(format!("trust domain `{domain}`: {e}")))?;
        trust_domains.insert(domain.clone(), verifier);
    }
    Ok(TlsState {
        config: server_config(files)?,
        http1: http1_config(files)?,
        trust_domains,
    })
}

fn server_key(files: &TlsFiles) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read_tls_file(&files.key_file)?).map_err(|e| TlsError::File {
        path: files.key_file.clone(),
        message: e.to_string(),
    })
}

/// The AWS-protocol door's configuration: the server certificate and key, no client
/// certificate (callers are identified by their SigV4 signatures), HTTP/1.1 (what the AWS
/// CLI and SDKs speak).
pub fn http1_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificates(&files.cert_file)?, server_key(files)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds the rustls server configuration from the files as they are now; the handshake
/// accepts a chain to any configured CA (the trust-domain bundles included).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&files.cert_file)?;
    let key = server_key(files)?;
    let roots = roots_of(
        files
            .client_ca_files
            .iter()
            .chain(files.trust_domain_ca_files.values().flatten()),
    )?;
    let verifier = if roots.is_empty() {
        if !files.allow_token_only {
            return Err(TlsError::Config(
                "client certificates are required but no client CA is configured".into(),
            ));
        }
        WebPkiClientVerifier::no_client_auth()
    } else {
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if files.allow_token_only {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration in force, rebuilt when its files change.
pub struct ReloadableTls {
    files: TlsFiles,
    current: RwLock<Arc<TlsState>>,
}

impl ReloadableTls {
    pub fn load(files: TlsFiles) -> Result<ReloadableTls, TlsError> {
        let config = Arc::new(tls_state(&files)?);
        Ok(ReloadableTls {
            files,
            current: RwLock::new(config),
        })
    }

    /// Rebuilds the configuration from the files. A configuration that does not build is
    /// refused and the one in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(tls_state(&self.files)?);
        match self.current.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    fn state(&self) -> Arc<TlsState> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Registered with the reloader: the certificate, key and CA files, rebuilt together.
impl crate::reload::Reload for ReloadableTls {
    fn label(&self) -> crate::metrics::ReloadedFile {
        crate::metrics::ReloadedFile::Tls
    }

    fn files(&self) -> Vec<&Path> {
        self.files.all().map(PathBuf::as_path).collect()
    }

    fn reload(&self) -> crate::reload::Reloaded {
        match ReloadableTls::reload(self) {
            Ok(()) => {
                tracing::info!("TLS certificate, key and client CAs reloaded");
                crate::reload::Reloaded::Taken
            }
            Err(e) => {
                tracing::error!(error = %e, "new TLS files refused; the ones in force stay");
                crate::reload::Reloaded::Refused
            }
        }
    }
}

impl TlsState {
    /// The name the client's certificate chain gives it, once it is one this listener
    /// accepts: at most one URI SAN (an X.509-SVID has exactly one), and a SPIFFE ID of a
    /// trust domain bound to CA bundles only when the chain verifies against them. `Err`
    /// says why not.
    pub fn client_name(&self, chain: &[CertificateDer<'_>]) -> Result<Option<CertName>, String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Ok(None);
        };
        let uris = uri_sans(leaf);
        if uris > 1 {
            return Err(format!(
                "the client certificate has {uris} URI SANs; an X.509-SVID has exactly one"
            ));
        }
        let name = certificate_name(leaf);
        if self.trust_domains.is_empty() {
            return Ok(name);
        }
        if let Some(CertName::Spiffe(id)) = &name {
            let domain = crate::domain::trust_domain_of(id).unwrap_or_default();
            let verifier = self.trust_domains.get(domain).ok_or_else(|| {
                format!("trust domain `{domain}` is not in tls.trust_domain_ca_files")
            })?;
            verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .map_err(|e| {
                    format!(
                        "the certificate does not chain to the CAs of trust domain `{domain}`: {e}"
                    )
                })?;
        }
        Ok(name)
    }
}

/// How many URI SANs a certificate has.
fn uri_sans(der: &[u8]) -> usize {
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, cert)| {
            cert.subject_alternative_name().ok().flatten().map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter(|n| matches!(n, GeneralName::URI(_)))
                    .count()
            })
        })
        .unwrap_or(0)
}

/// The name authorization knows a client certificate by: its SPIFFE ID (a `spiffe://`
/// URI SAN), else its first DNS SAN, else its subject common name.
pub fn certificate_name(der: &[u8]) -> Option<CertName> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let sans: Vec<GeneralName<'_>> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    // URI schemes compare case-insensitively (RFC 3986 §3.1); the name is kept with the
    // scheme in lowercase, as rules write it.
    let spiffe = sans.iter().find_map(|name| match name {
        GeneralName::URI(uri)
            if uri
                .get(..9)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe://")) =>
        {
            Some(CertName::Spiffe(format!("spiffe://{}", &uri[9..]).into()))
        }
        _ => None,
    });
    let dns = || {
        sans.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(CertName::Dns((*dns).into())),
            _ => None,
        })
    };
    let common_name = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(|cn| CertName::CommonName(cn.into()))
    };
    spiffe.or_else(dns).or_else(common_name)
}

/// An accepted TLS connection and who is on the other end.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections within the listener's limits and completes their handshakes
/// concurrently (a slow client holds up no one; at most `connections.max_tls_handshakes`
/// at once), yielding the ones that succeed. Stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
    admission: Arc<Admission>,
) -> ReceiverStream<io::Result<Guarded<TlsConnection>>> {
    accept(
        listener,
        tls,
        admission,
        |state| state.config.clone(),
        |stream, addr, state| {
            let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
            let name = match state.client_name(chain) {
                Ok(name) => name,
                Err(why) => {
                    tracing::info!(%addr, reason = %why, "client certificate refused");
                    return None;
                }
            };
            Some(TlsConnection {
                stream,
                peer: TlsPeer {
                    addr: Some(addr),
                    name,
                },
            })
        },
    )
}

/// As [`incoming`], for the AWS-protocol door: HTTP/1.1, no client certificate.
pub fn incoming_http1(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
    admission: Arc<Admission>,
) -> ReceiverStream<io::Result<Guarded<TlsConnection>>> {
    accept(
        listener,
        tls,
        admission,
        |state| state.http1.clone(),
        |stream, addr, _| {
            Some(TlsConnection {
                stream,
                peer: TlsPeer {
                    addr: Some(addr),
                    name: None,
                },
            })
        },
    )
}

/// The accept loop of [`incoming`] and [`incoming_http1`]: `config_of` picks the rustls
/// configuration, `connection_of` makes the connection of a finished handshake (or refuses
/// it).
fn accept(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
    admission: Arc<Admission>,
    config_of: fn(&TlsState) -> Arc<ServerConfig>,
    connection_of: fn(
        TlsStream<TcpStream>,
        std::net::SocketAddr,
        &TlsState,
    ) -> Option<TlsConnection>,
) -> ReceiverStream<io::Result<Guarded<TlsConnection>>> {
    let (tx, rx) = mpsc::channel(64);
    let limits = admission.limits().clone();
    let handshakes = Arc::new(Semaphore::new(limits.max_tls_handshakes));
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Refused connections are dropped here, which closes them.
            let Ok(ticket) = admission.admit(Some(addr.ip())) else {
                continue;
            };
            let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                admission.refused(Refusal::HandshakesFull, Some(addr.ip()));
                continue;
            };
            tune_tcp(&tcp, &limits);
            let state = tls.state();
            let acceptor = TlsAcceptor::from(config_of(&state));
            let tx = tx.clone();
            let timeout = limits.tls_handshake_timeout;
            tokio::spawn(async move {
                let accepted = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                drop(handshake);
                match accepted {
                    Ok(Ok(stream)) => {
                        if let Some(connection) = connection_of(stream, addr, &state) {
                            let _ = tx.send(Ok(Guarded::new(connection, ticket))).await;
                        }
                    }
                    Ok(Err(e)) => tracing::info!(%addr, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
