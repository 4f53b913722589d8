//! Ending server streams: at shutdown, so the drain is not held up by watchers (a stream
//! combinator that ends when a stop signal fires, after yielding what is already ready,
//! and the health service with its `Watch` streams wrapped in it); and at a stream's
//! maximum duration.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{HealthCheckRequest, HealthCheckResponse, health_server::Health},
    server::HealthService,
};

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// `inner`, ended when `stop` fires. Items already ready are yielded first, so a final
/// update sent just before the stop (such as NOT_SERVING) still reaches the client.
pub struct UntilStopped<S> {
    inner: Pin<Box<S>>,
    stop: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    done: bool,
}

impl<S> UntilStopped<S> {
    pub fn new(inner: S, stop: watch::Receiver<bool>) -> UntilStopped<S> {
        UntilStopped {
            inner: Box::pin(inner),
            stop: Box::pin(stopped(stop)),
            done: false,
        }
    }
}

impl<S: Stream> Stream for UntilStopped<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = self.inner.as_mut().poll_next(cx) {
            self.done = item.is_none();
            return Poll::Ready(item);
        }
        if self.stop.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// `inner` until `deadline`, then one `last` item and the end. Holds `held` (a slot of a
/// bounded number of streams, say) until it is dropped.
pub struct Expiring<S: Stream, H> {
    inner: Pin<Box<S>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    last: Option<S::Item>,
    _held: H,
}

impl<S: Stream, H> Expiring<S, H> {
    pub fn new(inner: S, lasts: std::time::Duration, last: S::Item, held: H) -> Self {
        Expiring {
            inner: Box::pin(inner),
            deadline: Box::pin(tokio::time::sleep(lasts)),
            last: Some(last),
            _held: held,
        }
    }
}

impl<S: Stream, H: Unpin> Stream for Expiring<S, H>
where
    S::Item: Unpin,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.last.is_none() {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(self.last.take());
        }
        let item = std::task::ready!(self.inner.as_mut().poll_next(cx));
        if item.is_none() {
            self.last = None;
        }
        Poll::Ready(item)
    }
}

/// grpc.health.v1 whose `Watch` streams end at shutdown.
pub struct DrainingHealth {
    inner: HealthService,
    stop: watch::Receiver<bool>,
}

impl DrainingHealth {
    pub fn new(inner: HealthService, stop: watch::Receiver<bool>) -> DrainingHealth {
        DrainingHealth { inner, stop }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(Box::pin(UntilStopped::new(
            stream,
            self.stop.clone(),
        ))))
    }
}
