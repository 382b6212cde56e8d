//! A running `lanes serve` for the `serve_*` tests, spoken to over raw HTTP/1.1
//! on `std::net::TcpStream` (so a test controls every byte, header and socket),
//! plus the references the tests compare against: `lanes embed` on the same
//! texts and the model's own tokenizer.
//!
//! Include with `mod cli_support;` and `#[path = "cli_support/server.rs"] mod server;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli_support::model_dir;

/// How long a server may take to print its address and to load the model.
const START_LIMIT: Duration = Duration::from_secs(180);

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked transfer decoded).
    pub body: String,
}

impl Resp {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Status and the body's first 300 characters, for assertion messages.
    pub fn brief(&self) -> String {
        let cut: String = self.body.chars().take(300).collect();
        let more = if cut.len() < self.body.len() {
            " ..."
        } else {
            ""
        };
        format!("{} {cut}{more}", self.status)
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }

    /// `data[i].embedding` of a 200 OpenAI response, checking `index`.
    pub fn openai_vectors(&self) -> Vec<Vec<f32>> {
        assert_eq!(self.status, 200, "{}", self.body);
        let v = self.json();
        assert_eq!(v["object"], "list", "{}", self.body);
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .enumerate()
            .map(|(i, d)| {
                assert_eq!(d["index"].as_u64(), Some(i as u64), "data[{i}].index");
                floats(&d["embedding"])
            })
            .collect()
    }

    /// The `[[f32]]` of a 200 TEI `/embed` response.
    pub fn tei_vectors(&self) -> Vec<Vec<f32>> {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()
            .as_array()
            .unwrap_or_else(|| panic!("not an array: {}", self.body))
            .iter()
            .map(floats)
            .collect()
    }
}

/// `[f32]` of a JSON array of numbers.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array of numbers: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    dot / (norm(a) * norm(b))
}

/// Euclidean length in f64.
pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// The first `n` components of `v`, renormalized to unit length.
pub fn prefix_unit(v: &[f32], n: usize) -> Vec<f32> {
    let cut = &v[..n];
    let len = norm(cut);
    cut.iter().map(|&x| (f64::from(x) / len) as f32).collect()
}

/// Asserts every `got[i]` is `want[i]` up to cosine `min_cos`; returns the
/// smallest cosine seen.
pub fn assert_close(what: &str, got: &[Vec<f32>], want: &[Vec<f32>], min_cos: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: number of vectors");
    let mut worst = 1f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: vector {i} length");
        let c = cosine(g, w);
        assert!(
            c >= min_cos,
            "{what}: vector {i} has cosine {c} < {min_cos}"
        );
        worst = worst.min(c);
    }
    worst
}

/// `lanes embed --device cpu` on `texts` (one JSONL string per line).
pub fn lanes_embed(texts: &[String]) -> Vec<Vec<f32>> {
    let model = model_dir().expect("model");
    let input: String = texts
        .iter()
        .map(|t| format!("{}\n", serde_json::to_string(t).unwrap()))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, input).expect("write input");
    let out = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args(["embed", "--device", "cpu", "--format", "jsonl", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run lanes embed");
    assert!(
        out.status.success(),
        "lanes embed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vectors: Vec<Vec<f32>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| floats(&serde_json::from_str::<Value>(l).unwrap()["embedding"]))
        .collect();
    assert_eq!(vectors.len(), texts.len(), "lanes embed output lines");
    vectors
}

/// The raw (unnormalized) mean-pooled vectors of `texts`, from the encoder on the
/// CPU in this process: the reference for `normalize: false`.
pub fn raw_means(texts: &[String]) -> Vec<Vec<f32>> {
    let model = model_dir().expect("model");
    let device = lanes::Device::cpu(lanes::DeviceConfig::default()).expect("cpu device");
    let encoder = lanes_nn::Encoder::load(&model, &device).expect("load the model");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = encoder.tokenizer().encode_batch(&refs).expect("tokenize");
    let lane = device.lease().expect("lane");
    let flat = encoder.forward_mean(&lane, &tokens).expect("forward_mean");
    flat.chunks_exact(encoder.config().hidden_size)
        .map(<[f32]>::to_vec)
        .collect()
}

/// The model's tokenizer without truncation (ids include `[CLS]`/`[SEP]`).
pub fn tokenizer() -> lanes_nn::Tokenizer {
    let model = model_dir().expect("model");
    lanes_nn::Tokenizer::from_file_with_max_len(model.join("tokenizer.json"), 1 << 20)
        .expect("load tokenizer.json")
}

/// The text of WordPiece `ids` (no `##` pieces: whole words, space-joined).
pub fn decode_words(ids: &[u32]) -> String {
    let vocab: Vec<String> = {
        let model = model_dir().expect("model");
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(model.join("tokenizer.json")).expect("tokenizer.json"),
        )
        .expect("tokenizer.json is JSON");
        let map = v["model"]["vocab"].as_object().expect("model.vocab");
        let mut words = vec![String::new(); map.len()];
        for (w, id) in map {
            words[id.as_u64().unwrap() as usize] = w.clone();
        }
        words
    };
    ids.iter()
        .map(|&i| {
            let w = &vocab[i as usize];
            assert!(!w.starts_with("##"), "id {i} ({w}) is a word piece");
            w.as_str()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` distinct, deterministic English sentences of 10–30 words.
pub fn sentences(n: usize) -> Vec<String> {
    const WORDS: [&str; 24] = [
        "river", "engine", "quiet", "market", "server", "yellow", "garden", "winter", "network",
        "bread", "signal", "mountain", "library", "battery", "orange", "teacher", "cloud",
        "harbor", "pencil", "thunder", "memory", "bicycle", "window", "planet",
    ];
    (0..n)
        .map(|i| {
            let len = 10 + (i * 7) % 21;
            let mut s = format!("Sentence {i}:");
            for k in 0..len {
                s.push(' ');
                s.push_str(WORDS[(i * 31 + k * k * 5 + k) % WORDS.len()]);
            }
            s.push('.');
            s
        })
        .collect()
}

/// The fixture texts (25 lines of minilm_reference.jsonl).
pub fn fixture_texts() -> Vec<String> {
    crate::cli_support::fixture()
        .iter()
        .map(|v| v["text"].as_str().expect("text").to_string())
        .collect()
}

/// Writes `req` on a fresh connection and reads the response to EOF.
pub fn exchange(addr: SocketAddr, req: &[u8], timeout: Duration) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(req)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            ),
        )
    })
}

/// Bytes of one `Connection: close` request.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Parses one complete HTTP/1.1 response (Content-Length, chunked or to EOF).
pub fn parse_response(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let nl = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = String::from_utf8_lossy(&rest[at..nl]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = nl + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
        out
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A running `lanes serve` on 127.0.0.1 (CPU backend); killed on drop.
pub struct Server {
    child: Child,
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://ADDR`.
    pub base: String,
    stderr: Arc<Mutex<String>>,
    key: Option<String>,
}

impl Server {
    /// Starts `lanes serve --device cpu --port 0 EXTRA` and waits until
    /// `/health` answers 200. `None` when the model is missing and
    /// `LANES_SKIP_MODEL_TESTS=1`.
    pub fn start(extra: &[&str]) -> Option<Server> {
        let mut server = Server::spawn(extra)?;
        server.wait_ready(START_LIMIT);
        Some(server)
    }

    /// Starts the server and returns once it printed `listening on ...`
    /// (the model may still be loading).
    pub fn spawn(extra: &[&str]) -> Option<Server> {
        let model = model_dir()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_lanes"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--device",
                "cpu",
            ])
            .arg("--model")
            .arg(&model)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lanes serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            panic!("no pipes")
        };
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = tx.send(line);
                    break;
                }
            }
            for _ in lines {}
        });
        let Ok(line) = rx.recv_timeout(START_LIMIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no `listening on` line from lanes serve; stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        let base = line["listening on ".len()..].trim().to_string();
        let addr: SocketAddr = base
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected address line: {line}"));
        let key = extra
            .iter()
            .position(|a| *a == "--api-key")
            .and_then(|i| extra.get(i + 1))
            .map(|k| k.to_string());
        Some(Server {
            child,
            addr,
            base,
            stderr,
            key,
        })
    }

    /// Polls `/health` until it answers 200; panics (with stderr) if the
    /// server exits first.
    pub fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "lanes serve exited ({status}) before it was ready; stderr:\n{}",
                    self.stderr()
                );
            }
            if let Ok(r) = self.try_request("GET", "/health", &[], b"", Duration::from_secs(5)) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                start.elapsed() < limit,
                "lanes serve not healthy within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// One request on a fresh connection (with the server's API key, if any).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Resp> {
        let auth = self.key.as_ref().map(|k| format!("Bearer {k}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            {
                all.push(("Authorization", a));
            }
        }
        exchange(self.addr, &request_bytes(method, path, &all, body), timeout)
    }

    /// Like [`Server::try_request`], panicking (with the server's stderr) on
    /// a transport error; 300 s limit.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, path, headers, body, Duration::from_secs(300))
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {path} failed: {e}; server stderr:\n{}",
                    self.stderr()
                )
            })
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.request("POST", path, &[], body.to_string().as_bytes())
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    /// Asserts a small embedding request is answered 200 (`what`: when).
    pub fn assert_serves(&self, what: &str) {
        let r = self.post(
            "/v1/embeddings",
            &serde_json::json!({"input": ["still serving"]}),
        );
        assert_eq!(r.status, 200, "{what}: {}", r.brief());
    }

    /// The value of one Prometheus sample (the first line `series VALUE`);
    /// `None` when `/metrics` has no such line.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics").body;
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse().expect("a number"))
        })
    }

    /// CPU seconds (user + system) the server process has used.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    /// Open sockets of the server process (from /proc/PID/fd).
    pub fn open_sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// Sends `kill -SIG` to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// The exit status once the server exits, or `None` after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
