//! The outermost tower layer: a request id for every RPC (the caller's `x-request-id`, or a
//! new one) on a tracing span and in the response; RPC metrics; load shedding at a
//! concurrency limit (RESOURCE_EXHAUSTED at once, never an unbounded queue); and a per-RPC
//! deadline, the shorter of the configured one and the caller's `grpc-timeout`.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderName, HeaderValue};
use tokio::{sync::Semaphore, time::Sleep};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{
    metrics::Metrics,
    rpc::{self, REQUEST_ID_HEADER, RequestId, answer_after_request, grpc_code, rpc_span},
};

/// Limits of the layer.
#[derive(Debug, Clone, Copy)]
pub struct OpsLimits {
    /// RPCs served at once (health and reflection not counted); more are shed.
    pub max_concurrent_rpcs: usize,
    /// Longest an RPC may take (a shorter `grpc-timeout` wins).
    pub rpc_timeout: Duration,
}

/// Header names parsed at compile time: a lookup by `&str` parses and hashes the name.
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The caller's `x-request-id` when it is a sensible token, else a new id.
fn request_id<B>(request: &http::Request<B>) -> String {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_request_id, str::to_owned)
}

/// A new request id, shaped as a version-4 UUID: the first four groups are drawn at random
/// once per process and the last group (48 bits) counts up from a random start, so ids are
/// unique without a random draw (a system call) per request.
fn new_request_id() -> String {
    static PREFIX_AND_START: OnceLock<(String, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (prefix, start) = PREFIX_AND_START.get_or_init(|| {
        let random = uuid::Uuid::new_v4().as_u128();
        let text = uuid::Uuid::from_u128(random).hyphenated().to_string();
        // "xxxxxxxx-xxxx-4xxx-yxxx-" and the node group as the counter's start.
        (text[..24].to_owned(), (random as u64) & NODE_MASK)
    });
    let node = start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed)) & NODE_MASK;
    // Twelve hex digits by hand: `format!` costs several times as much on this path.
    let mut id = String::with_capacity(prefix.len() + 12);
    id.push_str(prefix);
    id.extend(
        (0..12)
            .rev()
            .map(|digit| HEX[((node >> (digit * 4)) & 0xf) as usize] as char),
    );
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The 48 bits of a UUID's last group.
const NODE_MASK: u64 = (1 << 48) - 1;

/// The deadline a `grpc-timeout` header asks for (`<digits><H|M|S|m|u|n>`).
fn grpc_timeout<B>(request: &http::Request<B>) -> Option<Duration> {
    let value = request.headers().get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok().filter(|_| digits.len() <= 8)?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Adds the request id to the answer; the id's own bytes become the header's (no copy).
fn with_request_id(mut response: http::Response<Body>, id: String) -> http::Response<Body> {
    if let Ok(mut value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(id)) {
        // A value that never repeats: HPACK should not index it (indexing it would push the
        // headers that do repeat out of the connection's table).
        value.set_sensitive(true);
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// `call` bounded by `deadline` (`None`: it ran out). The timer is made only if the call
/// does not answer at its first poll: a cached read answers at once, and a timer per call
/// (made, registered and cancelled) costs more than the read itself.
async fn within_deadline<F: Future>(call: F, deadline: tokio::time::Instant) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The layer; cloned for every call (by tonic, with the service it wraps), so what it
/// holds sits behind one `Arc`: each clone and drop is a write to a count that every core
/// shares.
#[derive(Clone)]
pub struct OpsLayer(Arc<OpsShared>);

struct OpsShared {
    metrics: Metrics,
    limits: OpsLimits,
    permits: Arc<Semaphore>,
    shed_log: ShedLog,
}

/// Shed calls are logged at most once a second, with how many there were since the last
/// line: under overload a line per call would add to the load (the metrics count each one).
#[derive(Default)]
struct ShedLog {
    /// Seconds since `start` of the last line, plus one (0: none yet).
    last_line: AtomicU64,
    unlogged: AtomicU64,
    start: OnceLock<Instant>,
}

impl ShedLog {
    /// Counts one shed call; returns how many to report when a line is due.
    fn count(&self) -> Option<u64> {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = self.start.get_or_init(Instant::now).elapsed().as_secs() + 1;
        let last = self.last_line.load(Ordering::Relaxed);
        if now > last
            && self
                .last_line
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Ordering::Relaxed).max(1))
        } else {
            None
        }
    }
}

impl OpsLayer {
    pub fn new(metrics: Metrics, limits: OpsLimits) -> OpsLayer {
        OpsLayer(Arc::new(OpsShared {
            metrics,
            limits,
            permits: Arc::new(Semaphore::new(limits.max_concurrent_rpcs.max(1))),
            shed_log: ShedLog::default(),
        }))
    }
}

impl<S> Layer<S> for OpsLayer {
    type Service = Ops<S>;

    fn layer(&self, inner: S) -> Ops<S> {
        Ops {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Ops<S> {
    inner: S,
    layer: OpsLayer,
}

impl<S, B> Service<http::Request<B>> for Ops<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
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
        let call = RpcCall {
            started: Instant::now(),
            // A clone of the URI shares its bytes: no copy of the path per call.
            uri: request.uri().clone(),
            id: request_id(&request),
            metrics: self.layer.0.metrics.clone(),
        };
        let method = rpc::method(call.uri.path());
        // The cached read opens no span: a read answered from the cache logs nothing, and
        // building a span costs about a microsecond, a tenth of the call. Whatever logs for
        // such a call (a refusal, a load, a deadline) opens it first with `rpc_span_of`.
        let span = (!method.is_some_and(|m| m.access.cached_read)).then(|| call.span());
        request.extensions_mut().insert(RequestId(call.id.clone()));

        // Public calls (probes, reflection) are never shed.
        let permit = if rpc::role_needed(method).is_some() {
            match self.layer.0.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.layer.0.metrics.count_shed();
                    if let Some(shed) = self.layer.0.shed_log.count() {
                        let _entered = span.unwrap_or_else(|| call.span()).entered();
                        tracing::warn!(shed, "overloaded: calls shed");
                    }
                    let status = tonic::Status::from(crate::status::Overloaded);
                    let body = request.into_body();
                    return Box::pin(async move {
                        Ok(call.finish(answer_after_request(body, status.into_http()).await))
                    });
                }
            }
        } else {
            None
        };
        let deadline = grpc_timeout(&request).map_or(self.layer.0.limits.rpc_timeout, |t| {
            t.min(self.layer.0.limits.rpc_timeout)
        });
        let spanless = span.is_none();
        let started = call.started;
        // Called now, on the instance poll_ready readied (inside the span, as what it logs
        // must be); the answer is awaited below.
        let answer = {
            let _entered = span.as_ref().map(tracing::Span::enter);
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let ends = tokio::time::Instant::from_std(started) + deadline;
                let result = match within_deadline(answer, ends).await {
                    Some(result) => result,
                    None => {
                        let _entered = spanless.then(|| call.span().entered());
                        tracing::warn!(?deadline, "deadline exceeded");
                        Ok(
                            tonic::Status::from(crate::status::DeadlineExceeded(deadline))
                                .into_http(),
                        )
                    }
                };
                drop(permit);
                result.map(|response| call.finish(response))
            }
            .instrument(span.unwrap_or_else(tracing::Span::none)),
        )
    }
}

/// What the layer keeps of a call until it answers.
struct RpcCall {
    started: Instant,
    uri: http::Uri,
    id: String,
    metrics: Metrics,
}

impl RpcCall {
    fn span(&self) -> tracing::Span {
        rpc_span(&self.id, self.uri.path())
    }

    /// Counts the answer and adds the request id to it.
    fn finish(self, response: http::Response<Body>) -> http::Response<Body> {
        let code = grpc_code(&response);
        self.metrics
            .observe_rpc(self.uri.path(), code, self.started.elapsed().as_secs_f64());
        with_request_id(response, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(name: &str, value: &str) -> http::Request<()> {
        http::Request::builder()
            .header(name, value)
            .body(())
            .unwrap()
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(
            grpc_timeout(&with_header("grpc-timeout", "250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&with_header("grpc-timeout", "2S")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            grpc_timeout(&with_header("grpc-timeout", "1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(grpc_timeout(&with_header("grpc-timeout", "x")), None);
        assert_eq!(grpc_timeout(&with_header("grpc-timeout", "")), None);
        assert_eq!(
            grpc_timeout(&with_header("grpc-timeout", "123456789S")),
            None
        );
    }

    #[test]
    fn shed_calls_are_logged_at_most_once_a_second() {
        let log = ShedLog::default();
        assert_eq!(log.count(), Some(1));
        let lines = (0..1000).filter_map(|_| log.count()).count();
        // A thousand calls take far less than a second here; at most a second's turn.
        assert!(lines <= 1, "{lines}");
    }

    #[test]
    fn request_ids() {
        assert_eq!(
            request_id(&with_header(REQUEST_ID_HEADER, "abc-123")),
            "abc-123"
        );
        let generated = request_id(&with_header(REQUEST_ID_HEADER, "has space"));
        let parsed = uuid::Uuid::parse_str(&generated).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000, "ids repeat");
        assert!(ids.iter().all(|id| id[..24] == generated[..24]));
    }
}
