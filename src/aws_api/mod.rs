//! The AWS-protocol door: a transport & identity layer, like the TLS listener, that serves
//! Amazon Inspector's REST-JSON API for `GetEncryptionKey`, `UpdateEncryptionKey`,
//! `ResetEncryptionKey` and `BatchGetCodeSnippet` over HTTP/1.1 (what the AWS CLI and SDKs
//! speak), so they work against the sidecar by changing only their endpoint URL.
//!
//! A request's SigV4 signature is verified ([`sigv4`]) against the credentials file
//! ([`credentials`]) from its head first: one without a known key, scope and time, or with a
//! bad signature over the payload hash it sent, is refused before its body is read. Bodies
//! are read within `ops.max_request_bytes`, `ops.rpc_timeout` and a budget of bytes all
//! connections share ([`BODY_BUDGET`]), so what unauthenticated callers can make the door
//! hold is bounded whatever their number. The request is then
//! turned into the gRPC request message ([`protocol`]) and handed, framed, to the same
//! layered service the gRPC listeners serve (ops → authorization → the tonic routes), with
//! the verified access key id as the caller's identity ([`crate::authz::AwsPeer`]), in the
//! scope AWS would act in: the Region the request is signed for and the access key's account
//! (its profile's `aws_account_id`, else the sidecar's own), which the service looks up among
//! the managed scopes as it does a gRPC request's. So
//! authorization, audit, request ids, metrics, shedding, the verification gate and the
//! cache are the gRPC API's own. The answer, a message or a `tonic::Status`, becomes the
//! service model's JSON or error in [`protocol`]. Connections are under the same limits as
//! every listener's (`crate::connection`).

pub mod credentials;
pub mod protocol;
pub mod sigv4;

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf, Bytes};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::{
    audit::{AuditLog, AuditRecord},
    authz::AwsPeer,
    metrics::Metrics,
    rpc,
};
pub use credentials::AwsCredentials;
use protocol::{AwsError, Operation};

/// The gRPC stack the door calls: the gRPC listeners' layered service.
pub type GrpcService = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// Headers of the answer.
const REQUEST_ID: &str = "x-amzn-requestid";
const ERROR_TYPE: &str = "x-amzn-errortype";

/// Bytes of request bodies all the door's connections may hold at once (at least one
/// `ops.max_request_bytes`). The served requests' bodies are a few hundred bytes; past the
/// budget a request is answered `ThrottlingException` without its body being read.
pub const BODY_BUDGET: usize = 8 << 20;

/// Largest read buffer of a connection (hyper's default is ~400 KiB, which 512 connections
/// of a flood would multiply): a request's head must fit (as gRPC metadata must fit in
/// 16 KiB), and a body is taken from the socket this much at a time.
const MAX_CONNECTION_BUFFER: usize = 16 << 10;

/// What the door needs to answer requests.
pub struct Door {
    grpc: GrpcService,
    credentials: Arc<AwsCredentials>,
    /// The sidecar's own account: the one a key whose profile names none acts in.
    own_account_id: String,
    max_request_bytes: usize,
    /// Permits of [`BODY_BUDGET`] bytes, held by the bodies being read or answered.
    body_budget: tokio::sync::Semaphore,
    /// Longest a request may take to arrive whole (the RPC's own deadline starts after).
    read_timeout: Duration,
    audit: AuditLog,
    metrics: Metrics,
}

/// Limits of the door's connections.
#[derive(Debug, Clone, Copy)]
pub struct DoorLimits {
    pub max_request_bytes: usize,
    pub read_timeout: Duration,
    /// Time a client has to send a request's headers, and that an idle connection is kept.
    pub header_timeout: Duration,
    pub max_age: Duration,
    pub max_age_grace: Duration,
}

impl Door {
    pub fn new(
        grpc: GrpcService,
        credentials: Arc<AwsCredentials>,
        own_account_id: String,
        limits: DoorLimits,
        audit: AuditLog,
        metrics: Metrics,
    ) -> Door {
        Door {
            grpc,
            credentials,
            own_account_id,
            max_request_bytes: limits.max_request_bytes,
            body_budget: tokio::sync::Semaphore::new(
                BODY_BUDGET
                    .max(limits.max_request_bytes)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            ),
            read_timeout: limits.read_timeout,
            audit,
            metrics,
        }
    }

    /// Answers one HTTP request from `peer`.
    pub async fn handle<B>(
        &self,
        request: http::Request<B>,
        peer: Option<SocketAddr>,
    ) -> http::Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        // The call's id: the caller's x-request-id when it sent a usable one, else a new one;
        // the gRPC layers record the call under it, and every answer names it.
        let id = rpc::request_id_or_new(&parts.headers);
        let request_id = id.to_str().unwrap_or_default().to_owned();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = std::pin::pin!(body);
        if declared.is_some_and(|length| length > self.max_request_bytes as u64) {
            return rpc::answer_after_request(body, error_response(&self.too_large(), &request_id))
                .await;
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let now = std::time::SystemTime::now();
        // One version of the credentials file for the whole request: the secret that verifies
        // it and the account its key acts in come from the same one.
        let keys = self.credentials.table();
        let secret_of = |id: &str| keys.secret_of(id);
        let head = sigv4::Head {
            method: parts.method.as_str(),
            path_and_query: &path_and_query,
            headers: &parts.headers,
        };
        let verdict = match sigv4::verify_head(&head, secret_of, now) {
            Ok(verdict) => verdict,
            Err(error) => {
                let answer = self.refuse_signature(&parts, &error, peer, &request_id);
                return rpc::answer_after_request(body, answer).await;
            }
        };
        let body = match self.read_body(declared, body.as_mut()).await {
            Ok(body) => body,
            Err(error) => {
                return rpc::answer_after_request(body, error_response(&error, &request_id)).await;
            }
        };
        let verified = match verdict {
            sigv4::HeadVerdict::Signed {
                verified,
                payload_sha256,
            } => sigv4::check_payload(&payload_sha256, &body.bytes).map(|()| verified),
            sigv4::HeadVerdict::NeedsBody => sigv4::verify_request(
                &sigv4::Request {
                    method: parts.method.as_str(),
                    path_and_query: &path_and_query,
                    headers: &parts.headers,
                    body: &body.bytes,
                },
                secret_of,
                now,
            ),
        };
        let sigv4::Verified {
            access_key_id,
            region,
        } = match verified {
            Ok(verified) => verified,
            Err(error) => return self.refuse_signature(&parts, &error, peer, &request_id),
        };
        // The key verified, so this version of the file holds it.
        let key_account = keys.account_of(&access_key_id).flatten().map(str::to_owned);
        drop(keys);
        let operation = match protocol::route(parts.method.as_str(), parts.uri.path()) {
            Ok(operation) => operation,
            Err(error) => return error_response(&error, &request_id),
        };
        let scope = protocol::CallScope {
            account_id: key_account.as_deref().unwrap_or_default(),
            region: &region,
        };
        let decoded = protocol::decode_request_in(operation, parts.uri.query(), &body.bytes, scope);
        let message = match decoded {
            Ok(message) => message,
            Err(error) => return error_response(&error, &request_id),
        };
        // The budget is given back once the message is made from the body.
        drop(body);
        let call = http::Request::builder()
            .method(http::Method::POST)
            .uri(operation.grpc_path())
            .version(http::Version::HTTP_2)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(rpc::REQUEST_ID, id)
            .extension(AwsPeer {
                access_key_id,
                addr: peer,
                // The account the key acts in, as the findings' ARNs name accounts.
                account_id: key_account.unwrap_or_else(|| self.own_account_id.clone()),
            })
            .body(tonic::body::Body::new(Full::new(grpc_frame(&message))));
        let call = match call {
            Ok(call) => call,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the gRPC call");
                return error_response(&internal(), &request_id);
            }
        };
        let Ok(answer) = self.grpc.clone().oneshot(call).await;
        answer_of(operation, answer, &request_id).await
    }

    fn too_large(&self) -> AwsError {
        AwsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            format!(
                "the request body is larger than ops.max_request_bytes ({} bytes)",
                self.max_request_bytes
            ),
        )
    }

    /// The body (of `declared` length, when the head says), within `max_request_bytes`,
    /// `read_timeout` and the body budget: room for the declared length is taken before a
    /// byte is read, room for a body of undeclared length as it grows; without room the
    /// request is answered `ThrottlingException` and the rest of its body is not read.
    async fn read_body<B>(&self, declared: Option<u64>, body: B) -> Result<ReadBody<'_>, AwsError>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut read = ReadBody {
            bytes: Vec::new(),
            room: None,
            room_bytes: 0,
        };
        if let Some(declared) = declared {
            // Not past max_request_bytes, which the head was checked against.
            self.take_room(&mut read, usize::try_from(declared).unwrap_or(usize::MAX))?;
        }
        let collect = async {
            let mut body = std::pin::pin!(body);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    AwsError::unreadable(format!("the request body could not be read: {e}"))
                })?;
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                let length = read.bytes.len().saturating_add(data.remaining());
                if length > self.max_request_bytes {
                    return Err(self.too_large());
                }
                // Doubling, so an undeclared body is copied a few times at most.
                let doubled = read
                    .room_bytes
                    .saturating_mul(2)
                    .min(self.max_request_bytes);
                self.take_room(&mut read, length.max(doubled))?;
                while data.has_remaining() {
                    let chunk = data.chunk();
                    let taken = chunk.len();
                    read.bytes.extend_from_slice(chunk);
                    data.advance(taken);
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.read_timeout, collect)
            .await
            .map_err(|_| {
                AwsError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "RequestTimeoutException",
                    format!(
                        "the request body did not arrive within ops.rpc_timeout ({:?})",
                        self.read_timeout
                    ),
                )
            })??;
        Ok(read)
    }

    /// Room for `wanted` bytes in `read`, from the body budget.
    fn take_room<'a>(&'a self, read: &mut ReadBody<'a>, wanted: usize) -> Result<(), AwsError> {
        if wanted <= read.room_bytes {
            return Ok(());
        }
        let more = u32::try_from(wanted - read.room_bytes).map_err(|_| self.too_large())?;
        let permit = self
            .body_budget
            .try_acquire_many(more)
            .map_err(|_| self.busy())?;
        match &mut read.room {
            Some(held) => held.merge(permit),
            None => read.room = Some(permit),
        }
        read.room_bytes = wanted;
        read.bytes.reserve_exact(wanted - read.bytes.len());
        Ok(())
    }

    fn busy(&self) -> AwsError {
        AwsError {
            retry_after: Some(1),
            ..AwsError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlingException",
                "the sidecar holds as many request bodies as it may; retry",
            )
        }
    }

    /// A request whose signature was not accepted: 403 with AWS's code, counted as a
    /// refusal (of the operation it asked for, or of `other`), and logged and audited with
    /// the access key id it claimed, at a bounded rate: its caller did not authenticate.
    fn refuse_signature(
        &self,
        parts: &http::request::Parts,
        error: &sigv4::SignatureError,
        peer: Option<SocketAddr>,
        request_id: &str,
    ) -> http::Response<Full<Bytes>> {
        let operation = protocol::route(parts.method.as_str(), parts.uri.path()).ok();
        let rpc = operation.map_or("", Operation::grpc_path);
        self.metrics.count_authz(rpc::method(rpc), None, false);
        let claimed = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(claimed_access_key)
            .map(|id| format!("aws:{id}"));
        let caller = claimed.unwrap_or_else(|| "unknown".to_owned());
        let source = match peer {
            Some(addr) => format!("{caller} via aws-api:{}", addr.ip()),
            None => format!("{caller} via aws-api"),
        };
        if self.audit.admit_refusal(&source) {
            tracing::info!(
                request_id = %request_id,
                peer = ?peer,
                operation = operation.map_or("unknown", Operation::name),
                error = %error,
                "AWS-protocol request refused: its signature was not accepted"
            );
            self.audit.write(&AuditRecord {
                decision: "denied",
                code: "UNAUTHENTICATED".to_owned(),
                ..AuditRecord::new(
                    request_id,
                    caller,
                    peer.map(|addr| format!("aws-api:{addr}")),
                    rpc,
                )
            });
        }
        let error = AwsError::new(StatusCode::FORBIDDEN, error.code(), error.to_string());
        error_response(&error, request_id)
    }
}

/// A request body read, and its room in the door's body budget, given back on drop.
struct ReadBody<'a> {
    bytes: Vec<u8>,
    room: Option<tokio::sync::SemaphorePermit<'a>>,
    /// Bytes of `room`.
    room_bytes: usize,
}

/// The access key id an `Authorization` header claims, when it is shaped like one (for the
/// audit line of a refused signature).
fn claimed_access_key(authorization: &str) -> Option<&str> {
    let credential = authorization.split("Credential=").nth(1)?;
    let id = credential.split('/').next()?;
    crate::domain::is_access_key_id(id).then_some(id)
}

fn internal() -> AwsError {
    AwsError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerException",
        "internal error; see the sidecar's log",
    )
}

/// A gRPC message frame: uncompressed flag, big-endian length, message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// Headers of the gRPC answer carried over to the HTTP one: the cache's.
const CARRIED_HEADERS: [&str; 2] = [crate::rpc::CACHE_HEADER, crate::rpc::CACHE_AGE_HEADER];

/// The HTTP answer of a gRPC answer.
async fn answer_of(
    operation: Operation,
    answer: http::Response<tonic::body::Body>,
    request_id: &str,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = answer.into_parts();
    let carried: Vec<(&str, HeaderValue)> = CARRIED_HEADERS
        .iter()
        .filter_map(|name| Some((*name, parts.headers.get(*name)?.clone())))
        .collect();
    let with_carried = |mut response: http::Response<Full<Bytes>>| {
        for (name, value) in &carried {
            response.headers_mut().insert(*name, value.clone());
        }
        response
    };
    // An error comes in the headers alone ("trailers-only").
    if let Some(status) = tonic::Status::from_header_map(&parts.headers)
        && status.code() != tonic::Code::Ok
    {
        let error = protocol::AwsError::from_status(&status, operation);
        return with_carried(error_response(&error, request_id));
    }
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(e) => {
            tracing::error!(error = %e, "the gRPC answer could not be read");
            return error_response(&internal(), request_id);
        }
    };
    if let Some(status) = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        .filter(|s| s.code() != tonic::Code::Ok)
    {
        let error = protocol::AwsError::from_status(&status, operation);
        return with_carried(error_response(&error, request_id));
    }
    let frame = collected.to_bytes();
    let Some(message) = frame.get(5..) else {
        tracing::error!("the gRPC answer has no message");
        return error_response(&internal(), request_id);
    };
    match protocol::encode_response(operation, message) {
        Ok(json) => with_carried(json_response(StatusCode::OK, &json, request_id)),
        Err(error) => error_response(&error, request_id),
    }
}

fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    request_id: &str,
) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, id);
    }
    response
}

/// The one shape of every error answer: status, `x-amzn-ErrorType`, `x-amzn-RequestId`,
/// `Retry-After` when there is one, and the JSON body.
fn error_response(error: &AwsError, request_id: &str) -> http::Response<Full<Bytes>> {
    let mut response = json_response(error.status, &error.body(), request_id);
    let headers = response.headers_mut();
    headers.insert(ERROR_TYPE, HeaderValue::from_static(error.code));
    if let Some(seconds) = error.retry_after {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The remote address of an accepted connection, from what its transport knows.
pub trait PeerAddr {
    fn peer_addr(&self) -> Option<SocketAddr>;
}

impl PeerAddr for tonic::transport::server::TcpConnectInfo {
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.remote_addr()
    }
}

impl PeerAddr for crate::authz::TlsPeer {
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.addr
    }
}

/// The door's accept loop: serves each connection `incoming` yields (already admitted
/// within the listener's limits) until the stop signal, then waits for the connections to
/// finish the requests they are answering.
pub async fn serve<S, IO, F>(
    incoming: S,
    door: Arc<Door>,
    limits: DoorLimits,
    stopped: impl Fn() -> F + Send + 'static,
) where
    S: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: PeerAddr,
    F: Future<Output = ()> + Send + 'static,
{
    use tokio_stream::StreamExt;
    let mut incoming = incoming;
    let mut connections = tokio::task::JoinSet::new();
    let stop = stopped();
    let mut stop = std::pin::pin!(stop);
    loop {
        let next = tokio::select! {
            () = stop.as_mut() => break,
            next = incoming.next() => next,
            // Finished connections are collected as they go, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Some(accepted) = next else { break };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "AWS-protocol connection not accepted");
                continue;
            }
        };
        let peer = io.connect_info().peer_addr();
        connections.spawn(serve_connection(door.clone(), io, peer, limits, stopped()));
    }
    drop(incoming);
    while connections.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 on one accepted connection until it closes, the stop signal comes (then
/// the request in flight finishes) or it reaches `limits.max_age`.
async fn serve_connection<IO>(
    door: Arc<Door>,
    io: IO,
    peer: Option<SocketAddr>,
    limits: DoorLimits,
    stopped: impl Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let door = door.clone();
        async move { Ok::<_, Infallible>(door.handle(request, peer).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let aged = tokio::time::sleep(limits.max_age);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = ?peer, error = %e, "AWS-protocol connection ended");
            }
            return;
        }
        () = stopped => {}
        () = aged => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.max_age_grace, connection).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claimed_key_of_a_refused_signature_is_kept_only_when_it_is_one() {
        assert_eq!(
            claimed_access_key(
                "AWS4-HMAC-SHA256 Credential=KEYDABCDEFGHIJKLMNOP/20260101/us-east-1/inspector2/aws4_request, SignedHeaders=host, Signature=00"
            ),
            Some("KEYDABCDEFGHIJKLMNOP")
        );
        assert_eq!(
            claimed_access_key("AWS4-HMAC-SHA256 Credential=a\nb/x"),
            None
        );
        assert_eq!(claimed_access_key("Bearer x"), None);
    }

    #[test]
    fn errors_have_the_model_shape() {
        let error = AwsError {
            retry_after: Some(2),
            ..AwsError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlingException",
                "slow down",
            )
        };
        let response = error_response(&error, "id-1");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers[ERROR_TYPE], "ThrottlingException");
        assert_eq!(headers[REQUEST_ID], "id-1");
        assert_eq!(headers[http::header::RETRY_AFTER], "2");
        assert_eq!(headers[http::header::CONTENT_TYPE], "application/json");
    }
}
