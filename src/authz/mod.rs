//! Authorization: one tower layer, before every handler, that decides which role each RPC
//! needs, who the caller is (Unix peer credentials, TLS client certificate, or bearer
//! token), and whether the caller holds the role; it also writes the audit line of every
//! mutation and refusal. Deny by default: an RPC it does not know needs `admin`.

pub mod rules;

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use arc_swap::ArcSwap;
use tonic::{
    body::Body,
    transport::server::{TcpConnectInfo, UdsConnectInfo},
};
use tower::{Layer, Service};

pub use rules::{CertName, Identity, Role, Rules, RulesError};

use crate::{
    audit::{AuditLog, AuditRecord, AuditSubject},
    metrics::Metrics,
    rpc::{self, code_name},
};

/// The peer of a TLS connection, left in each request's extensions by the TLS transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    pub addr: Option<SocketAddr>,
    /// The client certificate's name; `None` when the client sent no certificate (only
    /// possible when token-only callers are allowed).
    pub name: Option<CertName>,
}

/// The caller of a request that came through the AWS-protocol door, left in its extensions
/// by the door once its SigV4 signature was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsPeer {
    /// The access key id the request was signed with.
    pub access_key_id: String,
    /// The TCP peer that sent it.
    pub addr: Option<SocketAddr>,
    /// The account the key acts in (its profile's `aws_account_id`, else the sidecar's own).
    pub account_id: String,
}

/// The authenticated caller of a request and the role the rules give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: Identity,
    pub role: Option<Role>,
    /// Its roles per scope, when a rule that matches it is limited to some.
    pub scoped: Option<rpc::ScopedRoles>,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error(transparent)]
    RoleRequired(#[from] rpc::RoleRequired),
}

/// What the `authorization` metadata holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer {
    Absent,
    Malformed,
    /// The SHA-256 of the token; the token itself is not kept.
    Token([u8; 32]),
}

impl Bearer {
    pub fn from_header(value: Option<&http::HeaderValue>) -> Bearer {
        let Some(value) = value else {
            return Bearer::Absent;
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        match token {
            Some(token) => Bearer::Token(rules::token_hash(token)),
            None => Bearer::Malformed,
        }
    }
}

/// Where the rules come from, so they can be read again.
#[derive(Debug, Clone)]
pub enum RulesSource {
    /// Fixed rules (the defaults).
    Fixed(Rules),
    /// A rules file, read again on change and on SIGHUP.
    File {
        path: std::path::PathBuf,
        loopback_anonymous: Option<Role>,
    },
}

/// The rules in force, replaceable while serving.
#[derive(Debug)]
pub struct Authorizer {
    /// Read by every call without a lock or a shared count (a read lock, or a clone of the
    /// `Arc`, is a write to a line both cores would take turns owning).
    rules: ArcSwap<Rules>,
    source: RulesSource,
}

impl Authorizer {
    pub fn new(source: RulesSource) -> Result<Authorizer, RulesError> {
        let rules = match &source {
            RulesSource::Fixed(rules) => rules.clone(),
            RulesSource::File {
                path,
                loopback_anonymous,
            } => Rules::from_file(path, *loopback_anonymous)?,
        };
        Ok(Authorizer {
            rules: ArcSwap::from_pointee(rules),
            source,
        })
    }

    /// The rules file, when the rules come from one.
    pub fn rules_file(&self) -> Option<&std::path::Path> {
        match &self.source {
            RulesSource::File { path, .. } => Some(path),
            RulesSource::Fixed(_) => None,
        }
    }

    /// Reads the rules file again. A file that does not parse is refused and the rules in
    /// force stay. Returns whether the rules changed.
    pub fn reload(&self) -> Result<bool, RulesError> {
        let RulesSource::File {
            path,
            loopback_anonymous,
        } = &self.source
        else {
            return Ok(false);
        };
        let new = Rules::from_file(path, *loopback_anonymous)?;
        let changed = **self.rules.load() != new;
        if changed {
            self.rules.store(Arc::new(new));
        }
        Ok(changed)
    }

    /// The role the rules give an identity (for metrics and audit of refusals).
    pub fn role_of(&self, identity: &Identity) -> Option<Role> {
        self.rules.load().role_of(identity)
    }

    /// Decides one request: the caller, or why it is refused. A bearer token, when
    /// present, is the caller's identity; otherwise the connection's.
    pub fn decide(
        &self,
        method: Option<&rpc::Method>,
        connection: Option<Identity>,
        bearer: Bearer,
    ) -> Result<Option<Caller>, AuthzError> {
        let Some(required) = rpc::role_needed(method) else {
            return Ok(None);
        };
        let rules = self.rules.load();
        let identity = match bearer {
            Bearer::Absent => connection.ok_or(AuthzError::Unauthenticated(
                "the caller could not be identified",
            ))?,
            Bearer::Malformed => {
                return Err(AuthzError::Unauthenticated(
                    "the authorization metadata is not `Bearer <token>`",
                ));
            }
            Bearer::Token(sha256) if rules.knows_token(&sha256) => Identity::Token { sha256 },
            Bearer::Token(_) => {
                return Err(AuthzError::Unauthenticated("the bearer token is not known"));
            }
        };
        if matches!(identity, Identity::LoopbackPeer { .. }) && !rules.admits_anonymous_loopback() {
            return Err(AuthzError::Unauthenticated(
                "anonymous loopback callers are not admitted; present a bearer token",
            ));
        }
        let role = rules.role_of(&identity);
        if role.is_some_and(|role| role >= required) {
            let scoped = rules.scoped_roles(&identity);
            Ok(Some(Caller {
                identity,
                role,
                scoped,
            }))
        } else {
            Err(AuthzError::RoleRequired(rpc::RoleRequired {
                required,
                caller: identity.to_string(),
                about: "this call",
            }))
        }
    }
}

/// The connection's identity, from what the transport left in the request.
fn connection_identity<B>(request: &http::Request<B>) -> Option<Identity> {
    let extensions = request.extensions();
    if let Some(peer) = extensions.get::<AwsPeer>() {
        return Some(Identity::AwsAccessKey {
            access_key_id: peer.access_key_id.clone(),
        });
    }
    if let Some(peer) = extensions.get::<TlsPeer>() {
        return peer.name.clone().map(|name| Identity::Certificate { name });
    }
    if let Some(info) = extensions.get::<UdsConnectInfo>() {
        return info.peer_cred.map(|cred| Identity::UnixPeer {
            uid: cred.uid(),
            gid: cred.gid(),
        });
    }
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .filter(|addr| addr.ip().is_loopback())
        .map(|addr| Identity::LoopbackPeer { addr })
}

/// Who a refused caller is, for the summary of refusals not written one by one, when it
/// did not authenticate: no identity, a malformed or unknown token, or an anonymous
/// loopback caller (any local process can be one, from any 127.x address). `None` for an
/// authenticated caller short of a role, whose refusals are always written. The address
/// is given without its port, so that one host's flood sums into one entry.
fn refusal_source(
    error: &AuthzError,
    bearer: Bearer,
    connection: Option<&Identity>,
) -> Option<String> {
    let anonymous = matches!(bearer, Bearer::Absent)
        && matches!(connection, Some(Identity::LoopbackPeer { .. }));
    if !matches!(error, AuthzError::Unauthenticated(_)) && !anonymous {
        return None;
    }
    let from = match connection {
        Some(Identity::LoopbackPeer { addr }) => format!("tcp:{}", addr.ip()),
        Some(identity) => identity.to_string(),
        None => "an unknown connection".to_owned(),
    };
    Some(match bearer {
        Bearer::Absent => from,
        Bearer::Malformed => format!("malformed-token via {from}"),
        Bearer::Token(sha256) => format!("{} via {from}", Identity::Token { sha256 }),
    })
}

/// Writes the audit line of one call when finished, or as `cancelled` if dropped first.
pub struct AuditGuard {
    log: AuditLog,
    record: Option<AuditRecord>,
    subject: AuditSubject,
    started: Instant,
}

impl AuditGuard {
    /// The guard of `record`, written when the call ends or the guard is dropped.
    fn new(log: AuditLog, record: AuditRecord) -> AuditGuard {
        AuditGuard {
            subject: AuditSubject::of_call(log.clone(), &record),
            log,
            record: Some(record),
            started: Instant::now(),
        }
    }

    fn finish(&mut self, decision: &'static str, code: tonic::Code) {
        if let Some(mut record) = self.record.take() {
            self.subject.fill(&mut record);
            // The service refuses a role short for what the call is about.
            record.decision = if code == tonic::Code::PermissionDenied {
                "denied"
            } else {
                decision
            };
            record.code = code_name(code).to_owned();
            record.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            self.log.write(&record);
        }
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        self.finish("cancelled", tonic::Code::Cancelled);
    }
}

/// The tower layer that authorizes (and audits) every request.
#[derive(Clone)]
pub struct AuthzLayer(Arc<AuthzShared>);

/// What every call's service shares, behind one `Arc`: tonic clones the service for every
/// call, and each clone and drop is a write to a count that every core shares.
struct AuthzShared {
    authorizer: Arc<Authorizer>,
    audit: AuditLog,
    metrics: Metrics,
}

impl AuthzLayer {
    pub fn new(authorizer: Arc<Authorizer>, audit: AuditLog, metrics: Metrics) -> AuthzLayer {
        AuthzLayer(Arc::new(AuthzShared {
            authorizer,
            audit,
            metrics,
        }))
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            shared: self.0.clone(),
        }
    }
}

/// The service [`AuthzLayer`] wraps around the routes.
#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    shared: Arc<AuthzShared>,
}

impl<S, B> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = AuthzFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = rpc::method(path);
        let connection = connection_identity(&request);
        let bearer = Bearer::from_header(request.headers().get(http::header::AUTHORIZATION));
        let decision = self
            .shared
            .authorizer
            .decide(method, connection.clone(), bearer);
        // The role the caller has (not enough, when refused), for the audit line and the
        // metrics; a refused token has none, whatever connection carried it.
        let role = match &decision {
            Ok(admitted) => admitted.as_ref().and_then(|c| c.role),
            Err(_) => match (bearer, &connection) {
                (Bearer::Absent, Some(identity)) => self.shared.authorizer.role_of(identity),
                _ => None,
            },
        };
        if rpc::role_needed(method).is_some() {
            self.shared
                .metrics
                .count_authz(method, role, decision.is_ok());
        }
        // Mutations, secret-bearing reads, calls of paths not served and refusals are
        // audited; other reads pay nothing for it.
        let audited = method.is_none_or(|m| m.access.mutation || m.access.secret_bearing);
        // The id the audit line and the refusal's log line are written under.
        let record_id =
            (audited || decision.is_err()).then(|| rpc::request_id_or_new(request.headers()));
        // A refusal is logged inside the call's span, or, for a cached read the outer layer
        // left without one, a span of its own.
        let refusal_span = decision.is_err().then(|| {
            let current = tracing::Span::current();
            match &record_id {
                Some(id) if current.is_none() => {
                    rpc::rpc_span(id.to_str().unwrap_or_default(), path)
                }
                _ => current,
            }
        });
        let mut guard = record_id.as_ref().map(|id| {
            let record = AuditRecord {
                role: role.map(|r| r.to_string()),
                ..AuditRecord::new(
                    id.to_str().unwrap_or_default(),
                    presented_identity(bearer, connection.as_ref()),
                    connection.as_ref().map(Identity::to_string),
                    path,
                )
            };
            Box::new(AuditGuard::new(self.shared.audit.clone(), record))
        });
        if let Some(guard) = &guard {
            request.extensions_mut().insert(guard.subject.clone());
        }
        match decision {
            Err(error) => {
                // A caller that did not authenticate is logged and audited at a bounded
                // rate (it was counted above); an authenticated one always.
                let written = refusal_source(&error, bearer, connection.as_ref())
                    .is_none_or(|source| self.shared.audit.admit_refusal(&source));
                let _entered = refusal_span.map(tracing::Span::entered);
                if written {
                    tracing::info!(%error, "call refused");
                }
                let mut status = tonic::Status::from(error);
                if let Some(guard) = &mut guard {
                    if written {
                        guard.finish("denied", status.code());
                    } else {
                        guard.record = None;
                    }
                }
                // The answer names the id the refusal was recorded under.
                if let Some(id) = record_id {
                    rpc::answer_request_id(status.metadata_mut().as_mut(), id);
                }
                let body = request.into_body();
                AuthzFuture::Refused {
                    answer: Box::pin(rpc::answer_after_request(body, status.into_http())),
                }
            }
            Ok(admitted) => {
                let acting_account = request
                    .extensions()
                    .get::<AwsPeer>()
                    .map(|peer| peer.account_id.clone());
                if let Some(context) =
                    admitted.and_then(|caller| caller_context(caller, method, acting_account))
                {
                    request.extensions_mut().insert(context);
                }
                // Called now, on the instance poll_ready readied; the answer is awaited by
                // the future.
                AuthzFuture::Admitted {
                    answer: self.inner.call(request),
                    guard,
                }
            }
        }
    }
}

/// The identity a caller presented, as audit records name it: its bearer token's when it
/// sent one (known or not), else its connection's; `unknown` when there is neither.
fn presented_identity(bearer: Bearer, connection: Option<&Identity>) -> String {
    match bearer {
        Bearer::Token(sha256) => Identity::Token { sha256 }.to_string(),
        Bearer::Malformed => "malformed-token".to_owned(),
        Bearer::Absent => connection.map_or_else(|| "unknown".to_owned(), Identity::to_string),
    }
}

/// What the service checks itself once it knows what the call is about (a stored key's
/// role, the caller's quota), for the methods that need it.
fn caller_context(
    caller: Caller,
    method: Option<&rpc::Method>,
    acting_account: Option<String>,
) -> Option<rpc::CallerContext> {
    let access = method?.access;
    let required = access.role?;
    (access.secret_bearing
        || access.stored_key_role.is_some()
        || caller.scoped.is_some()
        || acting_account.is_some())
    .then(|| rpc::CallerContext {
        role: caller.role,
        scoped: caller.scoped,
        acting_account,
        required,
        quota_key: match &caller.identity {
            Identity::LoopbackPeer { addr } => format!("tcp:{}", addr.ip()),
            identity => identity.to_string(),
        },
        caller: caller.identity.to_string(),
        stored_key_role: access.stored_key_role,
    })
}

pin_project_lite::pin_project! {
    /// A call's answer as the layer awaits it, named rather than boxed: the future of every
    /// call would otherwise be an allocation of its own.
    #[project = AuthzFutureProjection]
    pub enum AuthzFuture<F> {
        Admitted {
            #[pin]
            answer: F,
            // The audit line, for audited calls; boxed, as every layer above moves this
            // future, and reads (not audited) should not copy the record's room each time.
            guard: Option<Box<AuditGuard>>,
        },
        Refused {
            answer: std::pin::Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>,
        },
    }
}

impl<F, E> Future for AuthzFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthzFutureProjection::Admitted { answer, guard } => {
                let result = std::task::ready!(answer.poll(cx));
                if let Some(guard) = guard {
                    let code = result
                        .as_ref()
                        .map_or(tonic::Code::Internal, rpc::grpc_code);
                    guard.finish("allowed", code);
                }
                Poll::Ready(result)
            }
            AuthzFutureProjection::Refused { answer } => answer.as_mut().poll(cx).map(Ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &str = "/inspectorkeyd.v1.EncryptionKeyService/GetEncryptionKey";
    const UPDATE: &str = "/inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey";

    #[test]
    fn default_rules() {
        let token = "local-admin-token";
        let authz = Authorizer::new(RulesSource::Fixed(Rules::defaults(
            1000,
            rules::token_hash(token),
            Some(Role::ReadOnly),
        )))
        .unwrap();
        let owner = Identity::UnixPeer {
            uid: 1000,
            gid: 1000,
        };
        let other = Identity::UnixPeer {
            uid: 1001,
            gid: 1000,
        };
        let tcp = Identity::LoopbackPeer {
            addr: "127.0.0.1:4000".parse().unwrap(),
        };
        assert!(
            authz
                .decide(rpc::method(UPDATE), Some(owner), Bearer::Absent)
                .is_ok()
        );
        assert!(
            authz
                .decide(rpc::method(GET), Some(tcp.clone()), Bearer::Absent)
                .is_ok()
        );
        assert_eq!(
            authz.decide(rpc::method(UPDATE), Some(tcp.clone()), Bearer::Absent),
            Err(AuthzError::RoleRequired(rpc::RoleRequired {
                required: Role::Admin,
                caller: "tcp:127.0.0.1:4000".into(),
                about: "this call",
            }))
        );
        let admin = authz
            .decide(
                rpc::method(UPDATE),
                Some(tcp.clone()),
                Bearer::Token(rules::token_hash(token)),
            )
            .unwrap()
            .unwrap();
        assert_eq!(admin.role, Some(Role::Admin));
        assert!(matches!(
            authz.decide(
                rpc::method(GET),
                Some(tcp),
                Bearer::Token(rules::token_hash("guess"))
            ),
            Err(AuthzError::Unauthenticated(_))
        ));
        assert!(matches!(
            authz.decide(rpc::method(GET), Some(other), Bearer::Absent),
            Err(AuthzError::RoleRequired(_))
        ));
        assert!(matches!(
            authz.decide(rpc::method(GET), None, Bearer::Absent),
            Err(AuthzError::Unauthenticated(_))
        ));
        assert_eq!(
            authz.decide(
                rpc::method("/grpc.health.v1.Health/Check"),
                None,
                Bearer::Absent
            ),
            Ok(None)
        );
    }

    #[test]
    fn only_callers_that_did_not_authenticate_are_written_at_a_bounded_rate() {
        let loopback = Identity::LoopbackPeer {
            addr: "127.0.0.3:4000".parse().unwrap(),
        };
        let unix = Identity::UnixPeer {
            uid: 1001,
            gid: 1001,
        };
        let short = AuthzError::RoleRequired(rpc::RoleRequired {
            required: Role::Admin,
            caller: String::new(),
            about: "this call",
        });
        let unknown = AuthzError::Unauthenticated("the bearer token is not known");
        // An anonymous loopback caller short of a role, by its address without the port.
        assert_eq!(
            refusal_source(&short, Bearer::Absent, Some(&loopback)).as_deref(),
            Some("tcp:127.0.0.3")
        );
        // An unknown token, whatever carried it.
        let token = rules::token_hash("guess");
        assert_eq!(
            refusal_source(&unknown, Bearer::Token(token), Some(&unix)),
            Some(format!(
                "{} via unix:uid=1001,gid=1001",
                Identity::Token { sha256: token }
            ))
        );
        assert!(refusal_source(&unknown, Bearer::Absent, None).is_some());
        // Authenticated callers short of a role: always written.
        assert_eq!(refusal_source(&short, Bearer::Absent, Some(&unix)), None);
        assert_eq!(
            refusal_source(&short, Bearer::Token(token), Some(&loopback)),
            None
        );
    }

    #[test]
    fn bearer_metadata() {
        let header = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert_eq!(Bearer::from_header(None), Bearer::Absent);
        assert_eq!(
            Bearer::from_header(Some(&header("Basic abc"))),
            Bearer::Malformed
        );
        assert_eq!(
            Bearer::from_header(Some(&header("Bearer "))),
            Bearer::Malformed
        );
        assert_eq!(
            Bearer::from_header(Some(&header("Bearer abc"))),
            Bearer::Token(rules::token_hash("abc"))
        );
    }
}
