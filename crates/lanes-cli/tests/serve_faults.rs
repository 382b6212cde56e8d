//! `lanes serve` under hostile clients and networks, one test per probe:
//! slowloris headers and bodies, idle keep-alive, an idle flood past
//! `--max-connections`, a heavy request next to a tiny one, disconnects,
//! deadlines, token-based admission, SIGTERM behind stalled clients, API keys,
//! `/health` while the model loads, and over-long inputs. Raw sockets
//! (`std::net::TcpStream`) so each probe controls every byte.
//!
//! The bounds on elapsed time below are what the probe is about (a timeout
//! that never fires, a request stuck behind another) and are several times
//! the configured timeouts, so a loaded machine does not fail them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

mod cli_support;
#[path = "cli_support/server.rs"]
mod server;

use server::{parse_response, request_bytes, sentences, tokenizer, Server};

/// Reads until the peer closes the connection (EOF or reset) and returns what
/// arrived and when; `None` if it stayed open for `limit`.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some((start.elapsed(), got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some((start.elapsed(), got)),
        }
    }
}

/// Writes `bytes` one at a time, `every` apart, until done or the peer is gone.
fn drip(mut s: TcpStream, bytes: Vec<u8>, every: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for b in bytes {
            std::thread::sleep(every);
            if s.write_all(&[b]).is_err() {
                return;
            }
        }
    })
}

/// `POST /v1/embeddings` with `texts`, written on a raw connection that is
/// left for the caller to read or drop.
fn send_raw(server: &Server, texts: &[String]) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).expect("connect");
    let body = json!({ "input": texts }).to_string();
    s.write_all(&request_bytes(
        "POST",
        "/v1/embeddings",
        &[],
        body.as_bytes(),
    ))
    .expect("write request");
    s
}

/// Polls until `series` is present and satisfies `ok`, for at most `limit`.
fn wait_metric(server: &Server, series: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        let v = server.metric(series);
        if let Some(v) = v.filter(|&v| ok(v)) {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "{series} is {v:?} after {limit:?}; /metrics:\n{}",
            server.get("/metrics").body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tokens(texts: &[String]) -> usize {
    let tok = tokenizer();
    texts.iter().map(|t| tok.encode(t).unwrap().0.len()).sum()
}

#[test]
fn slowloris_headers_are_cut_off_while_others_are_served() {
    let Some(server) = Server::start(&["--header-timeout-secs", "1"]) else {
        return;
    };
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let dripper = drip(
        s.try_clone().unwrap(),
        vec![b'a'; 200],
        Duration::from_millis(200),
    );
    std::thread::sleep(Duration::from_millis(300));
    server.assert_serves("during a slowloris");
    let closed = wait_closed(&mut s, Duration::from_secs(10));
    let Some((after, got)) = closed else {
        panic!(
            "a connection dripping its headers for 10 s was not closed (--header-timeout-secs 1)"
        )
    };
    eprintln!(
        "slowloris closed after {after:?}; sent: {:?}",
        String::from_utf8_lossy(&got)
    );
    if let Some(r) = parse_response(&got) {
        assert_eq!(r.status, 408, "{}", r.brief());
    }
    dripper.join().unwrap();
    server.assert_serves("after a slowloris");
}

#[test]
fn slow_body_is_cut_off() {
    let Some(server) = Server::start(&["--body-timeout-secs", "1"]) else {
        return;
    };
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"input\": \"",
    )
    .unwrap();
    let dripper = drip(
        s.try_clone().unwrap(),
        vec![b'a'; 200],
        Duration::from_millis(200),
    );
    let Some((after, got)) = wait_closed(&mut s, Duration::from_secs(10)) else {
        panic!("a body dripped for 10 s was not cut off (--body-timeout-secs 1)")
    };
    eprintln!(
        "slow body closed after {after:?}; sent: {:?}",
        String::from_utf8_lossy(&got)
    );
    if let Some(r) = parse_response(&got) {
        assert!(matches!(r.status, 408 | 400), "{}", r.brief());
    }
    dripper.join().unwrap();
    server.assert_serves("after a slow body");
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let Some(server) = Server::start(&["--idle-timeout-secs", "1"]) else {
        return;
    };
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read exactly one response, then stay silent on the kept-alive connection.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while parse_response(&got).is_none_or(|r| {
        r.header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|l| r.body.len() < l)
    }) {
        let n = s.read(&mut buf).expect("read the response");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(parse_response(&got).unwrap().status, 200);
    let Some((after, _)) = wait_closed(&mut s, Duration::from_secs(10)) else {
        panic!("an idle keep-alive connection stayed open 10 s (--idle-timeout-secs 1)")
    };
    eprintln!("idle keep-alive closed after {after:?}");
}

#[test]
fn idle_flood_past_max_connections_still_lets_a_request_through() {
    let cap = 8;
    let Some(server) = Server::start(&[
        "--max-connections",
        &cap.to_string(),
        "--header-timeout-secs",
        "2",
    ]) else {
        return;
    };
    let before = server.open_sockets();
    let flood: Vec<TcpStream> = (0..cap * 5)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = server.open_sockets();
    eprintln!(
        "{} idle connections: the server holds {held} sockets (before: {before})",
        flood.len()
    );
    assert!(
        held <= before + cap + 1,
        "the server holds {held} sockets with --max-connections {cap} (before the flood: {before})"
    );
    // A real client retries a refused or reset connection; it must get an
    // answer within three header timeouts (not after the flood drains through
    // the cap one header timeout per `cap` connections: 10 s here).
    let start = Instant::now();
    let mut attempts = 0;
    let body = json!({"input": ["through the flood"]}).to_string();
    let answered = loop {
        attempts += 1;
        match server.try_request(
            "POST",
            "/v1/embeddings",
            &[],
            body.as_bytes(),
            Duration::from_secs(6),
        ) {
            Ok(r) if r.status == 200 => break start.elapsed(),
            Ok(r) if r.status != 503 => panic!("{}", r.brief()),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "no answer within 6 s behind {} idle connections ({attempts} attempts)",
            flood.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("answered after {answered:?} ({attempts} attempts)");
    drop(flood);
}

#[test]
fn a_tiny_request_is_answered_within_a_second_next_to_a_heavy_one() {
    // Small passes (256 tokens, the least that holds one 256-token input) on
    // one worker per core: a fair queue lets the tiny request into the next
    // free pass, so its wait is about one pass.
    let Some(server) = Server::start(&[
        "--max-batch-tokens",
        "256",
        "--workers",
        "2",
        "--max-queue-tokens",
        "1000000",
    ]) else {
        return;
    };
    let heavy = send_raw(&server, &sentences(2000));
    wait_metric(
        &server,
        "lanes_queue_tokens",
        Duration::from_secs(60),
        |v| v > 0.0,
    );
    let start = Instant::now();
    let tiny = server.post("/v1/embeddings", &json!({"input": "tiny"}));
    let took = start.elapsed();
    assert_eq!(tiny.status, 200, "{}", tiny.brief());
    let still_queued = server.metric("lanes_queue_tokens").unwrap();
    eprintln!("tiny answered in {took:?}; heavy still has {still_queued} tokens queued");
    assert!(
        still_queued > 0.0,
        "the heavy request finished first: this probe did not overlap"
    );
    assert!(
        took < Duration::from_secs(1),
        "a one-text request took {took:?} next to a 2000-text one"
    );
    heavy.shutdown(Shutdown::Both).ok();
}

#[test]
fn a_client_disconnect_cancels_its_queued_work() {
    let Some(server) =
        Server::start(&["--max-batch-tokens", "256", "--max-queue-tokens", "1000000"])
    else {
        return;
    };
    let cancelled = server
        .metric("lanes_requests_cancelled_total")
        .expect("/metrics has lanes_requests_cancelled_total");
    let heavy = send_raw(&server, &sentences(2000));
    wait_metric(
        &server,
        "lanes_queue_tokens",
        Duration::from_secs(60),
        |v| v > 0.0,
    );
    heavy.shutdown(Shutdown::Both).ok();
    drop(heavy);
    let start = Instant::now();
    wait_metric(
        &server,
        "lanes_requests_cancelled_total",
        Duration::from_secs(10),
        |v| v > cancelled,
    );
    wait_metric(
        &server,
        "lanes_queue_tokens",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    eprintln!(
        "cancelled and drained {:?} after the disconnect",
        start.elapsed()
    );
    // No work continues for the gone client: the server is (nearly) idle.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, t0) = (server.cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let busy = (server.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    eprintln!("server CPU after the cancel: {busy:.2} cores");
    assert!(
        busy < 0.5,
        "the server still uses {busy:.2} cores after its only client left"
    );
    server.assert_serves("after a cancel");
}

#[test]
fn a_request_past_its_deadline_is_answered_and_dropped() {
    let Some(server) = Server::start(&[
        "--request-timeout-secs",
        "1",
        "--inject-faults",
        "--workers",
        "1",
    ]) else {
        return;
    };
    let start = Instant::now();
    let r = server.post(
        "/v1/embeddings",
        &json!({"input": ["__lanes_fault:sleep_ms=8000__", "and a text"]}),
    );
    let took = start.elapsed();
    eprintln!("deadline answer after {took:?}: {}", r.brief());
    assert!(matches!(r.status, 503 | 504), "{}", r.brief());
    assert!(
        took < Duration::from_secs(5),
        "--request-timeout-secs 1, answered after {took:?}"
    );
    assert!(
        server.metric("lanes_requests_expired_total").unwrap_or(0.0) >= 1.0,
        "lanes_requests_expired_total did not count it"
    );
}

#[test]
fn admission_counts_tokens_and_answers_429_with_retry_after() {
    let a: Vec<String> = std::iter::once("__lanes_fault:sleep_ms=3000__".to_string())
        .chain(sentences(40))
        .collect();
    let b: Vec<String> = sentences(80)[40..].to_vec();
    let (ta, tb) = (tokens(&a), tokens(&b));
    // Room for either request alone, not for both, even with the first
    // request's first pass (256 tokens) out of the queue.
    let cap = ta.max(tb) + 10;
    assert!(ta + tb > cap + 256, "a {ta}, b {tb} tokens");
    let Some(server) = Server::start(&[
        "--workers",
        "1",
        "--inject-faults",
        "--max-batch-tokens",
        "256",
        "--max-queue-tokens",
        &cap.to_string(),
    ]) else {
        return;
    };
    let mut first = send_raw(&server, &a);
    wait_metric(
        &server,
        "lanes_queue_tokens",
        Duration::from_secs(30),
        |v| v > 0.0,
    );
    let refused = server.post("/v1/embeddings", &json!({ "input": b }));
    assert_eq!(refused.status, 429, "{}", refused.brief());
    let retry: u64 = refused
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", refused.headers))
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    // The first request is not hurt, and the refused one fits once it is done.
    let mut raw = Vec::new();
    first.read_to_end(&mut raw).expect("read the first answer");
    let first = parse_response(&raw).expect("an HTTP answer");
    assert_eq!(first.status, 200, "{}", first.brief());
    let again = server.post("/v1/embeddings", &json!({ "input": b }));
    assert_eq!(again.status, 200, "{}", again.brief());
}

#[test]
fn sigterm_behind_stalled_clients_exits_0_within_the_timeout() {
    let Some(mut server) = Server::start(&[
        "--shutdown-timeout-secs",
        "2",
        "--header-timeout-secs",
        "120",
        "--body-timeout-secs",
        "120",
        "--idle-timeout-secs",
        "120",
    ]) else {
        return;
    };
    // Half a request line and headers, never finished.
    let mut half_head = TcpStream::connect(server.addr).unwrap();
    half_head
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A body promised and never sent.
    let mut half_body = TcpStream::connect(server.addr).unwrap();
    half_body
        .write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"inputs\"")
        .unwrap();
    // A kept-alive connection after one answer.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert!(idle.read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    let took = start.elapsed();
    let Some(status) = status else {
        panic!(
            "still running 10 s after SIGTERM (--shutdown-timeout-secs 2); stderr:\n{}",
            server.stderr()
        )
    };
    eprintln!("exited {status} after {took:?}");
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exit status; stderr:\n{}",
        server.stderr()
    );
    assert!(
        took < Duration::from_secs(6),
        "--shutdown-timeout-secs 2, exited after {took:?}"
    );
}

#[test]
fn api_key_is_required_except_on_health() {
    let Some(server) = Server::start(&["--api-key", "sekrit-123"]) else {
        return;
    };
    let ask = |path: &str, auth: Option<&str>| {
        let body = if path == "/embed" {
            json!({"inputs": "hello"})
        } else {
            json!({"input": "hello"})
        }
        .to_string();
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        // Through exchange() directly: Server::request would add the key.
        server::exchange(
            server.addr,
            &request_bytes("POST", path, &headers, body.as_bytes()),
            Duration::from_secs(60),
        )
        .expect("an answer")
    };
    for path in ["/v1/embeddings", "/embed"] {
        let none = ask(path, None);
        assert_eq!(none.status, 401, "{path} without a key: {}", none.brief());
        let wrong = ask(path, Some("Bearer sekrit-12"));
        assert_eq!(
            wrong.status,
            401,
            "{path} with a wrong key: {}",
            wrong.brief()
        );
        assert!(
            !wrong.body.contains("sekrit"),
            "the key leaks: {}",
            wrong.brief()
        );
        let basic = ask(path, Some("Basic c2Vrcml0LTEyMw=="));
        assert_eq!(
            basic.status,
            401,
            "{path} with Basic auth: {}",
            basic.brief()
        );
        let right = ask(path, Some("Bearer sekrit-123"));
        assert_eq!(right.status, 200, "{path} with the key: {}", right.brief());
    }
    let health = server::exchange(
        server.addr,
        &request_bytes("GET", "/health", &[], b""),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(health.status, 200, "/health is open: {}", health.brief());
}

#[test]
fn health_says_loading_until_the_model_is_ready() {
    let Some(server) = Server::spawn(&[]) else {
        return;
    };
    // The port is bound before the model loads: every probe connects, and
    // answers 503 "loading" until it answers 200.
    let start = Instant::now();
    let mut loading = 0;
    loop {
        let r = server
            .try_request("GET", "/health", &[], b"", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("/health right after `listening on`: {e}"));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.brief());
        assert!(r.body.contains("loading"), "{}", r.brief());
        loading += 1;
        assert!(start.elapsed() < Duration::from_secs(180), "never ready");
    }
    eprintln!(
        "{loading} answers of 503 loading, ready after {:?}",
        start.elapsed()
    );
    assert!(
        loading > 0,
        "no `loading` answer: was the model loaded before the port was bound?"
    );
    server.assert_serves("once loaded");
}

#[test]
fn over_long_input_is_413_unless_truncation_is_asked_for() {
    let long = "word ".repeat(600);
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let r = server.post("/v1/embeddings", &json!({"input": ["short", long]}));
    assert_eq!(r.status, 413, "{}", r.brief());
    assert!(
        ["input 1", "input[1]", "inputs[1]", "index 1"]
            .iter()
            .any(|n| r.body.contains(n)),
        "the 413 does not name input 1: {}",
        r.brief()
    );
    let ids: Vec<u32> = tokenizer().encode(&long).unwrap().0;
    let r = server.post("/v1/embeddings", &json!({ "input": [ids] }));
    assert_eq!(r.status, 413, "token array of {}: {}", ids.len(), r.brief());
    let r = server.post("/embed", &json!({"inputs": long, "truncate": false}));
    assert_eq!(r.status, 413, "{}", r.brief());
    let cut = server.post("/embed", &json!({"inputs": long, "truncate": true}));
    assert_eq!(cut.status, 200, "{}", cut.brief());
    let reference = server::lanes_embed(std::slice::from_ref(&long));
    server::assert_close("truncate:true", &cut.tei_vectors(), &reference, 0.99999);
    drop(server);

    let Some(auto) = Server::start(&["--auto-truncate"]) else {
        return;
    };
    let r = auto.post("/v1/embeddings", &json!({ "input": long }));
    assert_eq!(r.status, 200, "{}", r.brief());
    assert_eq!(r.json()["usage"]["prompt_tokens"], 256);
    server::assert_close("--auto-truncate", &r.openai_vectors(), &reference, 0.99999);
    let r = auto.post("/embed", &json!({"inputs": long, "truncate": false}));
    assert_eq!(
        r.status,
        413,
        "truncate:false wins over --auto-truncate: {}",
        r.brief()
    );
}
