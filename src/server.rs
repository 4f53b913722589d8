//! Transport: binding the listeners (Unix socket, loopback TCP, TLS), HTTP/2 limits, the
//! reload of the rules and TLS files, the stop signals, and the errors of starting and
//! serving. `app` wires the layers onto them.

use std::{io, net::SocketAddr, path::Path, sync::Arc};

use tokio::net::{TcpListener, UnixListener};
use tonic::transport::Server;

use crate::{
    authz::{Authorizer, RulesError},
    backend::{BackendError, aws::AwsSetupError},
    config::{Config, ConfigError},
    metrics::{Metrics, ReloadedFile},
    tls::{ReloadableTls, TlsError},
};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load the authorization rules: {0}")]
    Rules(#[from] RulesError),
    #[error("cannot open the audit file `{path}`: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot read identity policy file `{path}`: {source}")]
    IdentityPolicy {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("cannot connect to AWS: {0}")]
    Aws(#[from] AwsSetupError),
    #[error("cannot open the backend: {0}")]
    Backend(#[from] BackendError),
    #[error("cannot listen on {listener}: {source}")]
    Listen { listener: String, source: io::Error },
    #[error("cannot build reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server on {listener} failed: {source}")]
    Serve {
        listener: String,
        source: tonic::transport::Error,
    },
    #[error("{task} stopped unexpectedly")]
    TaskEnded { task: String },
    #[error("{task} panicked: {message}")]
    TaskPanicked { task: String, message: String },
    #[error("cannot write the ready file `{path}`: {source}")]
    ReadyFile {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// Reads the rules file and the TLS files again when they change (checked every
/// `interval`) and on SIGHUP. A broken new file is refused with an error log; what is in
/// force stays.
pub(crate) async fn reload_loop(
    authorizer: Arc<Authorizer>,
    tls: Option<Arc<ReloadableTls>>,
    interval: std::time::Duration,
    metrics: Metrics,
) {
    if authorizer.rules_file().is_some() {
        metrics.watch_reloads(ReloadedFile::Rules);
    }
    if tls.is_some() {
        metrics.watch_reloads(ReloadedFile::Tls);
    }
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // A change is seen by content, not by modification time.
    let mut rules_stamp = authorizer.rules_file().and_then(crate::files::fingerprint);
    loop {
        let forced = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if let Some(path) = authorizer.rules_file() {
            let stamp = crate::files::fingerprint(path);
            if forced || stamp != rules_stamp {
                rules_stamp = stamp;
                let reloaded = authorizer.reload();
                metrics.count_reload(ReloadedFile::Rules, reloaded.is_err());
                match reloaded {
                    Ok(true) => {
                        tracing::info!(path = %path.display(), "authorization rules reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "new authorization rules refused; the rules in force stay")
                    }
                }
            }
        }
        if let Some(tls) = &tls {
            let reloaded = tls.reload(forced);
            match &reloaded {
                Ok(true) => tracing::info!("TLS certificate, key and client CAs reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "new TLS files refused; the ones in force stay")
                }
            }
            // Unchanged files (Ok(false)) say nothing new.
            if !matches!(reloaded, Ok(false)) {
                metrics.count_reload(ReloadedFile::Tls, reloaded.is_err());
            }
        }
    }
}

/// HTTP/2 limits for every listener: streams per connection (tonic leaves it unlimited),
/// keepalive pings so that connections to peers that vanished are closed, and a maximum
/// connection age. The limits on connections themselves are in `connection`.
pub(crate) fn hardened(server: Server, config: &Config) -> Server {
    server
        .max_concurrent_streams(config.ops.max_streams_per_connection)
        .max_connection_age(config.connections.max_age)
        .max_connection_age_grace(config.connections.max_age_grace)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
}

/// How often an idle connection is pinged, and how long the peer has to answer.
const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Binds a TCP listener (`kind` names it in errors) and says where it listens.
pub(crate) async fn bind_tcp(
    kind: &str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listen_error = |source| ServeError::Listen {
        listener: format!("{kind} {addr}"),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    Ok((listener, local))
}

/// Binds the Unix socket, replacing a stale socket file but never a live server's.
pub(crate) async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let listen_error = |source| ServeError::Listen {
        listener: format!("unix socket `{}`", path.display()),
        source,
    };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(listen_error(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another server is listening on it",
            )));
        }
        std::fs::remove_file(path).map_err(listen_error)?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(listen_error)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_error)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen_error)?;
    Ok(listener)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
