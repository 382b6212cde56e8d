//! `lanes serve` end to end: the real binary on 127.0.0.1 with a free port, a
//! real HTTP client (ureq), the real model on the CPU backend.
//!
//! Needs the model: `$LANES_MODEL` or `<workspace>/models/all-MiniLM-L6-v2`
//! (`scripts/fetch-model.sh`); `LANES_SKIP_MODEL_TESTS=1` skips instead of failing.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod cli_support;
#[path = "cli_support/server.rs"]
mod server;

use cli_support::{cosine, floats, max_abs_diff, model_dir};

/// (text, sentence-transformers embedding) of the 25 fixture lines.
fn fixtures() -> Vec<(String, Vec<f32>)> {
    let lines: Vec<(String, Vec<f32>)> = cli_support::fixture()
        .iter()
        .map(|v| {
            (
                v["text"].as_str().expect("text").to_string(),
                floats(&v["embedding"]),
            )
        })
        .collect();
    assert_eq!(lines.len(), 25, "fixture lines");
    lines
}

/// Batches of different shapes may round differently in the last bits.
const SAME: f32 = 1e-5;

struct Resp {
    status: u16,
    body: String,
    retry_after: Option<String>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// `data[i].embedding` of an OpenAI response, checking `index`.
    fn openai_vectors(&self) -> Vec<Vec<f32>> {
        assert_eq!(self.status, 200, "{}", self.body);
        let v = self.json();
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().expect("data");
        data.iter()
            .enumerate()
            .map(|(i, d)| {
                assert_eq!(d["object"], "embedding");
                assert_eq!(d["index"].as_u64(), Some(i as u64));
                let e = floats(&d["embedding"]);
                assert_eq!(e.len(), 384);
                e
            })
            .collect()
    }
}

/// A running `lanes serve` (cli_support's: spawned, ready, killed on drop) with
/// a keep-alive ureq client.
struct Server {
    inner: server::Server,
    base: String,
    agent: ureq::Agent,
}

impl Server {
    fn start(extra: &[&str]) -> Option<Server> {
        let inner = server::Server::start(extra)?;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        Some(Server {
            base: inner.base.clone(),
            inner,
            agent,
        })
    }

    /// Everything the server wrote on stderr so far.
    fn stderr(&self) -> String {
        self.inner.stderr()
    }

    fn send(&self, req: ureq::Request, body: Option<&[u8]>) -> Resp {
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_bytes(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}; server stderr:\n{}", self.stderr()),
        };
        let status = resp.status();
        let retry_after = resp.header("Retry-After").map(str::to_string);
        let mut body = String::new();
        resp.into_reader()
            .read_to_string(&mut body)
            .expect("read body");
        Resp {
            status,
            body,
            retry_after,
        }
    }

    fn post(&self, path: &str, body: &str) -> Resp {
        self.send(
            self.agent.post(&format!("{}{path}", self.base)),
            Some(body.as_bytes()),
        )
    }

    fn get(&self, path: &str) -> Resp {
        self.send(self.agent.get(&format!("{}{path}", self.base)), None)
    }

    /// One Prometheus sample's value: `series` is `name` or `name{a="x",b="y"}`,
    /// its labels in any order; 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").body;
        let want = sample_key(series);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (sample_key(key) == want).then(|| value.trim().parse().expect("a number"))
            })
            .unwrap_or(0.0)
    }

    /// Embeddings of `texts` in one OpenAI request.
    fn embed(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        self.post(
            "/v1/embeddings",
            &serde_json::json!({ "input": texts }).to_string(),
        )
        .openai_vectors()
    }

    fn signal_term(&self) {
        self.inner.signal("TERM");
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.inner.wait_exit(limit).unwrap_or_else(|| {
            panic!(
                "lanes serve did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            )
        })
    }
}

/// A Prometheus sample's name and sorted labels.
fn sample_key(series: &str) -> (String, Vec<String>) {
    match series.split_once('{') {
        None => (series.to_string(), Vec::new()),
        Some((name, rest)) => {
            let mut labels: Vec<String> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            labels.sort();
            (name.to_string(), labels)
        }
    }
}

#[test]
fn embeddings_match_lanes_embed_and_the_reference() {
    // One fixture text is over 256 tokens: truncate as `lanes embed` does.
    let Some(server) = Server::start(&["--auto-truncate"]) else {
        return;
    };
    let fixtures = fixtures();
    let texts: Vec<&str> = fixtures.iter().map(|(t, _)| t.as_str()).collect();

    // OpenAI shape, all 25 in one request.
    let resp = server.post(
        "/v1/embeddings",
        &serde_json::json!({"input": texts, "model": "x"}).to_string(),
    );
    let batch = resp.openai_vectors();
    let v = resp.json();
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    let tokens = v["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(tokens));

    // `lanes embed` on the same texts.
    let input: String = texts
        .iter()
        .map(|t| format!("{}\n", serde_json::to_string(t).unwrap()))
        .collect();
    let mut embed = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args(["embed", "--device", "cpu", "--format", "jsonl", "--model"])
        .arg(model_dir().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lanes embed");
    {
        use std::io::Write;
        embed
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = embed.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lanes embed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Vec<(u64, Vec<f32>)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["tokens"].as_u64().unwrap(), floats(&v["embedding"]))
        })
        .collect();
    assert_eq!(cli.len(), 25);
    assert_eq!(
        cli.iter().map(|(t, _)| t).sum::<u64>(),
        tokens,
        "usage.prompt_tokens = tokens of `lanes embed`"
    );

    // TEI shape, and one text per request.
    let tei = server.post("/embed", &serde_json::json!({"inputs": texts}).to_string());
    assert_eq!(tei.status, 200, "{}", tei.body);
    let tei: Vec<Vec<f32>> = tei.json().as_array().unwrap().iter().map(floats).collect();
    let tei_one = server.post(
        "/embed",
        &serde_json::json!({"inputs": texts[0]}).to_string(),
    );
    assert_eq!(
        tei_one.json().as_array().map(Vec::len),
        Some(1),
        "a string input still answers [[...]]"
    );

    let (mut worst_cli, mut worst_single, mut worst_cos) = (0f32, 0f32, 1f64);
    for (i, (text, reference)) in fixtures.iter().enumerate() {
        let single = server
            .post(
                "/v1/embeddings",
                &serde_json::json!({"input": text}).to_string(),
            )
            .openai_vectors();
        assert_eq!(single.len(), 1);
        worst_cli = worst_cli.max(max_abs_diff(&batch[i], &cli[i].1));
        worst_single = worst_single.max(max_abs_diff(&batch[i], &single[0]));
        assert_eq!(
            tei[i], batch[i],
            "text {i}: /embed and /v1/embeddings, same batch"
        );
        for v in [&batch[i], &single[0]] {
            let c = cosine(v, reference);
            worst_cos = worst_cos.min(c);
            assert!(
                c >= 0.99999,
                "text {i}: cosine {c} with the sentence-transformers reference"
            );
        }
    }
    eprintln!("max |serve - lanes embed| = {worst_cli:e}; max |batched - single| = {worst_single:e}; min cosine vs reference = {worst_cos}");
    assert!(
        worst_cli <= SAME,
        "serve vs lanes embed differ by {worst_cli}"
    );
    assert!(
        worst_single <= SAME,
        "batched vs single differ by {worst_single}"
    );

    // base64 encoding: little-endian f32 bytes of the same vector.
    let b64 = server.post(
        "/v1/embeddings",
        &serde_json::json!({"input": texts[0], "encoding_format": "base64"}).to_string(),
    );
    assert_eq!(b64.status, 200, "{}", b64.body);
    let decoded = decode_base64_f32(
        b64.json()["data"][0]["embedding"]
            .as_str()
            .expect("a base64 string"),
    );
    let float = server.embed(&[texts[0]]);
    assert_eq!(decoded, float[0]);

    // A text longer than the model's 256 tokens is truncated, not refused.
    let long = "word ".repeat(1000);
    let resp = server.post(
        "/v1/embeddings",
        &serde_json::json!({"input": long}).to_string(),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["usage"]["prompt_tokens"], 256);

    let health = server.get("/health");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "ok");
}

fn decode_base64_f32(s: &str) -> Vec<f32> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut bytes = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | A.iter().position(|&a| a == c).expect("base64 alphabet") as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            bytes.push((bits >> n) as u8);
        }
    }
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn concurrent_clients_get_their_own_results() {
    let Some(server) = Server::start(&["--workers", "2", "--max-wait-ms", "5"]) else {
        return;
    };
    let fixtures = fixtures();
    let texts: Vec<&str> = fixtures.iter().take(8).map(|(t, _)| t.as_str()).collect();
    let singles: Vec<Vec<f32>> = texts.iter().map(|t| server.embed(&[t]).remove(0)).collect();
    let batches_before = server.metric("lanes_batches_total");

    let (threads, per_thread) = (16usize, 3usize);
    let barrier = Barrier::new(threads);
    let worst = Mutex::new(0f32);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (server, texts, singles, barrier, worst) =
                (&server, &texts, &singles, &barrier, &worst);
            s.spawn(move || {
                barrier.wait();
                for r in 0..per_thread {
                    // 1 to 3 texts, a different mix per thread and round.
                    let picks: Vec<usize> = (0..1 + (t + r) % 3)
                        .map(|k| (t * 5 + r * 3 + k) % texts.len())
                        .collect();
                    let input: Vec<&str> = picks.iter().map(|&i| texts[i]).collect();
                    let got = if (t + r) % 2 == 0 {
                        server.embed(&input)
                    } else {
                        let resp = server.post(
                            "/embed",
                            &serde_json::json!({ "inputs": input }).to_string(),
                        );
                        assert_eq!(resp.status, 200, "{}", resp.body);
                        resp.json().as_array().unwrap().iter().map(floats).collect()
                    };
                    assert_eq!(got.len(), picks.len());
                    for (v, &i) in got.iter().zip(&picks) {
                        let d = max_abs_diff(v, &singles[i]);
                        assert!(
                            d <= SAME,
                            "thread {t} round {r}: text {i} differs from its single request by {d}"
                        );
                        let mut w = worst.lock().unwrap();
                        *w = w.max(d);
                    }
                }
            });
        }
    });
    let batches = server.metric("lanes_batches_total") - batches_before;
    let requests = (threads * per_thread) as f64;
    eprintln!("{requests} concurrent requests ran in {batches} forward passes; max diff to single requests {:e}", worst.into_inner().unwrap());
    assert!(batches < requests, "dynamic batching should coalesce some of {requests} concurrent requests (ran {batches} passes)");
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn bad_inputs_are_refused_with_a_message_naming_the_field() {
    let Some(server) = Server::start(&[
        "--workers",
        "1",
        "--max-inputs-per-request",
        "4",
        "--max-body-bytes",
        "4096",
    ]) else {
        return;
    };
    let cases: &[(&str, &str, u16, &str, &str)] = &[
        ("/v1/embeddings", "{not json", 400, "body", "not valid JSON"),
        (
            "/v1/embeddings",
            "[1, 2]",
            400,
            "body",
            "must be a JSON object",
        ),
        (
            "/v1/embeddings",
            "{}",
            400,
            "input",
            "missing field `input`",
        ),
        (
            "/v1/embeddings",
            r#"{"input": 5}"#,
            400,
            "input",
            "`input` must be a string, an array of strings",
        ),
        (
            "/v1/embeddings",
            r#"{"input": null}"#,
            400,
            "input",
            "`input` must be a string, an array of strings",
        ),
        (
            "/v1/embeddings",
            r#"{"input": {"text": "a"}}"#,
            400,
            "input",
            "`input` must be a string, an array of strings",
        ),
        (
            "/v1/embeddings",
            r#"{"input": ["a", 5]}"#,
            400,
            "input",
            "`input[1]` must be a string",
        ),
        (
            "/v1/embeddings",
            r#"{"input": [[101, "x"]]}"#,
            400,
            "input",
            "`input[0][1]` must be an integer token id",
        ),
        (
            "/v1/embeddings",
            r#"{"input": []}"#,
            400,
            "input",
            "`input` must not be an empty array",
        ),
        (
            "/v1/embeddings",
            r#"{"input": "a", "model": 3}"#,
            400,
            "model",
            "`model` must be a string",
        ),
        (
            "/v1/embeddings",
            r#"{"input": "a", "encoding_format": "int8"}"#,
            400,
            "encoding_format",
            "`encoding_format` must be",
        ),
        (
            "/v1/embeddings",
            r#"{"input": "a", "dimensions": 0}"#,
            400,
            "dimensions",
            "`dimensions` must be between 1 and 384",
        ),
        (
            "/v1/embeddings",
            r#"{"input": "a", "dimensions": 385}"#,
            400,
            "dimensions",
            "`dimensions` must be between 1 and 384",
        ),
        (
            "/v1/embeddings",
            r#"{"input": ["a", "b", "c", "d", "e"]}"#,
            413,
            "input",
            "at most 4 per request",
        ),
        ("/embed", "{}", 400, "", "missing field `inputs`"),
        (
            "/embed",
            r#"{"inputs": 5}"#,
            400,
            "",
            "`inputs` must be a string, an array of strings",
        ),
        (
            "/embed",
            r#"{"inputs": []}"#,
            400,
            "",
            "`inputs` must not be an empty array",
        ),
        (
            "/embed",
            r#"{"inputs": "a", "normalize": "no"}"#,
            400,
            "",
            "`normalize` must be a boolean",
        ),
        (
            "/embed",
            r#"{"inputs": "a", "truncate": "yes"}"#,
            400,
            "",
            "`truncate` must be a boolean",
        ),
    ];
    for &(path, body, status, param, needle) in cases {
        let resp = server.post(path, body);
        assert_eq!(resp.status, status, "{path} {body}: {}", resp.body);
        let v = resp.json();
        let message = if path == "/embed" {
            assert_eq!(v["error_type"], "Validation", "{}", resp.body);
            v["error"].as_str().unwrap_or_default().to_string()
        } else {
            assert_eq!(v["error"]["param"], param, "{}", resp.body);
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            message.contains(needle),
            "{path} {body}: message {message:?} lacks {needle:?}"
        );
    }

    // Not UTF-8.
    let resp = server.send(
        server.agent.post(&format!("{}/v1/embeddings", server.base)),
        Some(b"{\"input\": \"\xff\xfe\"}"),
    );
    assert_eq!(resp.status, 400, "{}", resp.body);
    // Too large a body: 413 before any parsing.
    let big = serde_json::json!({ "input": "x".repeat(10_000) }).to_string();
    let resp = server.post("/v1/embeddings", &big);
    assert_eq!(resp.status, 413, "{}", resp.body);
    assert!(resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("larger than the limit of 4096 bytes"));
    // Wrong method, unknown route: JSON errors too.
    let resp = server.get("/v1/embeddings");
    assert_eq!(resp.status, 405, "{}", resp.body);
    let resp = server.get("/nope");
    assert_eq!(resp.status, 404, "{}", resp.body);
    assert!(resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no route"));

    // The server is unharmed and counted everything.
    assert_eq!(server.embed(&["still here", "and well"]).len(), 2);
    assert_eq!(server.get("/health").status, 200);
    let expected_400 = cases.iter().filter(|c| c.2 == 400).count() as f64 + 1.0;
    let got_400 = server.metric("lanes_http_requests_total{path=\"/v1/embeddings\",code=\"400\"}")
        + server.metric("lanes_http_requests_total{path=\"/embed\",code=\"400\"}");
    assert_eq!(got_400, expected_400);
    assert_eq!(
        server.metric("lanes_http_requests_total{path=\"/v1/embeddings\",code=\"413\"}"),
        2.0
    );
}

#[test]
fn an_inference_error_or_panic_fails_only_its_request() {
    // One worker that waits up to 200 ms for company, so the faulty requests
    // share forward passes with good ones.
    let Some(server) =
        Server::start(&["--workers", "1", "--max-wait-ms", "200", "--inject-faults"])
    else {
        return;
    };
    let good = [
        "A man is eating food.",
        "GPU streams let independent work overlap.",
    ];
    let expected: Vec<Vec<f32>> = good.iter().map(|t| server.embed(&[t]).remove(0)).collect();
    let inputs: Vec<Vec<&str>> = vec![
        vec![good[0]],
        vec!["__lanes_fault:error__"],
        vec![good[1], good[0]],
        vec![good[0], "__lanes_fault:panic__"],
        vec![good[1]],
    ];
    let barrier = Barrier::new(inputs.len());
    let results: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|input| {
                let (server, barrier) = (&server, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    server.post(
                        "/v1/embeddings",
                        &serde_json::json!({ "input": input }).to_string(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let check = |resp: &Resp, texts: &[usize]| {
        let got = resp.openai_vectors();
        for (v, &i) in got.iter().zip(texts) {
            assert!(max_abs_diff(v, &expected[i]) <= SAME);
        }
    };
    check(&results[0], &[0]);
    check(&results[2], &[1, 0]);
    check(&results[4], &[1]);
    assert_eq!(results[1].status, 500, "{}", results[1].body);
    assert!(
        results[1].json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected fault"),
        "{}",
        results[1].body
    );
    assert_eq!(results[3].status, 500, "{}", results[3].body);
    assert!(
        results[3].json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("panicked"),
        "{}",
        results[3].body
    );

    // The worker survived.
    let health = server.get("/health");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["workers_alive"], 1);
    assert!(max_abs_diff(&server.embed(&[good[0]])[0], &expected[0]) <= SAME);
    assert!(server.metric("lanes_worker_panics_total") >= 1.0);
    assert!(server.metric("lanes_batch_failures_total") >= 2.0);
}

#[test]
fn overload_answers_429_with_retry_after_and_recovers() {
    let Some(server) =
        Server::start(&["--workers", "1", "--max-queue-tokens", "1", "--no-batching"])
    else {
        return;
    };
    // Long texts keep the single worker busy while the burst arrives.
    let long =
        "The committee postponed its decision until more data could be gathered. ".repeat(20);
    let body = serde_json::json!({ "input": [long] }).to_string();
    let clients = 24;
    let (mut ok, mut overloaded) = (0, 0);
    for _burst in 0..3 {
        let barrier = Barrier::new(clients);
        let results: Vec<Resp> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    let (server, barrier, body) = (&server, &barrier, &body);
                    s.spawn(move || {
                        barrier.wait();
                        server.post("/v1/embeddings", body)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            match r.status {
                200 => ok += 1,
                429 => {
                    overloaded += 1;
                    assert_eq!(
                        r.retry_after.as_deref(),
                        Some("1"),
                        "429 without Retry-After"
                    );
                    let msg = r.json()["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    assert!(msg.contains("overloaded"), "{msg}");
                }
                other => panic!("unexpected status {other}: {}", r.body),
            }
        }
        if overloaded > 0 {
            break;
        }
    }
    eprintln!("burst of {clients}: {ok} answered, {overloaded} refused with 429");
    assert!(
        overloaded > 0,
        "a queue of 1 under a burst of {clients} must refuse some requests"
    );
    assert!(
        ok >= 2,
        "the running request and the queued one are answered"
    );
    // Recovered: the queue drained, new requests are served.
    assert_eq!(server.metric("lanes_queue_texts"), 0.0);
    assert_eq!(server.embed(&["after the storm"]).len(), 1);
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(
        server.metric("lanes_http_requests_total{path=\"/v1/embeddings\",code=\"429\"}"),
        overloaded as f64
    );
}

#[test]
fn sigterm_finishes_every_accepted_request_and_exits_0() {
    // One worker. The first request holds it for 2 s; five more queue behind it;
    // the signal arrives while all six are in flight.
    let Some(mut server) = Server::start(&["--workers", "1", "--no-batching", "--inject-faults"])
    else {
        return;
    };
    let expected = server.embed(&["still embedded"]).remove(0);
    let n = 6;
    let results = std::thread::scope(|s| {
        let send = |sleep_ms: u64| {
            let server = &server;
            s.spawn(move || {
                let fault = format!("__lanes_fault:sleep_ms={sleep_ms}__");
                let body = serde_json::json!({ "input": [fault, "still embedded"] });
                server.post("/v1/embeddings", &body.to_string())
            })
        };
        let wait_for = |series: &str, value: f64| {
            let start = Instant::now();
            while server.metric(series) < value {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{series} never reached {value}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let mut handles = vec![send(2000)];
        wait_for("lanes_workers_busy", 1.0);
        handles.extend((1..n).map(|_| send(50)));
        wait_for("lanes_http_requests_in_flight", n as f64);
        server.signal_term();
        // New connections are refused while the accepted requests finish.
        std::thread::sleep(Duration::from_millis(300));
        let refused =
            std::net::TcpStream::connect(server.base.trim_start_matches("http://")).is_err();
        let results: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (results, refused)
    });
    let (results, refused) = results;
    assert_eq!(results.len(), n);
    for r in &results {
        let v = r.openai_vectors();
        assert_eq!(v.len(), 2);
        assert!(max_abs_diff(&v[1], &expected) <= SAME);
    }
    let status = server.wait_exit(Duration::from_secs(30));
    let stderr = server.stderr();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    assert!(
        refused,
        "a new connection was accepted after SIGTERM; stderr:\n{stderr}"
    );
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

// ---- issue 12: clients, options, robustness -------------------------------

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// A raw connection to the server, for what HTTP clients will not do.
fn raw(server: &Server) -> std::net::TcpStream {
    let s =
        std::net::TcpStream::connect(server.base.trim_start_matches("http://")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Reads until the server closes the connection; the bytes read.
fn read_until_closed(s: &mut std::net::TcpStream) -> Result<String, std::io::Error> {
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Err(e) => Err(e),
    }
}

fn tokenize(server: &Server, text: &str) -> Vec<i64> {
    let r = server.post(
        "/tokenize",
        &serde_json::json!({ "inputs": text }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()[0]
        .as_array()
        .expect("tokens of input 0")
        .iter()
        .map(|t| t["id"].as_i64().expect("id"))
        .collect()
}

#[test]
fn token_array_inputs_embed_like_their_text_and_bad_ids_are_named() {
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let text = "Sentence embeddings map text to vectors.";
    let expected = server.embed(&[text]).remove(0);
    let with_specials = tokenize(&server, text);
    assert!(with_specials.len() > 2);
    let bare = &with_specials[1..with_specials.len() - 1];
    for body in [
        serde_json::json!({ "input": with_specials }),
        serde_json::json!({ "input": bare }),
        serde_json::json!({ "input": [bare, with_specials] }),
    ] {
        let got = server
            .post("/v1/embeddings", &body.to_string())
            .openai_vectors();
        for v in &got {
            assert!(max_abs_diff(v, &expected) <= SAME, "{body}");
        }
    }
    let r = server.post(
        "/v1/embeddings",
        r#"{"input": [[101, 2023], [101, 99999, 102]]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("input[1][1]") && msg.contains("99999"),
        "{msg}"
    );
    let r = server.post("/v1/embeddings", r#"{"input": [-1]}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    // /decode is the inverse of /tokenize (the vocabulary is uncased).
    let r = server.post(
        "/decode",
        &serde_json::json!({ "ids": with_specials }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0].as_str(), Some(text.to_lowercase().as_str()));
    let r = server.post("/decode", r#"{"ids": [5, 40000]}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("40000"), "{}", r.body);
}

#[test]
fn tei_options_truncate_dimensions_and_prompts() {
    let Some(server) = Server::start(&["--prompt", "query=query: ", "--prompt", "doc=passage: "])
    else {
        return;
    };
    let long =
        "The committee postponed its decision until more data could be gathered. ".repeat(30);
    let short = "A man is eating food.";
    // POST / is POST /embed.
    let a = server.post("/", &serde_json::json!({ "inputs": [short] }).to_string());
    let b = server.post(
        "/embed",
        &serde_json::json!({ "inputs": [short] }).to_string(),
    );
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    assert_eq!(floats(&a.json()[0]), floats(&b.json()[0]));
    // Over-long without truncation: 413 naming the input and its length.
    let ids = tokenize(&server, &long);
    assert!(ids.len() > 256);
    for body in [
        serde_json::json!({ "inputs": [short, long] }),
        serde_json::json!({ "inputs": [short, long], "truncate": false }),
    ] {
        let r = server.post("/embed", &body.to_string());
        assert_eq!(r.status, 413, "{}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            msg.contains("input 1") && msg.contains(&format!("{} tokens", ids.len())),
            "{msg}"
        );
    }
    let r = server.post(
        "/v1/embeddings",
        &serde_json::json!({ "input": [long] }).to_string(),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    // Truncation from the right keeps the start, from the left the end: each
    // equals the embedding of the kept token ids.
    let (cls, sep) = (ids[0], ids[ids.len() - 1]);
    let content = &ids[1..ids.len() - 1];
    let start: Vec<i64> = std::iter::once(cls)
        .chain(content[..254].iter().copied())
        .chain([sep])
        .collect();
    let end: Vec<i64> = std::iter::once(cls)
        .chain(content[content.len() - 254..].iter().copied())
        .chain([sep])
        .collect();
    let by_ids = server
        .post(
            "/v1/embeddings",
            &serde_json::json!({ "input": [start, end] }).to_string(),
        )
        .openai_vectors();
    for (dir, want) in [("Right", &by_ids[0]), ("Left", &by_ids[1])] {
        let body =
            serde_json::json!({ "inputs": long, "truncate": true, "truncation_direction": dir });
        let r = server.post("/embed", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(max_abs_diff(&floats(&r.json()[0]), want) <= SAME, "{dir}");
    }
    assert!(max_abs_diff(&by_ids[0], &by_ids[1]) > 1e-3);
    let r = server.post("/embed", r#"{"inputs": "a", "truncation_direction": "up"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    // Matryoshka: the first N components, renormalized.
    let full = server.embed(&[short]).remove(0);
    for n in [1usize, 64, 384] {
        let body = serde_json::json!({ "input": short, "dimensions": n });
        let v =
            server.post("/v1/embeddings", &body.to_string()).json()["data"][0]["embedding"].clone();
        let v = floats(&v);
        assert_eq!(v.len(), n);
        assert!((norm(&v) - 1.0).abs() < 1e-5);
        let scale = norm(&full[..n]) as f32;
        let want: Vec<f32> = full[..n].iter().map(|x| x / scale).collect();
        assert!(max_abs_diff(&v, &want) <= SAME, "dimensions {n}");
    }
    let body = serde_json::json!({ "inputs": short, "dimensions": 32 });
    let r = server.post("/embed", &body.to_string());
    assert_eq!(floats(&r.json()[0]).len(), 32, "{}", r.body);
    // Prompts: prepended to the text; an unknown name is refused.
    let prompted = server.embed(&["query: what is lanes?"]).remove(0);
    let body = serde_json::json!({ "inputs": "what is lanes?", "prompt_name": "query" });
    let r = server.post("/embed", &body.to_string());
    assert!(
        max_abs_diff(&floats(&r.json()[0]), &prompted) <= SAME,
        "{}",
        r.body
    );
    let body = serde_json::json!({ "input": "what is lanes?", "prompt_name": "query" });
    let v = server
        .post("/v1/embeddings", &body.to_string())
        .openai_vectors();
    assert!(max_abs_diff(&v[0], &prompted) <= SAME);
    let r = server.post("/embed", r#"{"inputs": "x", "prompt_name": "nope"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("nope") && r.body.contains("query"),
        "{}",
        r.body
    );
}

#[test]
fn auto_truncate_and_default_prompt() {
    let Some(server) = Server::start(&["--auto-truncate", "--default-prompt", "query: "]) else {
        return;
    };
    let long = "word ".repeat(600);
    let r = server.post("/embed", &serde_json::json!({ "inputs": long }).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    // Per request, `truncate: false` still refuses.
    let r = server.post(
        "/embed",
        &serde_json::json!({ "inputs": long, "truncate": false }).to_string(),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    let with = server.embed(&["hello"]).remove(0);
    let explicit = server
        .post(
            "/v1/embeddings",
            &serde_json::json!({ "input": [[101, 23032, 1024, 7592, 102]] }).to_string(),
        )
        .openai_vectors();
    let ids = tokenize(&server, "hello");
    assert_eq!(
        ids.len(),
        5,
        "the default prompt is in /tokenize too: {ids:?}"
    );
    assert!(max_abs_diff(&with, &explicit[0]) <= SAME);
}

#[test]
fn info_models_and_large_client_batches() {
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let info = server.get("/info");
    assert_eq!(info.status, 200, "{}", info.body);
    let v = info.json();
    assert_eq!(v["model_id"], "all-MiniLM-L6-v2");
    assert_eq!(v["max_input_length"], 256);
    assert_eq!(v["max_client_batch_size"], 2048);
    assert!(v["max_batch_tokens"].as_u64().unwrap() >= 256);
    assert!(v["version"].is_string());
    let models = server.get("/v1/models");
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], "all-MiniLM-L6-v2");
    // langchain-openai's default chunk: 1000 texts in one request.
    let texts: Vec<String> = (0..1000).map(|i| format!("text number {i}")).collect();
    let r = server.post(
        "/v1/embeddings",
        &serde_json::json!({ "input": texts }).to_string(),
    );
    let vectors = r.openai_vectors();
    assert_eq!(vectors.len(), 1000);
    let one = server.embed(&["text number 999"]).remove(0);
    assert!(max_abs_diff(&vectors[999], &one) <= SAME);
}

#[test]
fn api_key_guards_every_route_but_health() {
    let Some(server) = Server::start(&["--api-key", "sekrit"]) else {
        return;
    };
    for (path, body) in [
        ("/v1/embeddings", Some(r#"{"input": "a"}"#)),
        ("/embed", Some(r#"{"inputs": "a"}"#)),
        ("/info", None),
        ("/metrics", None),
        ("/v1/models", None),
    ] {
        let req = match body {
            Some(_) => server.agent.post(&format!("{}{path}", server.base)),
            None => server.agent.get(&format!("{}{path}", server.base)),
        };
        let r = server.send(req, body.map(str::as_bytes));
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(r.body.contains("API key"), "{}", r.body);
        let req = server
            .agent
            .post(&format!("{}{path}", server.base))
            .set("Authorization", "Bearer wrong");
        assert_eq!(server.send(req, Some(b"{}")).status, 401);
    }
    assert_eq!(server.get("/health").status, 200);
    let req = server
        .agent
        .post(&format!("{}/v1/embeddings", server.base))
        .set("Authorization", "Bearer sekrit");
    let r = server.send(req, Some(br#"{"input": "a"}"#));
    assert_eq!(r.openai_vectors().len(), 1);
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let Some(server) = Server::start(&["--log-format", "json"]) else {
        return;
    };
    server.embed(&["one", "two"]);
    let r = server.post("/embed", "{}");
    assert_eq!(r.status, 400);
    let start = Instant::now();
    let lines = loop {
        let stderr = server.stderr();
        let lines: Vec<Value> = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "lanes::access" && v["path"] != "/health")
            .collect();
        if lines.len() >= 2 || start.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok = &lines[0];
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/v1/embeddings");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["texts"], 2);
    assert!(ok["tokens"].as_u64().unwrap() >= 6);
    assert!(ok["latency_ms"].as_f64().is_some());
    assert!(ok["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(lines[1]["status"], 400);
}

#[test]
fn the_port_is_bound_before_the_model_loads() {
    let Some(model) = model_dir() else {
        return;
    };
    // A taken port: a clear error naming the address, at once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args([
            "serve",
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(
        !err.contains("loaded in"),
        "the model was loaded before the bind failed: {err}"
    );
    // A broken model folder: the address is printed (bound) before loading fails.
    let broken = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args([
            "serve",
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
        ])
        .arg(broken.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("listening on http://127.0.0.1:"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot load the model"));
    // A precision the device cannot compute in: a clear error naming both, exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args([
            "serve",
            "--device",
            "cpu",
            "--dtype",
            "float16",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("float16") && err.contains("cpu"), "{err}");
}

#[test]
fn slow_headers_slow_bodies_and_idle_floods_do_not_stop_the_server() {
    use std::io::Write;
    let Some(server) = Server::start(&[
        "--header-timeout-secs",
        "1",
        "--body-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "1",
        "--max-connections",
        "4",
    ]) else {
        return;
    };
    // Slowloris: half a header, then nothing: the server closes the connection.
    let mut s = raw(&server);
    s.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let got = read_until_closed(&mut s).expect("closed by the server, not by our read timeout");
    assert!(!got.contains("200 OK"), "{got}");
    // A body that never completes: 408.
    let mut s = raw(&server);
    s.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\"").unwrap();
    let got = read_until_closed(&mut s).expect("answered");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    // 20 idle connections against a cap of 4: those past the cap are answered
    // 503 and closed at once, the idle ones within the header timeout, and a
    // real client (retrying a 503 or a reset) still gets through.
    let idle: Vec<_> = (0..20).map(|_| raw(&server)).collect();
    let start = Instant::now();
    loop {
        let req = server.agent.post(&format!("{}/v1/embeddings", server.base));
        let result = req
            .set("Content-Type", "application/json")
            .send_string(r#"{"input": "still serving"}"#);
        match result {
            Ok(r) if r.status() == 200 => break,
            Err(ureq::Error::Status(503, _)) | Err(ureq::Error::Transport(_)) => {}
            Ok(r) => panic!("unexpected status {}", r.status()),
            Err(e) => panic!("{e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no answer through the flood"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.metric("lanes_http_connections") <= 4.0);
    assert!(server.metric("lanes_http_connections_refused_total") >= 1.0);
    assert!(server.metric("lanes_http_connections_timed_out_total") >= 1.0);
    drop(idle);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_small_request_is_answered_while_a_heavy_one_runs() {
    let Some(server) = Server::start(&[
        "--workers",
        "1",
        "--max-batch-tokens",
        "512",
        "--max-wait-ms",
        "0",
    ]) else {
        return;
    };
    let heavy: Vec<String> = (0..1500)
        .map(|i| format!("Heavy request text number {i}, long enough to cost a few tokens more than a tiny one."))
        .collect();
    let body = serde_json::json!({ "input": heavy }).to_string();
    std::thread::scope(|s| {
        let h = s.spawn(|| server.post("/v1/embeddings", &body));
        let start = Instant::now();
        while server.metric("lanes_batches_total") < 2.0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the heavy request never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let tiny = server.embed(&["tiny"]);
        assert_eq!(tiny.len(), 1);
        // Answered while most of the heavy request was still queued.
        let left = server.metric("lanes_queue_tokens");
        assert!(
            left > 10_000.0,
            "the heavy request had only {left} tokens left when the tiny one was answered"
        );
        assert!(!h.is_finished());
        assert_eq!(h.join().unwrap().openai_vectors().len(), 1500);
    });
}

#[test]
fn a_client_that_disconnects_cancels_its_queued_work() {
    use std::io::Write;
    let Some(server) = Server::start(&["--workers", "1", "--max-batch-tokens", "512"]) else {
        return;
    };
    let heavy: Vec<String> = (0..2000)
        .map(|i| format!("Text {i} of a request whose client goes away."))
        .collect();
    let body = serde_json::json!({ "input": heavy }).to_string();
    let mut s = raw(&server);
    write!(s, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let start = Instant::now();
    while server.metric("lanes_batches_total") < 2.0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the request never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(s);
    while server.metric("lanes_requests_cancelled_total") < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the disconnect was not noticed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        server.metric("lanes_queue_tokens"),
        0.0,
        "its queued chunks were dropped"
    );
    let texts = server.metric("lanes_texts_total");
    assert!(texts < 2000.0, "all {texts} texts were embedded anyway");
    assert_eq!(server.embed(&["next"]).len(), 1);
}

#[test]
fn a_request_past_its_deadline_is_answered_504_and_its_work_dropped() {
    let Some(server) = Server::start(&[
        "--workers",
        "1",
        "--no-batching",
        "--request-timeout-secs",
        "1",
        "--inject-faults",
    ]) else {
        return;
    };
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            server.post(
                "/v1/embeddings",
                r#"{"input": ["__lanes_fault:sleep_ms=3000__"]}"#,
            )
        });
        let start = Instant::now();
        while server.metric("lanes_workers_busy") < 1.0 {
            assert!(start.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(5));
        }
        let queued = server.post("/v1/embeddings", r#"{"input": ["queued behind it"]}"#);
        assert_eq!(queued.status, 504, "{}", queued.body);
        assert!(queued.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deadline"));
        let slow = slow.join().unwrap();
        assert_eq!(slow.status, 504, "{}", slow.body);
    });
    assert!(server.metric("lanes_requests_expired_total") >= 1.0);
    assert_eq!(server.metric("lanes_queue_tokens"), 0.0);
    assert!(
        server.metric("lanes_texts_total") < 2.0,
        "the expired request was embedded anyway"
    );
}

#[test]
fn sigterm_behind_a_stalled_client_still_exits_0_at_the_deadline() {
    use std::io::Write;
    let Some(mut server) =
        Server::start(&["--shutdown-timeout-secs", "2", "--body-timeout-secs", "300"])
    else {
        return;
    };
    // A request whose body never finishes: in flight until the deadline.
    let mut s = raw(&server);
    s.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    let start = Instant::now();
    while server.metric("lanes_http_requests_in_flight") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    server.signal_term();
    let status = server.wait_exit(Duration::from_secs(30));
    let stderr = server.stderr();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    assert!(stderr.contains("force-closing 1 connection"), "{stderr}");
    drop(s);
}
