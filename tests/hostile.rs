//! Hostile clients against the real server: malformed gRPC frames sent raw over HTTP/2,
//! oversized metadata, many idle connections, and a client that sends requests but never
//! reads the answers. Each is refused or contained, and the server keeps serving others.
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

/// Sends one request with `body` as its whole DATA, on a fresh HTTP/2 connection over `io`,
/// and returns the gRPC status code the server answered with (from the headers of a
/// trailers-only answer, or from the trailers), or the HTTP/2 error.
async fn raw_call<T>(
    io: T,
    path: &str,
    extra_headers: &[(&str, String)],
    body: Bytes,
) -> Result<i32, h2::Error>
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
    if let Some(code) = code(&parts.headers) {
        return Ok(code);
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(code(&trailers).unwrap_or(-1))
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
    let cases: Vec<(&str, Bytes, &[i32])> = vec![
        // Bytes that are no protobuf message (a field with wire type 7).
        ("garbage", grpc_frame(0, 5, &[0xff; 5]), &[13]),
        // A length past the request size limit.
        ("declared 4 GiB", grpc_frame(0, u32::MAX, &[0; 16]), &[11]),
        // The stream ends before the declared length.
        ("truncated", grpc_frame(0, 100, &valid_update[..4]), &[13]),
        // Half a frame header.
        ("partial prefix", Bytes::from_static(&[0, 0, 0]), &[13]),
        // Compressed without a grpc-encoding.
        ("compressed", grpc_frame(1, 5, &[1, 2, 3, 4, 5]), &[12, 13]),
        // A valid message followed by trailing bytes that are not a frame.
        (
            "trailing bytes",
            {
                let mut bytes = grpc_frame(0, valid_update.len() as u32, &valid_update).to_vec();
                bytes.extend_from_slice(&[9, 9]);
                Bytes::from(bytes)
            },
            &[13],
        ),
    ];
    for (name, body, expected) in cases {
        // As admin, on the Unix socket: an Update that would change state if it got through.
        let socket = tokio::net::UnixStream::connect(&sidecar.socket)
            .await
            .unwrap();
        let code = raw_call(socket, UPDATE, &[], body.clone()).await;
        match code {
            Ok(code) => assert!(expected.contains(&code), "{name}: grpc-status {code}"),
            Err(e) => panic!("{name}: the server broke the connection: {e}"),
        }
        // And a read over loopback TCP.
        let code = raw_call(tcp(&sidecar).await, GET, &[], body).await;
        assert!(matches!(code, Ok(c) if c != 0), "{name}: {code:?}");
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
    let code = raw_call(
        tcp(&sidecar).await,
        GET,
        &[("x-note", "a".repeat(4 << 10))],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(code, Code::NotFound as i32);
    // A megabyte of metadata: refused without an answer to it, the server unharmed.
    let refused = raw_call(
        tcp(&sidecar).await,
        GET,
        &[("x-note", "a".repeat(1 << 20))],
        body.clone(),
    )
    .await;
    assert!(
        !matches!(refused, Ok(0)),
        "a 1 MiB header was served: {refused:?}"
    );
    // Many headers summing past the limit, too.
    let many: Vec<(&str, String)> = (0..2000).map(|_| ("x-many", "b".repeat(32))).collect();
    let refused = raw_call(tcp(&sidecar).await, GET, &many, body).await;
    assert!(!matches!(refused, Ok(0)), "{refused:?}");
    still_serving(&sidecar).await;
}

#[tokio::test]
async fn many_idle_connections_do_not_stop_service() {
    let sidecar = Sidecar::start();
    still_serving(&sidecar).await;
    let before = sidecar.rss_kib();
    let mut idle = Vec::new();
    // Bare TCP connections that never say anything, and HTTP/2 connections that handshake
    // and then stay silent.
    for _ in 0..300 {
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
    println!("500 idle connections: resident memory grew {growth} KiB");
    assert!(growth < 64 << 10, "grew {growth} KiB");
    drop((idle, handshaken));
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

#[tokio::test]
async fn a_client_that_never_reads_is_contained() {
    use tokio::io::AsyncWriteExt;
    let sidecar = Sidecar::start();
    still_serving(&sidecar).await;
    let before = sidecar.rss_kib();
    let valid_get = {
        use prost::Message;
        get_request(LAMBDA).encode_to_vec()
    };
    let message = grpc_frame(0, valid_get.len() as u32, &valid_get);

    // Requests written raw, as fast as the socket takes them; the answers are never read.
    let mut slow = tcp(&sidecar).await;
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
    let growth = sidecar.rss_kib().saturating_sub(before);
    println!("a client that never reads sent {sent} requests; resident memory grew {growth} KiB");
    assert!(sent > 0);
    assert!(growth < 64 << 10, "grew {growth} KiB");
    drop(slow);
    still_serving(&sidecar).await;
}
