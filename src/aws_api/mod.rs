//! The AWS-protocol door: a transport & identity layer, like the TLS listener, that serves
//! Amazon Inspector's REST-JSON API for `GetEncryptionKey`, `UpdateEncryptionKey`,
//! `ResetEncryptionKey` and `BatchGetCodeSnippet` over HTTP/1.1 (what the AWS CLI and SDKs
//! speak), so they work against the sidecar by changing only their endpoint URL.
//!
//! A request is read (within `ops.max_request_bytes` and `ops.rpc_timeout`), its SigV4
//! signature verified ([`sigv4`]) against the credentials file ([`credentials`]), then
//! turned into the gRPC request message ([`protocol`]) and handed, framed, to the same
//! layered service the gRPC listeners serve (ops → authorization → the tonic routes), with
//! the verified access key id as the caller's identity ([`crate::authz::AwsPeer`]). So
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
use http_body_util::{BodyExt, Full, Limited};
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

/// What the door needs to answer requests.
pub struct Door {
    grpc: GrpcService,
    credentials: Arc<AwsCredentials>,
    region: String,
    max_request_bytes: usize,
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
        region: String,
        limits: DoorLimits,
        audit: AuditLog,
        metrics: Metrics,
    ) -> Door {
        Door {
            grpc,
            credentials,
            region,
            max_request_bytes: limits.max_request_bytes,
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
        let body = match self.read_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(error) => return error_response(&error, &request_id),
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let verified = sigv4::verify(
            &sigv4::Request {
                method: parts.method.as_str(),
                path_and_query: &path_and_query,
                headers: &parts.headers,
                body: &body,
            },
            |id| self.credentials.secret_of(id),
            &self.region,
            std::time::SystemTime::now(),
        );
        let access_key_id = match verified {
            Ok(id) => id,
            Err(error) => return self.refuse_signature(&parts, &error, peer, &request_id),
        };
        let operation = match protocol::route(parts.method.as_str(), parts.uri.path()) {
            Ok(operation) => operation,
            Err(error) => return error_response(&error, &request_id),
        };
        let message = match protocol::decode_request(operation, parts.uri.query(), &body) {
            Ok(message) => message,
            Err(error) => return error_response(&error, &request_id),
        };
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

    /// The body, within `max_request_bytes` and `read_timeout`.
    async fn read_body<B>(&self, headers: &http::HeaderMap, body: B) -> Result<Vec<u8>, AwsError>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let too_large = || {
            AwsError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
                format!(
                    "the request body is larger than ops.max_request_bytes ({} bytes)",
                    self.max_request_bytes
                ),
            )
        };
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_request_bytes as u64) {
            return Err(too_large());
        }
        let collected = tokio::time::timeout(
            self.read_timeout,
            Limited::new(body, self.max_request_bytes).collect(),
        )
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
        })?;
        match collected {
            Ok(collected) => {
                let mut data = collected.aggregate();
                let mut bytes = vec![0; data.remaining()];
                data.copy_to_slice(&mut bytes);
                Ok(bytes)
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(AwsError::unreadable(format!(
                "the request body could not be read: {e}"
            ))),
        }
    }

    /// A request whose signature was not accepted: 403 with AWS's code, counted as a
    /// refusal and audited (as the operation it asked for, when it names one), with the
    /// access key id it claimed.
    fn refuse_signature(
        &self,
        parts: &http::request::Parts,
        error: &sigv4::SignatureError,
        peer: Option<SocketAddr>,
        request_id: &str,
    ) -> http::Response<Full<Bytes>> {
        let operation = protocol::route(parts.method.as_str(), parts.uri.path()).ok();
        let rpc = operation.map_or("", Operation::grpc_path);
        tracing::info!(
            request_id = %request_id,
            peer = ?peer,
            operation = operation.map_or("unknown", Operation::name),
            error = %error,
            "AWS-protocol request refused: its signature was not accepted"
        );
        if let Some(operation) = operation {
            self.metrics
                .count_authz(rpc::method(operation.grpc_path()), None, false);
        }
        let claimed = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(claimed_access_key)
            .map(|id| format!("aws:{id}"));
        self.audit.write(&AuditRecord {
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            request_id: request_id.to_owned(),
            caller: claimed.unwrap_or_else(|| "unknown".to_owned()),
            connection: peer.map(|addr| format!("aws-api:{addr}")),
            role: None,
            rpc: rpc.to_owned(),
            key_arn: None,
            scan_type: None,
            resource_type: None,
            decision: "denied",
            code: "UNAUTHENTICATED".to_owned(),
            latency_ms: 0.0,
        });
        let error = AwsError::new(StatusCode::FORBIDDEN, error.code(), error.to_string());
        error_response(&error, request_id)
    }
}

/// The access key id an `Authorization` header claims, when it is shaped like one (for the
/// audit line of a refused signature).
fn claimed_access_key(authorization: &str) -> Option<&str> {
    let credential = authorization.split("Credential=").nth(1)?;
    let id = credential.split('/').next()?;
    credentials::is_access_key_id(id).then_some(id)
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
const CARRIED_HEADERS: [&str; 2] = [
    crate::service::CACHE_HEADER,
    crate::service::CACHE_AGE_HEADER,
];

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
