//! Transport: binding the listeners (Unix socket, loopback TCP, TLS), HTTP/2 limits, the
//! stop signals, and the errors of starting and serving. `app` wires the layers onto them.

use std::{io, net::SocketAddr, path::Path};

use tokio::net::{TcpListener, UnixListener};
use tonic::transport::Server;

use crate::{
    authz::RulesError,
    aws_api::credentials::CredentialsError,
    backend::{BackendError, aws::AwsSetupError},
    config::{Config, ConfigError},
    tls::TlsError,
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
    #[error("cannot read permissions boundary file `{path}`: {source}")]
    PermissionsBoundary {
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
    #[error("cannot load the AWS-protocol door's credentials: {0}")]
    AwsCredentials(#[from] CredentialsError),
    #[error("cannot write the ready file `{path}`: {source}")]
    ReadyFile {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// HTTP/2 limits for every listener: streams per connection (tonic leaves it unlimited) and
/// a maximum connection age. The limits on connections themselves, and the TCP keepalive
/// that closes connections to peers that vanished, are in `connection`.
pub(crate) fn hardened(server: Server, config: &Config) -> Server {
    server
        .max_concurrent_streams(config.ops.max_streams_per_connection)
        .max_connection_age(config.connections.max_age)
        .max_connection_age_grace(config.connections.max_age_grace)
}

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

/// Binds the Unix socket at `path` with file mode `mode`.
///
/// A socket at `path` with no server behind it (left by a killed server) is replaced; a live
/// server's is refused, and so is anything there that is not a socket (a regular file, a
/// directory, a symbolic link): that is never removed or overwritten.
///
/// The socket has its final mode from the moment it appears at `path`. It is bound in a new
/// directory beside `path` that only this user may enter (mode 0700, so nobody can connect
/// to it there), given its mode, then moved into place. Binding under a tighter umask would
/// not do: the umask is process-wide, so with other threads running it would race with
/// their file creation. The move is a hard link when nothing is at `path` (which fails,
/// rather than replaces, if something appeared there meanwhile), and a rename over a stale
/// socket (atomic: a client sees the old socket or the new one). Between the stale-socket
/// check and that rename only someone who may write to the socket's directory could put a
/// file there, and they could as well delete or replace it.
pub(crate) async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    let listen_error = |source| ServeError::Listen {
        listener: format!("unix socket `{}`", path.display()),
        source,
    };
    let existing = match std::fs::symlink_metadata(path) {
        Ok(metadata) => Some(metadata.file_type()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(listen_error(e)),
    };
    if let Some(file_type) = existing {
        if !file_type.is_socket() {
            let what = if file_type.is_file() {
                "a regular file"
            } else if file_type.is_dir() {
                "a directory"
            } else if file_type.is_symlink() {
                "a symbolic link"
            } else {
                "a special file"
            };
            return Err(listen_error(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "the path exists and is not a socket ({what}); it was left as it is: remove it, or set `listen.unix_socket` to another path"
                ),
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(listen_error(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another server is listening on it",
            )));
        }
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(listen_error)?;
    // A short name, so that the socket's temporary path is about as long as its final one
    // (a socket path has a length limit).
    let private =
        BindDir::create(parent.join(format!(".keyd-{:08x}", uuid::Uuid::new_v4().as_fields().0)))
            .map_err(listen_error)?;
    let listener = UnixListener::bind(&private.socket).map_err(listen_error)?;
    std::fs::set_permissions(&private.socket, std::fs::Permissions::from_mode(mode))
        .map_err(listen_error)?;
    let placed = match existing {
        Some(_) => std::fs::rename(&private.socket, path),
        None => std::fs::hard_link(&private.socket, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "something was created at the path while the socket was being bound; it was left as it is",
                )
            } else {
                e
            }
        }),
    };
    placed.map_err(listen_error)?;
    drop(private);
    Ok(listener)
}

/// The private directory a socket is bound in before it is moved into place; removed, with
/// the socket's temporary name, when dropped.
struct BindDir {
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl BindDir {
    fn create(dir: std::path::PathBuf) -> io::Result<BindDir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(BindDir {
            socket: dir.join("s"),
            dir,
        })
    }
}

impl Drop for BindDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes the socket at `path` at shutdown, when it is still a socket (never a file that
/// took its place).
pub(crate) fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
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
