//! HTTP(S) artifacts against a loopback server that misbehaves: slow, truncated, oversized, missing, unchanged, or not there at all.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use mapek::registry::fetch::{FetchError, FetchLimits, Fetched, Fetcher};

/// A server that answers each connection with `respond(request)`, written raw.
fn raw_server(respond: fn(&str, &mut std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                respond(&req, &mut s);
            });
        }
    });
    port
}

fn limits() -> FetchLimits {
    FetchLimits {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(800),
        max_bytes: 1024,
        concurrency: 4,
    }
}

#[tokio::test]
async fn a_whole_answer_is_hashed_as_it_streams_and_a_304_costs_nothing() {
    let port = raw_server(|req, s| {
        if req.contains("If-None-Match: \"v1\"") || req.contains("if-none-match: \"v1\"") {
            let _ = s.write_all(
                b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\nETag: \"v1\"\r\nContent-Length: 0\r\n\r\n",
            );
        } else {
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    let f = Fetcher::new(limits()).expect("fetcher");
    let url = format!("http://127.0.0.1:{port}/a.tar.gz");
    let first = f.fetch(&url, true).await.expect("fetched");
    use sha2::Digest;
    let want: [u8; 32] = sha2::Sha256::digest(b"hello").into();
    assert_eq!(
        first,
        Fetched::Fresh {
            bytes: b"hello".to_vec(),
            sha256: want
        }
    );
    assert_eq!(
        f.fetch(&url, true).await.expect("again"),
        Fetched::Unchanged { sha256: want }
    );
    // Unconditional: the whole body again.
    assert_eq!(f.get(&url).await.expect("get").0, b"hello");
}

#[tokio::test]
async fn a_missing_artifact_is_its_status_not_an_outage() {
    let port = raw_server(|_, s| {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    });
    let f = Fetcher::new(limits()).expect("fetcher");
    let e = f
        .get(&format!("http://127.0.0.1:{port}/x"))
        .await
        .expect_err("404");
    assert!(matches!(e, FetchError::Status { status: 404, .. }), "{e}");
    assert!(!e.unreachable());
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_refused_before_it_is_read() {
    let port = raw_server(|_, s| {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4096\r\n\r\n");
        let _ = s.write_all(&[b'x'; 4096]);
    });
    let f = Fetcher::new(limits()).expect("fetcher");
    let e = f
        .get(&format!("http://127.0.0.1:{port}/big"))
        .await
        .expect_err("too large");
    assert!(matches!(e, FetchError::TooLarge { limit: 1024, .. }), "{e}");
    // Without a length (chunked), the limit is held while it streams.
    let port = raw_server(|_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        for _ in 0..8 {
            let _ = s.write_all(b"200\r\n");
            let _ = s.write_all(&[b'y'; 512]);
            let _ = s.write_all(b"\r\n");
        }
        let _ = s.write_all(b"0\r\n\r\n");
    });
    let e = f
        .get(&format!("http://127.0.0.1:{port}/chunked"))
        .await
        .expect_err("too large");
    assert!(matches!(e, FetchError::TooLarge { .. }), "{e}");
}

#[tokio::test]
async fn a_body_cut_short_is_truncated_not_taken() {
    let port = raw_server(|_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 900\r\n\r\nonly this",
        );
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let f = Fetcher::new(limits()).expect("fetcher");
    let e = f
        .get(&format!("http://127.0.0.1:{port}/cut"))
        .await
        .expect_err("truncated");
    assert!(matches!(e, FetchError::Truncated { .. }), "{e}");
}

#[tokio::test]
async fn a_slow_server_and_a_closed_port_are_the_sensors_failing() {
    let port = raw_server(|_, s| {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10\r\n\r\nab");
        std::thread::sleep(Duration::from_secs(3));
        let _ = s.write_all(b"cdefghij");
    });
    let f = Fetcher::new(limits()).expect("fetcher");
    let started = std::time::Instant::now();
    let e = f
        .get(&format!("http://127.0.0.1:{port}/slow"))
        .await
        .expect_err("timed out");
    assert!(e.unreachable(), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the total timeout holds"
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let e = f
        .get(&format!("http://127.0.0.1:{closed}/x"))
        .await
        .expect_err("refused");
    assert!(matches!(e, FetchError::Unreachable { .. }), "{e}");
}
