//! Authorization: one tower layer, before every handler, that decides which role each RPC
//! needs, who the caller is (from the connection), and whether the caller holds the role.
//! Deny by default: an RPC it does not know needs `admin`.
//!
//! Until configurable rules exist, the rules are fixed: a Unix-socket caller running as
//! the server's own uid is `admin`; a loopback TCP caller is `read-only`; anyone else has
//! no role.

use std::{
    fmt,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    body::Body,
    transport::server::{TcpConnectInfo, UdsConnectInfo},
};
use tower::{Layer, Service};

/// What a caller may do. `Admin` includes everything `ReadOnly` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ReadOnly,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::ReadOnly => "read-only",
            Role::Admin => "admin",
        })
    }
}

/// The role each RPC needs; `None` for the public health and reflection services.
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => None,
        (
            "inspectorkeyd.v1.EncryptionKeyService",
            "GetEncryptionKey" | "VerifyKeyPolicy" | "RenderKeyPolicy",
        ) => Some(Role::ReadOnly),
        _ => Some(Role::Admin),
    }
}

/// Who is calling, as the connection shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A Unix-socket peer, by its credentials (PIDs are not trusted).
    UnixPeer { uid: u32, gid: u32 },
    /// A TCP peer on loopback.
    TcpPeer { addr: SocketAddr },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::UnixPeer { uid, gid } => write!(f, "unix:uid={uid},gid={gid}"),
            Identity::TcpPeer { addr } => write!(f, "tcp:{addr}"),
        }
    }
}

/// The authenticated caller of a request, left in its extensions for the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: Identity,
    pub role: Option<Role>,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("the caller could not be identified")]
    Unauthenticated,
    #[error("this call needs the {required} role; caller `{caller}` does not have it")]
    RoleRequired { required: Role, caller: String },
}

/// The rules that map identities to roles.
#[derive(Debug, Clone)]
pub struct Authorizer {
    server_uid: u32,
}

impl Authorizer {
    /// Rules for a server running as `server_uid`.
    pub fn new(server_uid: u32) -> Authorizer {
        Authorizer { server_uid }
    }

    /// Rules for this process.
    pub fn for_this_process() -> Authorizer {
        Authorizer::new(rustix::process::getuid().as_raw())
    }

    pub fn role_of(&self, identity: &Identity) -> Option<Role> {
        match identity {
            Identity::UnixPeer { uid, .. } if *uid == self.server_uid => Some(Role::Admin),
            Identity::UnixPeer { .. } => None,
            Identity::TcpPeer { addr } if addr.ip().is_loopback() => Some(Role::ReadOnly),
            Identity::TcpPeer { .. } => None,
        }
    }

    /// Decides one request: the caller, or why it is refused.
    pub fn decide(
        &self,
        path: &str,
        identity: Option<Identity>,
    ) -> Result<Option<Caller>, AuthzError> {
        let Some(required) = required_role(path) else {
            return Ok(None);
        };
        let identity = identity.ok_or(AuthzError::Unauthenticated)?;
        let role = self.role_of(&identity);
        if role.is_some_and(|role| role >= required) {
            Ok(Some(Caller { identity, role }))
        } else {
            Err(AuthzError::RoleRequired {
                required,
                caller: identity.to_string(),
            })
        }
    }
}

fn identity_of<B>(request: &http::Request<B>) -> Option<Identity> {
    let extensions = request.extensions();
    if let Some(info) = extensions.get::<UdsConnectInfo>() {
        return info.peer_cred.map(|cred| Identity::UnixPeer {
            uid: cred.uid(),
            gid: cred.gid(),
        });
    }
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .map(|addr| Identity::TcpPeer { addr })
}

/// The tower layer that authorizes every request.
#[derive(Clone)]
pub struct AuthzLayer {
    authorizer: Arc<Authorizer>,
}

impl AuthzLayer {
    pub fn new(authorizer: Authorizer) -> AuthzLayer {
        AuthzLayer {
            authorizer: Arc::new(authorizer),
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

/// The service [`AuthzLayer`] wraps around the routes.
#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
}

impl<S, B> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self
            .authorizer
            .decide(request.uri().path(), identity_of(&request))
        {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                // The clone is the one that is not ready yet; the ready one serves this call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(error) => {
                tracing::info!(path = %request.uri().path(), %error, "call refused");
                let status = tonic::Status::from(error);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &str = "/inspectorkeyd.v1.EncryptionKeyService/GetEncryptionKey";
    const UPDATE: &str = "/inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey";

    #[test]
    fn roles_per_rpc_deny_by_default() {
        assert_eq!(required_role(GET), Some(Role::ReadOnly));
        assert_eq!(required_role(UPDATE), Some(Role::Admin));
        assert_eq!(
            required_role("/inspectorkeyd.v1.EncryptionKeyService/NoSuchCall"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role("/inspectorkeyd.v1.LocalKmsService/ListKeys"),
            Some(Role::Admin)
        );
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn interim_rules() {
        let authz = Authorizer::new(1000);
        let owner = Identity::UnixPeer {
            uid: 1000,
            gid: 1000,
        };
        let other = Identity::UnixPeer {
            uid: 1001,
            gid: 1000,
        };
        let tcp = Identity::TcpPeer {
            addr: "127.0.0.1:4000".parse().unwrap(),
        };
        assert!(authz.decide(UPDATE, Some(owner.clone())).is_ok());
        assert!(authz.decide(GET, Some(tcp.clone())).is_ok());
        assert_eq!(
            authz.decide(UPDATE, Some(tcp)),
            Err(AuthzError::RoleRequired {
                required: Role::Admin,
                caller: "tcp:127.0.0.1:4000".into()
            })
        );
        assert!(matches!(
            authz.decide(GET, Some(other)),
            Err(AuthzError::RoleRequired { .. })
        ));
        assert_eq!(authz.decide(GET, None), Err(AuthzError::Unauthenticated));
        assert_eq!(authz.decide("/grpc.health.v1.Health/Check", None), Ok(None));
    }
}
