//! Hostile clients against the real server: malformed gRPC frames sent raw over HTTP/2,
//! oversized metadata, many idle connections, a client that sends requests but never
//! reads the answers, floods of large unauthenticated bodies to the AWS-protocol door, and
//! floods of refused calls on the door and on gRPC. Each is refused or contained, and the
//! server keeps serving others.
//! (Oversized messages: `operations::oversized_messages_are_refused_and_change_nothing`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use inspector_keyd::proto;
use tonic::Code;

const GET: &str = "/inspectorkeyd.v1.EncryptionKeyService/GetEncryptionKey";
const UPDATE: &str = "/inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey";

/// A gRPC message frame: compression flag, declared length, then `body` (which may be
/// shorter or longer than declared).
fn grpc_frame(compressed: u8, declared: u32, body: &[u8]) -> Bytes {
    let mut frame = vec![compressed];
    frame.extend_from_slice(&declared.to_be_bytes());
    frame.extend_from_slice(body);
    Bytes::from(frame)
}

/// What the server did with one raw request.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// An HTTP answer: its status, and the gRPC status (from the headers of a trailers-only
    /// answer, or from the trailers) when it has one.
    Answer { http: u16, grpc: Option<i32> },
    /// The server reset the request's stream with this HTTP/2 error code.
    Reset(h2::Reason),
    /// The server sent GOAWAY with this HTTP/2 error code (the whole connection ends).
    GoAway(h2::Reason),
    /// The server closed the connection while the client was still writing to it.
    Broken(std::io::ErrorKind),
}

/// A gRPC answer (HTTP 200) with the status `code`.
fn grpc(code: Code) -> Outcome {
    Outcome::Answer {
        http: 200,
        grpc: Some(code as i32),
    }
}

/// Sends one request with `body` as its whole DATA, on a fresh HTTP/2 connection over `io`,
/// and tells what the server did with it. Any other failure (an I/O error, a local h2 error)
/// fails the test.
async fn raw_call<T>(io: T, path: &str, extra_headers: &[(&str, String)], body: Bytes) -> Outcome
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match try_raw_call(io, path, extra_headers, body).await {
        Ok(outcome) => outcome,
        Err(e) if e.is_remote() && e.is_go_away() => Outcome::GoAway(e.reason().unwrap()),
        Err(e) if e.is_remote() && e.is_reset() => Outcome::Reset(e.reason().unwrap()),
        Err(e)
            if e.get_io().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                )
            }) =>
        {
            Outcome::Broken(e.get_io().unwrap().kind())
        }
        Err(e) => panic!("not an answer from the server: {e:?}"),
    }
}

async fn try_raw_call<T>(
    io: T,
    path: &str,
    extra_headers: &[(&str, String)],
    body: Bytes,
) -> Result<Outcome, h2::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await?;
    tokio::spawn(connection);
    let mut client = client.ready().await?;
    let mut request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra_headers {
        request = request.header(*name, value);
    }
    let (response, mut send) = client.send_request(request.body(()).unwrap(), false)?;
    send.send_data(body, true)?;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer in time")?;
    let (parts, mut body) = response.into_parts();
    let code = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
    };
    let http = parts.status.as_u16();
    if let Some(code) = code(&parts.headers) {
        return Ok(Outcome::Answer {
            http,
            grpc: Some(code),
        });
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(Outcome::Answer {
        http,
        grpc: code(&trailers),
    })
}

async fn tcp(sidecar: &Sidecar) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(sidecar.tcp).await.unwrap()
}

/// A well-formed read through tonic answers promptly.
async fn still_serving(sidecar: &Sidecar) {
    let started = Instant::now();
    let status = sidecar.read_lambda_key().await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn malformed_grpc_frames_are_refused_and_change_nothing() {
    let sidecar = Sidecar::start();
    let key = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    let valid_update = {
        use prost::Message;
        update_request(&key).encode_to_vec()
    };
    // Each is answered as a gRPC error, the same on both listeners (tonic decodes the
    // request before any handler runs).
    let cases: Vec<(&str, Bytes, Code)> = vec![
        // Bytes that are no protobuf message (a field with wire type 7).
        ("garbage", grpc_frame(0, 5, &[0xff; 5]), Code::Internal),
        // A length past the request size limit.
        (
            "declared 4 GiB",
            grpc_frame(0, u32::MAX, &[0; 16]),
            Code::OutOfRange,
        ),
        // The stream ends before the declared length.
        (
            "truncated",
            grpc_frame(0, 100, &valid_update[..4]),
            Code::Internal,
        ),
        // Half a frame header.
        (
            "partial prefix",
            Bytes::from_static(&[0, 0, 0]),
            Code::Internal,
        ),
        // Compressed without a grpc-encoding.
        (
            "compressed",
            grpc_frame(1, 5, &[1, 2, 3, 4, 5]),
            Code::Internal,
        ),
        // A valid message followed by trailing bytes that are not a frame.
        (
            "trailing bytes",
            {
                let mut bytes = grpc_frame(0, valid_update.len() as u32, &valid_update).to_vec();
                bytes.extend_from_slice(&[9, 9]);
                Bytes::from(bytes)
            },
            Code::Internal,
        ),
    ];
    for (name, body, expected) in cases {
        // As admin, on the Unix socket: an Update that would change state if it got through.
        let socket = tokio::net::UnixStream::connect(&sidecar.socket)
            .await
            .unwrap();
        let outcome = raw_call(socket, UPDATE, &[], body.clone()).await;
        assert_eq!(
            outcome,
            grpc(expected),
            "{name}, Update over the Unix socket"
        );
        // And a read over loopback TCP.
        let outcome = raw_call(tcp(&sidecar).await, GET, &[], body).await;
        assert_eq!(outcome, grpc(expected), "{name}, Get over TCP");
    }
    // Nothing was put in use; the server serves well-formed calls.
    still_serving(&sidecar).await;
    assert!(!sidecar.log().contains("panicked"), "{}", sidecar.log());
}

#[tokio::test]
async fn oversized_metadata_is_refused_and_others_are_served() {
    let sidecar = Sidecar::start();
    let valid_get = {
        use prost::Message;
        get_request(LAMBDA).encode_to_vec()
    };
    let body = grpc_frame(0, valid_get.len() as u32, &valid_get);
    // Within the 16 KiB header list limit: answered.
    let outcome = raw_call(
        tcp(&sidecar).await,
        GET,
        &[("x-note", "a".repeat(4 << 10))],
        body.clone(),
    )
    .await;
    assert_eq!(outcome, grpc(Code::NotFound));
    // A megabyte of metadata: refused without an answer to it, the server unharmed. The
    // client sends it as a HEADERS frame and ~64 CONTINUATIONs of 16 KiB; h2 ends the
    // connection at its CONTINUATION flood limit (the 6th, for a 16 KiB header list limit
    // and 16 KiB frames), long before the client has written the rest. Which the client
    // then sees is timing: the GOAWAY, if its connection task reads before its next write
    // fails, else the broken connection (the server closed it with our bytes unread).
    // `the_continuation_flood_limit_ends_the_connection_with_enhance_your_calm` pins the
    // server's side exactly.
    let outcome = raw_call(
        tcp(&sidecar).await,
        GET,
        &[("x-note", "a".repeat(1 << 20))],
        body.clone(),
    )
    .await;
    println!("1 MiB header: {outcome:?}");
    assert!(
        matches!(
            outcome,
            Outcome::GoAway(h2::Reason::ENHANCE_YOUR_CALM)
                | Outcome::Broken(
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                )
        ),
        "1 MiB header: {outcome:?}"
    );
    // Many small headers summing past the limit (500 x 39 bytes of header list) in one
    // HEADERS frame: h2 decodes the block, answers 431 and resets the stream; the request
    // never reaches gRPC.
    let many: Vec<(&str, String)> = (0..500).map(|_| ("x-many", "b".to_owned())).collect();
    let outcome = raw_call(tcp(&sidecar).await, GET, &many, body.clone()).await;
    assert_eq!(
        outcome,
        Outcome::Answer {
            http: 431,
            grpc: None
        },
        "500 headers"
    );
    // Many more, in a header block that needs CONTINUATIONs: once the list is past the limit,
    // a CONTINUATION that would take the block past it too ends the connection
    // (COMPRESSION_ERROR, "over ignorable limit"). The client is still writing then, so as
    // for the 1 MiB header it sees the GOAWAY or the broken connection.
    let many: Vec<(&str, String)> = (0..2000).map(|_| ("x-many", "b".repeat(32))).collect();
    let outcome = raw_call(tcp(&sidecar).await, GET, &many, body).await;
    println!("2000 headers: {outcome:?}");
    assert!(
        matches!(
            outcome,
            Outcome::GoAway(h2::Reason::COMPRESSION_ERROR)
                | Outcome::Broken(
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                )
        ),
        "2000 headers: {outcome:?}"
    );
    still_serving(&sidecar).await;
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1), `first` holding the
/// bits above the prefix.
fn hpack_integer(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Reads HTTP/2 frames from `io` until the server closes it (bounded): (type, stream,
/// payload) of each.
async fn read_frames(io: &mut tokio::net::TcpStream) -> Vec<(u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection in time")
        .expect("a clean close: the server read every byte we sent");
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 9 {
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        frames.push((rest[3], stream, rest[9..9 + length].to_vec()));
        rest = &rest[9 + length..];
    }
    assert!(rest.is_empty(), "a partial frame at the end");
    frames
}

#[tokio::test]
async fn the_continuation_flood_limit_ends_the_connection_with_enhance_your_calm() {
    use tokio::io::AsyncWriteExt;
    let sidecar = Sidecar::start();
    // A request whose header block goes on in CONTINUATION frames of 16 KiB (the largest
    // the server takes) without END_HEADERS: the start of a 1 MiB header value.
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", GET),
        (":authority", "localhost"),
    ] {
        hpack_literal(&mut block, name, value);
    }
    block.push(0x00);
    hpack_integer(&mut block, 0, 7, "x-note".len());
    block.extend_from_slice(b"x-note");
    hpack_integer(&mut block, 0, 7, 1 << 20);
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut frames, 0x4, 0, 0, &[]); // SETTINGS
    h2_frame(&mut frames, 0x1, 0, 1, &block); // HEADERS, no END_HEADERS
    // Exactly as many CONTINUATIONs as it takes (5 are allowed, for a 16 KiB header list
    // limit and 16 KiB frames), and nothing after them: the server reads every byte, so it
    // closes cleanly and its GOAWAY cannot be lost to a reset.
    for _ in 0..6 {
        h2_frame(&mut frames, 0x9, 0, 1, &[b'a'; 16 << 10]); // CONTINUATION
    }
    let mut io = tcp(&sidecar).await;
    io.write_all(&frames).await.unwrap();
    let received = read_frames(&mut io).await;
    let go_aways: Vec<&(u8, u32, Vec<u8>)> = received.iter().filter(|f| f.0 == 0x7).collect();
    assert_eq!(go_aways.len(), 1, "{received:?}");
    let payload = &go_aways[0].2;
    let error_code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    assert_eq!(
        h2::Reason::from(error_code),
        h2::Reason::ENHANCE_YOUR_CALM,
        "debug data {:?}",
        String::from_utf8_lossy(&payload[8..])
    );
    assert_eq!(
        String::from_utf8_lossy(&payload[8..]),
        "too_many_continuations"
    );
    assert!(
        received.iter().all(|f| f.0 != 0x1),
        "the request was answered: {received:?}"
    );
    still_serving(&sidecar).await;
}

#[tokio::test]
async fn many_idle_connections_do_not_stop_service() {
    let sidecar = Sidecar::start_with("[connections]\nmax_per_peer_ip = 512\n");
    still_serving(&sidecar).await;
    let before = sidecar.rss_kib();
    let mut idle = Vec::new();
    // Bare TCP connections that never say anything (until the preface deadline), and
    // HTTP/2 connections that handshake and then stay silent.
    for _ in 0..200 {
        idle.push(tcp(&sidecar).await);
    }
    let mut handshaken = Vec::new();
    for _ in 0..200 {
        let (client, connection) = h2::client::handshake(tcp(&sidecar).await).await.unwrap();
        handshaken.push((client, tokio::spawn(connection)));
    }
    for _ in 0..20 {
        still_serving(&sidecar).await;
    }
    let growth = sidecar.rss_kib().saturating_sub(before);
    println!("400 idle connections: resident memory grew {growth} KiB");
    assert!(growth < 64 << 10, "grew {growth} KiB");
    drop((idle, handshaken));
    still_serving(&sidecar).await;
}

/// A TCP connection to `addr` from the loopback address `from` (any 127.x.y.z).
async fn tcp_from(from: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn silent_connections_are_capped_per_peer_and_listener_and_closed_at_the_preface_deadline() {
    let sidecar = Sidecar::start_with(
        "[connections]\npreface_timeout = \"1s\"\nmax_per_listener = 60\n\
         max_per_peer_ip = 40\n[ops]\nhealth_listen = \"127.0.0.1:0\"\n",
    );
    let health = sidecar.health.unwrap();
    still_serving(&sidecar).await;
    // That call's connection is given back before the count starts.
    assert!(
        eventually(Duration::from_secs(5), || async {
            open_connections(&sidecar, "tcp") == 0.0
        })
        .await
    );

    // One peer takes its 40, and its 41st is closed at once.
    let started = Instant::now();
    let mut first_peer = Vec::new();
    for _ in 0..40 {
        first_peer.push(tcp_from([127, 0, 0, 1], sidecar.tcp).await);
    }
    let mut over = tcp_from([127, 0, 0, 1], sidecar.tcp).await;
    assert!(closed_within(&mut over, Duration::from_millis(500)).await);
    // Another peer still gets in, up to the listener's 60.
    let mut second_peer = Vec::new();
    for _ in 0..20 {
        second_peer.push(tcp_from([127, 0, 0, 2], sidecar.tcp).await);
    }
    let mut over = tcp_from([127, 0, 0, 3], sidecar.tcp).await;
    assert!(closed_within(&mut over, Duration::from_millis(500)).await);
    // The TCP listener is full; the Unix socket and the health port serve meanwhile.
    let status = sidecar
        .admin_keys()
        .await
        .get_encryption_key(get_request(LAMBDA))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mut probe =
        tonic_health::pb::health_client::HealthClient::new(sidecar.health_channel().await);
    probe
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let mut silent_on_health = tokio::net::TcpStream::connect(health).await.unwrap();

    // None sent the HTTP/2 preface: each is closed at its 1 s deadline.
    for io in first_peer.iter_mut().chain(&mut second_peer) {
        assert!(closed_within(io, Duration::from_secs(5)).await);
    }
    assert!(closed_within(&mut silent_on_health, Duration::from_secs(5)).await);
    let held_for = started.elapsed();
    assert!(held_for >= Duration::from_secs(1), "{held_for:?}");
    println!("60 silent connections closed {held_for:?} after the first connected");

    let refused = |reason| {
        counter(
            &sidecar,
            "inspector_keyd_connections_refused",
            &[("listener", "tcp"), ("reason", reason)],
        )
    };
    assert_eq!(refused("peer_ip_full"), 1.0);
    assert_eq!(refused("listener_full"), 1.0);
    let cut = |listener| {
        counter(
            &sidecar,
            "inspector_keyd_connections_cut",
            &[("listener", listener), ("reason", "no_preface")],
        )
    };
    assert_eq!(cut("tcp"), 60.0);
    assert_eq!(cut("health"), 1.0);
    // Every place is given back: the listener takes connections again.
    assert!(
        eventually(Duration::from_secs(5), || async {
            open_connections(&sidecar, "tcp") == 0.0
        })
        .await
    );
    still_serving(&sidecar).await;
}

/// An HPACK literal header field without indexing, with a literal name (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    for text in [name, value] {
        assert!(text.len() < 127);
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
    }
}

/// An HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A counter of the server (0 while it has no such series).
fn counter(sidecar: &Sidecar, family: &str, labels: &[(&str, &str)]) -> f64 {
    sample(&sidecar.scrape_metrics(), family, "_total", labels).unwrap_or(0.0)
}

/// Requests the server has answered with NOT_FOUND to GetEncryptionKey so far.
fn gets_answered(sidecar: &Sidecar) -> f64 {
    counter(
        sidecar,
        "inspector_keyd_rpc_requests",
        &[("method", "GetEncryptionKey"), ("code", "NOT_FOUND")],
    )
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_after_a_bounded_number_of_requests() {
    use tokio::io::AsyncWriteExt;
    // What the server may hold for one connection: 32 answers in memory, 4 KiB of them
    // unsent in the kernel; after 2 s without writing a byte, the connection is closed.
    let sidecar = Sidecar::start_with(
        "[connections]\nstalled_write_timeout = \"2s\"\nmax_unsent_bytes = 4096\n\
         [ops]\nmax_streams_per_connection = 32\n",
    );
    still_serving(&sidecar).await;
    let before = sidecar.rss_kib();
    let answered_before = gets_answered(&sidecar);
    let valid_get = {
        use prost::Message;
        get_request(LAMBDA).encode_to_vec()
    };
    let message = grpc_frame(0, valid_get.len() as u32, &valid_get);

    // Requests written raw, as fast as the socket takes them; the answers are never read.
    // A small receive buffer, so the answers the client's kernel takes are few too.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(sidecar.tcp).await.unwrap();
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut preface, 0x4, 0, 0, &[]); // SETTINGS
    slow.write_all(&preface).await.unwrap();
    let mut headers = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", GET),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hpack_literal(&mut headers, name, value);
    }
    let started = Instant::now();
    let mut sent = 0u32;
    // Bounded in count and in time; the server stops taking them once it has to.
    for stream in (1..400_000u32).step_by(2) {
        let mut frames = Vec::new();
        h2_frame(&mut frames, 0x1, 0x4, stream, &headers); // HEADERS, END_HEADERS
        h2_frame(&mut frames, 0x0, 0x1, stream, &message); // DATA, END_STREAM
        match tokio::time::timeout(Duration::from_millis(500), slow.write_all(&frames)).await {
            Ok(Ok(())) => sent += 1,
            // The server stopped reading from us (or closed the connection): contained.
            Ok(Err(_)) | Err(_) => break,
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    // Meanwhile, everyone else is served, and the server holds a bounded amount for it.
    for _ in 0..10 {
        still_serving(&sidecar).await;
    }
    let taken = gets_answered(&sidecar) - answered_before - 10.0;
    let growth = sidecar.rss_kib().saturating_sub(before);
    println!(
        "a client that never reads wrote {sent} requests; the server answered {taken}; \
         resident memory grew {growth} KiB"
    );
    // 32 held by HTTP/2, and what 4 KiB of unsent bytes plus the client's 8 KiB receive
    // window hold (an answer is a few hundred bytes): the server stopped reading, however
    // fast the client wrote.
    assert!(taken <= 100.0, "the server answered {taken} requests");
    assert!(
        f64::from(sent) > 10.0 * taken,
        "wrote {sent}, answered {taken}"
    );
    assert!(growth < 64 << 10, "grew {growth} KiB");

    // Nothing written for 2 s: the server closes the connection.
    let cut = |sidecar: &Sidecar| {
        counter(
            sidecar,
            "inspector_keyd_connections_cut",
            &[("listener", "tcp"), ("reason", "not_reading")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || async { cut(&sidecar) == 1.0 }).await,
        "the connection was not cut off"
    );
    let write = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = slow.write_all(&[0; 9]).await {
                return e;
            }
        }
    });
    let error = write.await.expect("the server closed the connection");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            open_connections(&sidecar, "tcp") == 0.0
        })
        .await
    );
    still_serving(&sidecar).await;
}

fn open_connections(sidecar: &Sidecar, listener: &str) -> f64 {
    sample(
        &sidecar.scrape_metrics(),
        "inspector_keyd_connections_open",
        "",
        &[("listener", listener)],
    )
    .unwrap_or(0.0)
}

/// File descriptors the server holds.
fn open_fds(sidecar: &Sidecar) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", sidecar.pid()))
        .unwrap()
        .count()
}

/// A health check from `from` (a loopback address), and how long it took.
async fn timed_probe(sidecar: &Sidecar, from: [u8; 4]) -> Duration {
    let started = Instant::now();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", sidecar.health.unwrap()))
            .unwrap()
            .local_address(Some(std::net::IpAddr::from(from)))
            .connect()
            .await
            .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    started.elapsed()
}

/// One peer opens many silent connections to the health port (`KEYD_SILENT_CONNECTIONS`,
/// 2,000 in the suite; RELIABILITY.md has a 10,000 run): the server holds at most
/// `connections.max_per_peer_ip` of them, and those only until the preface deadline, while
/// probes from another address are answered.
#[tokio::test]
async fn a_flood_of_silent_connections_holds_few_descriptors_and_only_until_the_preface_deadline() {
    let count: usize = std::env::var("KEYD_SILENT_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let sidecar = Sidecar::start_with(
        "[ops]\nhealth_listen = \"127.0.0.1:0\"\n[connections]\npreface_timeout = \"5s\"\n",
    );
    let health = sidecar.health.unwrap();
    timed_probe(&sidecar, [127, 0, 0, 2]).await;
    // The probe's connection is given back before the count starts.
    assert!(
        eventually(Duration::from_secs(5), || async {
            open_connections(&sidecar, "health") == 0.0
        })
        .await
    );
    let (fds_before, rss_before) = (open_fds(&sidecar), sidecar.rss_kib());
    let started = Instant::now();
    let mut flood = Vec::with_capacity(count);
    let mut slowest_probe = Duration::ZERO;
    for i in 0..count {
        flood.push(tokio::net::TcpStream::connect(health).await.unwrap());
        if i % 500 == 499 {
            slowest_probe = slowest_probe.max(timed_probe(&sidecar, [127, 0, 0, 2]).await);
        }
    }
    let opened_in = started.elapsed();
    let (fds_during, rss_during) = (open_fds(&sidecar), sidecar.rss_kib());
    slowest_probe = slowest_probe.max(timed_probe(&sidecar, [127, 0, 0, 2]).await);
    // Every descriptor is given back once the held ones pass their preface deadline.
    let released = eventually(Duration::from_secs(20), || async {
        open_fds(&sidecar) <= fds_before
    })
    .await;
    let released_in = started.elapsed();
    let refused = counter(
        &sidecar,
        "inspector_keyd_connections_refused",
        &[("listener", "health"), ("reason", "peer_ip_full")],
    );
    println!(
        "{count} silent connections from one peer in {opened_in:?}: server descriptors {fds_before} → {fds_during}, \
         resident memory {rss_before} → {rss_during} KiB, {refused} refused at accept, slowest health probe from \
         another address {slowest_probe:?}, every descriptor back {released_in:?} after the first connection"
    );
    assert!(released, "descriptors still held: {}", open_fds(&sidecar));
    // The 128 the peer may hold (and a few of the server's own).
    assert!(
        fds_during <= fds_before + 128 + 8,
        "{fds_during} descriptors held"
    );
    // All but the 128 were closed at accept (unless the flood outlasted a deadline, which
    // gives places back).
    if opened_in < Duration::from_secs(5) {
        assert_eq!(refused as usize, count - 128);
    }
    assert!(rss_during.saturating_sub(rss_before) < 64 << 10);
    drop(flood);
}

// --- Floods of the AWS-protocol door and of refusals ---------------------------------------

const MIB: usize = 1 << 20;

/// The head of a `PUT /encryptionkey/update` declaring a body of `length` bytes, with
/// `extra` header lines (each ending in CRLF).
fn update_head(door: std::net::SocketAddr, length: usize, extra: &str) -> String {
    format!(
        "PUT /encryptionkey/update HTTP/1.1\r\nhost: {door}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n{extra}\r\n"
    )
}

/// The status of the answer `stream` reads, or `None` when the connection ends first (the
/// server may close it on a client still sending).
async fn answer_status(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 60 s");
    String::from_utf8_lossy(&seen)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
}

/// Sends `head` and `length` bytes of body on a new connection to `door` (stopping when the
/// server closes it), and reads the answer.
async fn flood_one(door: std::net::SocketAddr, head: String, length: usize) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(door).await.unwrap();
    let chunk = vec![b' '; 64 << 10];
    if stream.write_all(head.as_bytes()).await.is_ok() {
        let mut left = length;
        while left > 0 {
            let n = left.min(chunk.len());
            if stream.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            left -= n;
        }
    }
    answer_status(&mut stream).await
}

/// A door client that signs with the sidecar's own admin key pair.
fn door_client(sidecar: &Sidecar) -> aws_sdk_inspector2::Client {
    sidecar.inspector(&sidecar.aws_key("inspector-keyd-admin"))
}

/// The key in use, read through the door with the AWS SDK.
async fn door_read(client: &aws_sdk_inspector2::Client) -> String {
    use aws_sdk_inspector2::types::{ResourceType, ScanType};
    client
        .get_encryption_key()
        .scan_type(ScanType::Code)
        .resource_type(ResourceType::AwsLambdaFunction)
        .send()
        .await
        .unwrap()
        .kms_key_id
}

/// 300 connections (`KEYD_DOOR_FLOOD`; RELIABILITY.md has a 512 run) each send an unsigned
/// `PUT` with a body of 1 MiB - 1 byte (under `ops.max_request_bytes`): the door refuses
/// each from its head without reading the body, so the server's peak resident memory grows
/// by little (it read every body before, and the pages stayed after the sockets closed),
/// and a signed read is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_300_unsigned_1_mib_bodies_keeps_rss_growth_under_32_mb_and_the_sidecar_serving()
{
    let count: usize = std::env::var("KEYD_DOOR_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let sidecar = Sidecar::start_with(&format!(
        "[connections]\nmax_per_peer_ip = {0}\nmax_per_listener = {0}\n",
        count + 8
    ));
    let door = sidecar.aws_api.unwrap();
    let arn = sidecar.key_in_use().await;
    let client = door_client(&sidecar);
    assert_eq!(door_read(&client).await, arn);
    let (rss_before, peak_before) = (sidecar.rss_kib(), sidecar.peak_rss_kib());

    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..count {
        flood.spawn(flood_one(door, update_head(door, MIB - 1, ""), MIB - 1));
    }
    // Served while the flood is on.
    assert_eq!(door_read(&client).await, arn);
    let rss_during = sidecar.rss_kib();
    let mut answers = std::collections::BTreeMap::<Option<u16>, usize>::new();
    while let Some(status) = flood.join_next().await {
        *answers.entry(status.unwrap()).or_default() += 1;
    }
    let peak = sidecar.peak_rss_kib();
    assert_eq!(door_read(&client).await, arn);
    still_serving_read(&sidecar, &arn).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            open_connections(&sidecar, "aws_api") <= 1.0
        })
        .await
    );
    let rss_after = sidecar.rss_kib();
    println!(
        "{count} unsigned PUTs of 1 MiB - 1 byte: answers {answers:?} (None: closed before the \
         answer was read); resident memory {rss_before} KiB before (peak so far \
         {peak_before}), {rss_during} during, peak {peak}, {rss_after} after the sockets closed"
    );
    assert!(
        answers
            .keys()
            .all(|status| matches!(status, None | Some(403))),
        "{answers:?}"
    );
    let growth = peak.saturating_sub(rss_before);
    assert!(growth < 32 << 10, "peak resident memory grew {growth} KiB");
}

/// A read of the key in use through tonic, answered.
async fn still_serving_read(sidecar: &Sidecar, arn: &str) {
    assert_eq!(sidecar.read_lambda_key().await.unwrap(), arn);
}

/// Bodies the door must read to check a signature (a known access key id, no payload hash
/// in the head) share one budget: with 300 such requests of 1 MiB - 1 byte held open, 8
/// (the 8 MiB budget) are read and the other 292 are answered `ThrottlingException` at
/// once, unread; once the 8 bodies arrive they are refused for their bad signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_read_before_their_signature_is_known_share_a_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let sidecar = Sidecar::start_with("[connections]\nmax_per_peer_ip = 512\n");
    let door = sidecar.aws_api.unwrap();
    let arn = sidecar.key_in_use().await;
    let (key_id, _) = sidecar.aws_key("inspector-keyd-admin");
    let mut headers = http::HeaderMap::new();
    headers.insert("host", door.to_string().parse().unwrap());
    inspector_keyd::aws_api::sigv4::sign_for_tests(
        "PUT",
        "/encryptionkey/update",
        &mut headers,
        b"",
        (&key_id, "not-the-secret-0123456789"),
        "us-east-1",
        std::time::SystemTime::now(),
    )
    .unwrap();
    let signature = format!(
        "x-amz-date: {}\r\nauthorization: {}\r\n",
        headers["x-amz-date"].to_str().unwrap(),
        headers["authorization"].to_str().unwrap()
    );
    let rss_before = sidecar.rss_kib();

    let throttled = std::sync::Arc::new(AtomicUsize::new(0));
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let (head, throttled, mut go) = (
            update_head(door, MIB - 1, &signature),
            throttled.clone(),
            go.subscribe(),
        );
        flood.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(door).await.unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            // The first 32 KiB, then the rest once told to.
            let first = vec![b' '; 32 << 10];
            stream.write_all(&first).await.unwrap();
            tokio::select! {
                status = answer_status(&mut stream) => {
                    if status == Some(429) {
                        throttled.fetch_add(1, Ordering::SeqCst);
                    }
                    status
                }
                _ = go.recv() => {
                    let rest = vec![b' '; MIB - 1 - first.len()];
                    let _ = stream.write_all(&rest).await;
                    answer_status(&mut stream).await
                }
            }
        });
    }
    let all_but_8 = eventually(Duration::from_secs(20), || async {
        throttled.load(Ordering::SeqCst) >= 292
    })
    .await;
    let rss_held = sidecar.rss_kib();
    // Served while 8 bodies fill the budget.
    still_serving_read(&sidecar, &arn).await;
    go.send(()).unwrap();
    let mut answers = std::collections::BTreeMap::<Option<u16>, usize>::new();
    while let Some(status) = flood.join_next().await {
        *answers.entry(status.unwrap()).or_default() += 1;
    }
    let peak = sidecar.peak_rss_kib();
    println!(
        "300 PUTs of 1 MiB - 1 byte under a known key, badly signed: answers {answers:?}; \
         resident memory {rss_before} KiB before, {rss_held} while 8 were held, peak {peak}"
    );
    assert!(all_but_8, "throttled {}", throttled.load(Ordering::SeqCst));
    assert_eq!(answers.get(&Some(429)), Some(&292), "{answers:?}");
    assert_eq!(answers.get(&Some(403)), Some(&8), "{answers:?}");
    assert!(peak.saturating_sub(rss_before) < 32 << 10);
    // The budget is given back: a signed call goes through.
    assert_eq!(door_read(&door_client(&sidecar)).await, arn);
}

/// Bytes the server has written to its log and to `audit`.
/// What 5,000 refused reads left behind.
struct Written {
    /// Every refusal is in the audit, one by one or in a summary.
    accounted: bool,
    /// Bytes the log and the audit file grew by.
    grew: usize,
    /// Refusals audited one by one, and in summaries.
    each: usize,
    summed: u64,
    /// Refusals the metrics counted.
    counted: f64,
}

/// After 5,000 refusals of GetEncryptionKey: an authenticated caller's mutation (audited
/// whatever the refusals), then what was written, once the last summary is (a second after
/// its first refusal; waited for at most 10 s).
async fn after_5000_refusals(sidecar: &Sidecar, audit: &std::path::Path, before: usize) -> Written {
    sidecar.key_in_use().await;
    let refused = |l: &serde_json::Value| l["code"] == "UNAUTHENTICATED";
    let accounted = eventually(Duration::from_secs(10), || async {
        let (each, summed) = refusals_audited(audit, refused);
        each as u64 + summed == 5_000
    })
    .await;
    let grew = written(sidecar, audit) - before;
    let (each, summed) = refusals_audited(audit, refused);
    Written {
        accounted,
        grew,
        each,
        summed,
        counted: denials(sidecar, "GetEncryptionKey"),
    }
}

fn written(sidecar: &Sidecar, audit: &std::path::Path) -> usize {
    sidecar.log().len() + std::fs::metadata(audit).map_or(0, |m| m.len() as usize)
}

/// The audit file's lines.
fn audit_file_lines(audit: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Refusals the audit file accounts for: those written one by one (matching `one`) and
/// those its summaries sum.
fn refusals_audited(
    audit: &std::path::Path,
    one: impl Fn(&serde_json::Value) -> bool,
) -> (usize, u64) {
    let lines = audit_file_lines(audit);
    let each = lines.iter().filter(|l| one(l)).count();
    let summed = lines
        .iter()
        .filter(|l| l["summary"] == "refusals_not_audited_one_by_one")
        .map(|l| l["refusals"].as_u64().unwrap())
        .sum();
    (each, summed)
}

/// Denials of `rpc` to callers without a role, as the metrics count them.
fn denials(sidecar: &Sidecar, rpc: &str) -> f64 {
    counter(
        sidecar,
        "inspector_keyd_authz_decisions",
        &[("rpc", rpc), ("role", "none"), ("decision", "deny")],
    )
}

/// 5,000 badly signed reads on one keep-alive connection to the door: every one answered
/// 403 and counted, but only a few logged and audited one by one and the rest summed in a
/// line a second, so the log and audit file grow by under 100 KB (2.8 MB of audit and
/// 5.6 MB of log before). An authenticated caller's audited call meanwhile is written.
#[tokio::test]
async fn five_thousand_bad_signatures_write_under_100_kb_of_log_and_audit_while_the_refusal_counter_says_5000()
 {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let sidecar = Sidecar::start_with(&format!("[authz]\naudit_file = {audit:?}\n"));
    let door = sidecar.aws_api.unwrap();
    let (key_id, _) = sidecar.aws_key("inspector-keyd-admin");
    let path = "/encryptionkey/get?resourceType=AWS_LAMBDA_FUNCTION&scanType=CODE";
    let mut headers = http::HeaderMap::new();
    headers.insert("host", door.to_string().parse().unwrap());
    inspector_keyd::aws_api::sigv4::sign_for_tests(
        "GET",
        path,
        &mut headers,
        b"",
        (&key_id, "not-the-secret-0123456789"),
        "us-east-1",
        std::time::SystemTime::now(),
    )
    .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    request.push_str("\r\n");
    let before = written(&sidecar, &audit);

    let mut stream = tokio::io::BufStream::new(tokio::net::TcpStream::connect(door).await.unwrap());
    let mut forbidden = 0;
    for _ in 0..5_000 {
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        forbidden += usize::from(status.starts_with("HTTP/1.1 403"));
    }
    let Written {
        accounted,
        grew,
        each,
        summed,
        counted,
    } = after_5000_refusals(&sidecar, &audit, before).await;
    println!(
        "5,000 bad signatures on one connection: {forbidden} answered 403, {counted} counted, \
         {each} audited one by one and {summed} in summaries; log and audit grew {grew} bytes"
    );
    assert_eq!(forbidden, 5_000);
    assert_eq!(counted, 5_000.0);
    assert!(accounted, "{each} + {summed}");
    assert!(grew < 100_000, "{grew} bytes written");
    assert!(
        sidecar
            .log()
            .contains("more refusals of unauthenticated callers in the last second")
    );
    assert!(audit_file_lines(&audit).iter().any(|l| l["rpc"]
        == "/inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey"
        && l["decision"] == "allowed"));
}

/// The same on gRPC: 5,000 calls with a bearer token the sidecar does not know, from
/// loopback TCP, answered `UNAUTHENTICATED` and counted every one, written at a bounded
/// rate; an authenticated caller's mutation meanwhile is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_unknown_tokens_on_grpc_write_under_100_kb_of_log_and_audit() {
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let sidecar = Sidecar::start_with(&format!("[authz]\naudit_file = {audit:?}\n"));
    let client = sidecar.read_only_keys().await;
    let before = written(&sidecar, &audit);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut client = client.clone();
        calls.spawn(async move {
            let mut unauthenticated = 0;
            for _ in 0..100 {
                let mut request = tonic::Request::new(get_request(LAMBDA));
                request
                    .metadata_mut()
                    .insert("authorization", "Bearer not-a-known-token".parse().unwrap());
                let status = client.get_encryption_key(request).await.unwrap_err();
                unauthenticated += usize::from(status.code() == Code::Unauthenticated);
            }
            unauthenticated
        });
    }
    let mut unauthenticated = 0;
    while let Some(n) = calls.join_next().await {
        unauthenticated += n.unwrap();
    }
    let Written {
        accounted,
        grew,
        each,
        summed,
        counted,
    } = after_5000_refusals(&sidecar, &audit, before).await;
    println!(
        "5,000 unknown tokens on gRPC: {unauthenticated} answered UNAUTHENTICATED, {counted} \
         counted, {each} audited one by one and {summed} in summaries; log and audit grew \
         {grew} bytes"
    );
    assert_eq!(unauthenticated, 5_000);
    assert_eq!(counted, 5_000.0);
    assert!(accounted, "{each} + {summed}");
    assert!(grew < 100_000, "{grew} bytes written");
    assert!(audit_file_lines(&audit).iter().any(|l| l["rpc"]
        == "/inspectorkeyd.v1.EncryptionKeyService/UpdateEncryptionKey"
        && l["decision"] == "allowed"));
}
