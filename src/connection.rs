//! Connection limits on every listener (the `[connections]` table): how many connections a
//! listener and one peer IP address may hold, how long a client has to send the HTTP/2
//! preface, how much of its unread answers the kernel may hold, and how long the server
//! waits on a client that has stopped reading before it cuts the connection off.
//!
//! What a client that never reads can make the server hold is then set here: HTTP/2 keeps
//! at most `ops.max_streams_per_connection` answers per connection in memory (a stream
//! counts until its frames are written out, and h2 stops reading new requests while it
//! cannot even write a refusal), the kernel holds at most `max_unsent_bytes` of unsent
//! answers (TCP_NOTSENT_LOWAT), and after `stalled_write_timeout` without a byte written
//! the connection is closed.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::mpsc,
    time::Sleep,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::{config::ConnectionsConfig, metrics::Metrics};

/// Bytes of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// How often at most a listener at its limit says so in the log (each refusal is counted).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Which listener a connection came in on, as logs and the `listener` label name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Unix,
    Tcp,
    Tls,
    Health,
    /// The AWS-protocol door (HTTP/1.1).
    AwsApi,
}

impl ListenerKind {
    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Unix => "unix",
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Health => "health",
            ListenerKind::AwsApi => "aws_api",
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds `max_per_listener` connections.
    ListenerFull,
    /// The peer's IP address holds `max_per_peer_ip` connections on this listener.
    PeerFull,
    /// `max_tls_handshakes` handshakes are in progress.
    HandshakesFull,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ListenerFull => "listener_full",
            Refusal::PeerFull => "peer_ip_full",
            Refusal::HandshakesFull => "tls_handshakes_full",
        }
    }
}

/// Why the server ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// No HTTP/2 preface within `preface_timeout`.
    NoPreface,
    /// Nothing could be written for `stalled_write_timeout`: the client does not read.
    NotReading,
}

impl Cutoff {
    pub fn label(self) -> &'static str {
        match self {
            Cutoff::NoPreface => "no_preface",
            Cutoff::NotReading => "not_reading",
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    last_refusal_logged: Option<Instant>,
}

/// Counts the connections one listener holds and admits new ones within the limits.
pub struct Admission {
    kind: ListenerKind,
    limits: ConnectionsConfig,
    held: Mutex<Held>,
    metrics: Metrics,
}

impl Admission {
    pub fn new(kind: ListenerKind, limits: &ConnectionsConfig, metrics: Metrics) -> Arc<Admission> {
        Arc::new(Admission {
            kind,
            limits: limits.clone(),
            held: Mutex::default(),
            metrics,
        })
    }

    pub fn limits(&self) -> &ConnectionsConfig {
        &self.limits
    }

    /// A ticket for a new connection from `peer`, or why there is none (counted and, at
    /// most every few seconds, logged).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Ticket, Refusal> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let from_peer = peer.map_or(0, |ip| held.per_ip.get(&ip).copied().unwrap_or(0));
        let refusal = if held.open >= self.limits.max_per_listener {
            Some(Refusal::ListenerFull)
        } else if peer.is_some() && from_peer >= self.limits.max_per_peer_ip {
            Some(Refusal::PeerFull)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(held);
            self.refused(refusal, peer);
            return Err(refusal);
        }
        held.open += 1;
        if let Some(ip) = peer {
            *held.per_ip.entry(ip).or_insert(0) += 1;
        }
        drop(held);
        self.metrics.connection_opened(self.kind.label());
        Ok(Ticket {
            admission: self.clone(),
            peer,
        })
    }

    /// Counts a refused connection; logs it unless one was logged a moment ago.
    pub fn refused(&self, refusal: Refusal, peer: Option<IpAddr>) {
        self.metrics
            .count_connection_refused(self.kind.label(), refusal.label());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if held
            .last_refusal_logged
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            held.last_refusal_logged = Some(now);
            drop(held);
            tracing::warn!(
                listener = self.kind.label(),
                peer = ?peer,
                reason = refusal.label(),
                "connection refused at its limit (further refusals are counted in \
                 inspector_keyd_connections_refused_total, logged every 10 s)"
            );
        }
    }

    fn release(&self, peer: Option<IpAddr>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.open = held.open.saturating_sub(1);
        if let Some(ip) = peer
            && let Some(count) = held.per_ip.get_mut(&ip)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.per_ip.remove(&ip);
            }
        }
        drop(held);
        self.metrics.connection_closed(self.kind.label());
    }
}

/// One admitted connection's place in its listener's counts, given back on drop.
pub struct Ticket {
    admission: Arc<Admission>,
    peer: Option<IpAddr>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.peer);
    }
}

/// A connection under the limits: it holds its ticket, must send the HTTP/2 preface in
/// time, and is cut off when nothing could be written to it for too long.
pub struct Guarded<IO> {
    io: IO,
    ticket: Ticket,
    preface_left: usize,
    preface_deadline: Pin<Box<Sleep>>,
    stalled_write_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> Guarded<IO> {
    /// Starts the preface clock now.
    pub fn new(io: IO, ticket: Ticket) -> Guarded<IO> {
        let limits = ticket.admission.limits();
        let preface_deadline = Box::pin(tokio::time::sleep(limits.preface_timeout));
        let stalled_write_timeout = limits.stalled_write_timeout;
        Guarded {
            io,
            ticket,
            preface_left: PREFACE_LEN,
            preface_deadline,
            stalled_write_timeout,
            stalled: None,
        }
    }

    fn cut_off(&self, cutoff: Cutoff) -> io::Error {
        let admission = &self.ticket.admission;
        admission
            .metrics
            .count_connection_cut(admission.kind.label(), cutoff.label());
        tracing::info!(
            listener = admission.kind.label(),
            peer = ?self.ticket.peer,
            reason = cutoff.label(),
            "connection closed by the server"
        );
        io::Error::new(
            io::ErrorKind::TimedOut,
            match cutoff {
                Cutoff::NoPreface => "no HTTP/2 preface within connections.preface_timeout",
                Cutoff::NotReading => {
                    "nothing could be written within connections.stalled_write_timeout"
                }
            },
        )
    }

    /// While a write cannot make progress: starts the stall clock, and says when it ran out.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let timeout = self.stalled_write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Some(self.cut_off(Cutoff::NotReading)),
            Poll::Pending => None,
        }
    }

    /// A write's outcome as the server sees it: progress resets the stall clock, no
    /// progress runs it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.stalled = None;
                }
                Poll::Ready(Ok(written))
            }
            Poll::Pending => match self.poll_stall(cx) {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.preface_left > 0 && this.preface_deadline.is_elapsed() {
            return Poll::Ready(Err(this.cut_off(Cutoff::NoPreface)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len().saturating_sub(before);
                this.preface_left = this.preface_left.saturating_sub(read);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.preface_left > 0 && this.preface_deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(this.cut_off(Cutoff::NoPreface)));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                this.stalled = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_stall(cx) {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending,
            },
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How long a TCP connection may be idle before the kernel probes the peer, how often it
/// probes, and how many unanswered probes close it: a peer that vanished (its host gone, a
/// cable pulled) is let go after about 80 s of silence. The kernel does this, so it costs a
/// call nothing; HTTP/2 pings would have the server note the time of every frame it reads.
const TCP_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(2);

/// Options of every accepted TCP connection (plaintext or TLS): no Nagle delay, TCP
/// keepalive, and the answers the kernel holds unsent capped (TCP_NOTSENT_LOWAT): a write
/// waits once that much is queued, which is what lets the stall clock start.
pub fn tune_tcp(stream: &TcpStream, limits: &ConnectionsConfig) {
    let _ = stream.set_nodelay(true);
    let socket = socket2::SockRef::from(stream);
    if let Err(e) = socket.set_tcp_keepalive(&TCP_KEEPALIVE) {
        tracing::warn!(error = %e, "cannot turn on TCP keepalive for a connection");
    }
    if let Err(e) = socket.set_tcp_notsent_lowat(limits.max_unsent_bytes) {
        tracing::warn!(error = %e, "cannot limit the unsent bytes of a connection");
    }
}

/// A listener the accept loop takes connections from.
pub trait Accept: Send + 'static {
    type Io: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Option<IpAddr>)>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, Option<IpAddr>)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        Ok((stream, Some(peer.ip())))
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;

    async fn accept(&self) -> io::Result<(UnixStream, Option<IpAddr>)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, None))
    }
}

/// Accepts connections within the listener's limits and hands them to the server. Accept
/// errors (out of file descriptors, for instance) are logged and retried after a pause
/// instead of spinning. Stops when the stream is dropped.
pub fn incoming<L>(
    listener: L,
    admission: Arc<Admission>,
) -> ReceiverStream<io::Result<Guarded<L::Io>>>
where
    L: Accept,
    L::Io: TcpOptions,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (io, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(listener = admission.kind.label(), error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Refused connections are dropped here, which closes them.
            let Ok(ticket) = admission.admit(peer) else {
                continue;
            };
            io.set_options(admission.limits());
            if tx.send(Ok(Guarded::new(io, ticket))).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Socket options set on every accepted connection.
pub trait TcpOptions {
    fn set_options(&self, limits: &ConnectionsConfig);
}

impl TcpOptions for TcpStream {
    fn set_options(&self, limits: &ConnectionsConfig) {
        tune_tcp(self, limits);
    }
}

impl TcpOptions for UnixStream {
    fn set_options(&self, _: &ConnectionsConfig) {}
}
