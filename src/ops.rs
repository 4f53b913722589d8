//! The outermost tower layer: a request id for every RPC (the caller's `x-request-id`, or a
//! new one) on a tracing span and in the response; RPC metrics; load shedding at a
//! concurrency limit (RESOURCE_EXHAUSTED at once, never an unbounded queue); and a per-RPC
//! deadline, the shorter of the configured one and the caller's `grpc-timeout`.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderName, HeaderValue};
use tokio::time::Sleep;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::{
    metrics::Metrics,
    rpc::{self, REQUEST_ID, answer_after_request, grpc_code, rpc_span},
};

/// Limits of the layer.
#[derive(Debug, Clone, Copy)]
pub struct OpsLimits {
    /// RPCs served at once (health and reflection not counted); more are shed.
    pub max_concurrent_rpcs: usize,
    /// Longest an RPC may take (a shorter `grpc-timeout` wins).
    pub rpc_timeout: Duration,
}

/// Parsed at compile time: a lookup by `&str` parses and hashes the name.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The call's request id: the caller's `x-request-id` when it is a sensible token; else, for
/// a call the layer opens a span for, a new one, which then replaces whatever the caller
/// sent, so that every layer and handler reads the call's id from its `x-request-id`; else
/// none yet: a cached read answered from the cache records nothing under an id, and
/// whatever records something for it makes one then ([`rpc::request_id_or_new`]) and
/// returns it on the answer it gives.
fn request_id<B>(request: &mut http::Request<B>, opens_span: bool) -> Option<HeaderValue> {
    if let Some(id) = rpc::callers_request_id(request.headers()) {
        return Some(id.clone());
    }
    opens_span.then(|| {
        let id = rpc::new_request_id();
        request.headers_mut().insert(REQUEST_ID, id.clone());
        id
    })
}

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

/// The layer; cloned for every call (by tonic, with the service it wraps), so what it
/// holds sits behind one `Arc`: each clone and drop is a write to a count that every core
/// shares.
#[derive(Clone)]
pub struct OpsLayer(Arc<OpsShared>);

struct OpsShared {
    metrics: Metrics,
    limits: OpsLimits,
    /// Calls being served that count against `max_concurrent_rpcs`. A count rather than a
    /// semaphore: nothing ever waits for a place, and giving one back takes no lock.
    in_flight: AtomicUsize,
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
            in_flight: AtomicUsize::new(0),
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
    type Future = OpsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = rpc::method(request.uri().path());
        // The cached read opens no span: a read answered from the cache logs nothing, and
        // building a span costs about a microsecond, a tenth of the call. Whatever logs for
        // such a call (a refusal, a load, a deadline) opens it first.
        let opens_span = !method.is_some_and(|m| m.access.cached_read);
        let mut call = RpcCall {
            started,
            method,
            id: request_id(&mut request, opens_span),
            // A served method's path is the table's; only a path not served is copied.
            unserved_path: method.is_none().then(|| request.uri().path().into()),
            shared: self.layer.0.clone(),
            counted: false,
        };
        let span = opens_span.then(|| call.span());

        // Public calls (probes, reflection) are never shed.
        if rpc::role_needed(method).is_some() {
            let shared = &self.layer.0;
            let before = shared.in_flight.fetch_add(1, Ordering::Acquire);
            call.counted = true;
            if before >= shared.limits.max_concurrent_rpcs.max(1) {
                shared.metrics.count_shed();
                if let Some(shed) = shared.shed_log.count() {
                    let _entered = span.unwrap_or_else(|| call.span()).entered();
                    tracing::warn!(shed, "overloaded: calls shed");
                }
                // Gives its place back now: the answer only waits for the request.
                call.release();
                let status = tonic::Status::from(crate::status::Overloaded);
                let body = request.into_body();
                return OpsFuture::Shed {
                    answer: Box::pin(answer_after_request(body, status.into_http())),
                    call: Some(call),
                };
            }
        }
        let deadline = grpc_timeout(&request).map_or(self.layer.0.limits.rpc_timeout, |t| {
            t.min(self.layer.0.limits.rpc_timeout)
        });
        // Called now, on the instance poll_ready readied (inside the span, as what it logs
        // must be); the answer is awaited by the future.
        let answer = {
            let _entered = span.as_ref().map(tracing::Span::enter);
            self.inner.call(request)
        };
        OpsFuture::Serving {
            answer,
            deadline,
            timer: None,
            span,
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's answer as the layer awaits it, named rather than boxed: the future of every
    /// call would otherwise be an allocation of its own.
    #[project = OpsFutureProjection]
    pub enum OpsFuture<F> {
        Serving {
            #[pin]
            answer: F,
            deadline: Duration,
            // Made only if the call does not answer at its first poll: a cached read
            // answers at once, and a timer per call (made, registered and cancelled) costs
            // more than the read itself.
            timer: Option<Pin<Box<Sleep>>>,
            // The call's span; `None` for a cached read.
            span: Option<tracing::Span>,
            call: Option<RpcCall>,
        },
        Shed {
            answer: Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>,
            call: Option<RpcCall>,
        },
    }
}

impl<F, E> Future for OpsFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            OpsFutureProjection::Serving {
                answer,
                deadline,
                timer,
                span,
                call,
            } => {
                let _entered = span.as_ref().map(tracing::Span::enter);
                let result = match answer.poll(cx) {
                    Poll::Ready(result) => result,
                    Poll::Pending => {
                        let started = call.as_ref().map_or_else(Instant::now, |c| c.started);
                        let ends = tokio::time::Instant::from_std(started) + *deadline;
                        let timer =
                            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(ends)));
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        let _entered = match (span.is_none(), call.as_mut()) {
                            (true, Some(call)) => Some(call.span().entered()),
                            _ => None,
                        };
                        tracing::warn!(?deadline, "deadline exceeded");
                        Ok(
                            tonic::Status::from(crate::status::DeadlineExceeded(*deadline))
                                .into_http(),
                        )
                    }
                };
                Poll::Ready(match call.take() {
                    Some(call) => result.map(|response| call.finish(response)),
                    None => result,
                })
            }
            OpsFutureProjection::Shed { answer, call } => {
                let response = std::task::ready!(answer.as_mut().poll(cx));
                Poll::Ready(Ok(match call.take() {
                    Some(call) => call.finish(response),
                    None => response,
                }))
            }
        }
    }
}

/// What the layer keeps of a call until it answers.
pub struct RpcCall {
    started: Instant,
    /// The method table's row for the call's path, looked up once.
    method: Option<&'static rpc::Method>,
    /// The path of a call of a method not served (`method` is `None`), for its span.
    unserved_path: Option<Box<str>>,
    /// `None`: a cached read whose caller sent no id, and nothing has recorded it yet.
    id: Option<HeaderValue>,
    shared: Arc<OpsShared>,
    /// Holds one of the `max_concurrent_rpcs` places until it answers or is dropped.
    counted: bool,
}

impl RpcCall {
    /// The call's span: what the layer logs is a record under the call's id, so the call
    /// has one from then on.
    fn span(&mut self) -> tracing::Span {
        let id = self.id.get_or_insert_with(rpc::new_request_id);
        let path = match (self.method, &self.unserved_path) {
            (Some(method), _) => method.path,
            (None, path) => path.as_deref().unwrap_or_default(),
        };
        rpc_span(id.to_str().unwrap_or(""), path)
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.shared.in_flight.fetch_sub(1, Ordering::Release);
        }
    }

    /// Counts the answer and adds the request id to it, when the call has one.
    fn finish(mut self, mut response: http::Response<Body>) -> http::Response<Body> {
        self.release();
        let code = grpc_code(&response);
        self.shared
            .metrics
            .observe_rpc(self.method, code, self.started.elapsed());
        if let Some(id) = self.id.take() {
            rpc::answer_request_id(response.headers_mut(), id);
        }
        response
    }
}

impl Drop for RpcCall {
    /// A call dropped before it answered (cancelled by its caller) gives its place back.
    fn drop(&mut self) {
        self.release();
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
        // The caller's, when usable, whatever the call.
        let mut given = with_header(rpc::REQUEST_ID_HEADER, "abc-123");
        assert_eq!(request_id(&mut given, false).unwrap(), "abc-123");
        assert_eq!(given.headers()[&REQUEST_ID], "abc-123");
        // Else a new one for a call with a span, which replaces the caller's...
        let mut unusable = with_header(rpc::REQUEST_ID_HEADER, "has space");
        let generated = request_id(&mut unusable, true).unwrap();
        let generated = generated.to_str().unwrap();
        assert_eq!(unusable.headers()[&REQUEST_ID], generated);
        assert_eq!(
            uuid::Uuid::parse_str(generated).unwrap().get_version_num(),
            4
        );
        // ...and none yet for a cached read.
        let mut cached_read = with_header(rpc::REQUEST_ID_HEADER, "has space");
        assert_eq!(request_id(&mut cached_read, false), None);
    }
}
