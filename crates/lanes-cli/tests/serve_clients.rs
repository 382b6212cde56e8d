//! `lanes serve` driven by the real Python clients people use: the `openai`
//! SDK, `huggingface_hub.InferenceClient` and `langchain_openai.OpenAIEmbeddings`
//! (tests/clients/*.py, pinned in tests/clients/requirements.txt). Every vector a
//! client gets back is compared with `lanes embed` on the same texts.
//!
//! The Python: `$LANES_CLIENTS_PYTHON`, else `<workspace>/target/py-clients/bin/python`
//! (what `scripts/python-env.sh` creates). Without it the tests print `skipped`,
//! unless `LANES_REQUIRE_CLIENTS=1` (CI, `.ci/run`): then they fail.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

mod cli_support;
#[path = "cli_support/server.rs"]
mod server;

use cli_support::workspace_root;
use server::{
    assert_close, cosine, decode_words, fixture_texts, floats, lanes_embed, norm, prefix_unit,
    raw_means, sentences, tokenizer, Server,
};

/// Same text, same model: only float rounding may differ.
const SAME: f64 = 0.99999;

/// The venv python with the clients, or `None` (skip) when absent and not required.
fn python() -> Option<PathBuf> {
    let required = std::env::var("LANES_REQUIRE_CLIENTS").as_deref() == Ok("1");
    let candidate = std::env::var_os("LANES_CLIENTS_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let p = workspace_root().join("target/py-clients/bin/python");
            p.exists().then_some(p)
        });
    let why = match &candidate {
        None => "no LANES_CLIENTS_PYTHON and no target/py-clients (run scripts/python-env.sh)"
            .to_string(),
        Some(py) => match Command::new(py)
            .args([
                "-c",
                "import openai, huggingface_hub, langchain_openai, numpy",
            ])
            .output()
        {
            Ok(out) if out.status.success() => return candidate,
            Ok(out) => format!(
                "{} cannot import the clients: {}",
                py.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("{} does not run: {e}", py.display()),
        },
    };
    assert!(!required, "LANES_REQUIRE_CLIENTS=1 but {why}");
    eprintln!("skipped: {why}");
    None
}

/// Runs `tests/clients/SCRIPT` with `spec`; returns the JSON it prints.
fn run_client(python: &PathBuf, script: &str, spec: &Value) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let script_path = workspace_root()
        .join("crates/lanes-cli/tests/clients")
        .join(script);
    let out = Command::new(python)
        .arg(&script_path)
        .arg(&spec_path)
        // Straight to 127.0.0.1 whatever proxy the machine has; no telemetry.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("LANGSMITH_TRACING", "false")
        .env("LANGCHAIN_TRACING_V2", "false")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of vectors: {v}"))
        .iter()
        .map(floats)
        .collect()
}

#[test]
fn openai_sdk_embeds_texts_and_token_arrays_like_lanes_embed() {
    let Some(py) = python() else { return };
    // --auto-truncate: fixture text 23 has 302 tokens, and the openai SDK has
    // no truncate option (sentence-transformers, the fixture's source, cuts at 256).
    let Some(server) = Server::start(&["--api-key", "client-key", "--auto-truncate"]) else {
        return;
    };
    let texts = fixture_texts();
    let tok = tokenizer();
    // Token arrays of this model's vocabulary: even ones with [CLS]/[SEP], odd
    // ones bare (the server adds them, as for text).
    let mut tokens = 0;
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (ids, _) = tok.encode(t).expect("tokenize");
            tokens += ids.len().min(256);
            if i % 2 == 0 {
                ids
            } else {
                ids[1..ids.len() - 1].to_vec()
            }
        })
        .collect();
    let dims = 128;
    let out = run_client(
        &py,
        "openai_client.py",
        &json!({"base": server.base, "api_key": "client-key", "model": "all-MiniLM-L6-v2",
                "texts": texts, "ids": ids, "dimensions": dims}),
    );
    let reference = lanes_embed(&texts);

    assert_eq!(out["model"], "all-MiniLM-L6-v2");
    assert_eq!(out["prompt_tokens"].as_u64(), Some(tokens as u64), "usage");
    assert_eq!(out["total_tokens"].as_u64(), Some(tokens as u64), "usage");
    assert_eq!(out["ids_prompt_tokens"].as_u64(), Some(tokens as u64));
    let mut worst = 1f64;
    for key in ["float", "base64", "default", "ids"] {
        worst = worst.min(assert_close(
            &format!("openai {key}"),
            &vectors(&out[key]),
            &reference,
            SAME,
        ));
    }
    assert_close(
        "openai one token array",
        &[floats(&out["ids_one"])],
        &reference[..1],
        SAME,
    );
    let cut = vectors(&out["dimensions"]);
    let want: Vec<Vec<f32>> = reference.iter().map(|v| prefix_unit(v, dims)).collect();
    assert_close("openai dimensions", &cut, &want, SAME);
    for (i, v) in cut.iter().enumerate() {
        assert!(
            (norm(v) - 1.0).abs() < 1e-3,
            "dimensions: vector {i} not unit length"
        );
    }
    assert_eq!(out["empty_status"].as_u64(), Some(400), "empty input");
    eprintln!("openai SDK: min cosine vs lanes embed {worst}");
}

#[test]
fn huggingface_inference_client_posts_to_root_like_lanes_embed() {
    let Some(py) = python() else { return };
    let Some(server) = Server::start(&["--prompt", "query=query: "]) else {
        return;
    };
    let texts: Vec<String> = fixture_texts().into_iter().take(8).collect();
    // Over 256 tokens, of words that are one WordPiece each so the left-truncated
    // text can be rebuilt exactly from its ids.
    let long = sentences(40).join(" ");
    let tok = tokenizer();
    let (all, _) = tok.encode(&long).expect("tokenize");
    assert!(all.len() > 300, "the long text has {} tokens", all.len());
    let out = run_client(
        &py,
        "hf_client.py",
        &json!({"base": server.base, "texts": texts, "long": long, "prompt_name": "query"}),
    );

    let tail = tok
        .encode(&decode_words(&all[all.len() - 255..all.len() - 1]))
        .expect("tokenize")
        .0;
    assert_eq!(
        tail[1..tail.len() - 1],
        all[all.len() - 255..all.len() - 1],
        "the rebuilt tail re-tokenizes to the same ids"
    );
    let mut refs: Vec<String> = texts.clone();
    refs.extend(texts.iter().map(|t| format!("query: {t}")));
    refs.push(long.clone());
    refs.push(decode_words(&all[all.len() - 255..all.len() - 1]));
    let reference = lanes_embed(&refs);
    let n = texts.len();

    // Each call's answer, or the server's refusal as the client saw it.
    let got = |name: &str| -> &Value {
        if out[name].is_null() {
            panic!(
                "hf feature_extraction ({name}) failed: {}",
                out[format!("{name}_error")]
            );
        }
        &out[name]
    };
    assert_close("hf batch", &vectors(got("batch")), &reference[..n], SAME);
    assert_close("hf single", &vectors(got("single")), &reference[..3], SAME);
    assert_close(
        "hf prompt_name",
        &vectors(got("prompt")),
        &reference[n..2 * n],
        SAME,
    );
    assert_close(
        "hf truncate right",
        &[floats(got("long_right"))],
        &reference[2 * n..2 * n + 1],
        SAME,
    );
    assert_close(
        "hf truncate left",
        &[floats(got("long_left"))],
        &reference[2 * n + 1..],
        SAME,
    );
    assert_eq!(
        out["long_refused_error"]["status"].as_u64(),
        Some(413),
        "truncate=False on {} tokens: {}",
        all.len(),
        out["long_refused_error"]
    );
    // normalize=False: the raw mean-pooled vectors, through the real client.
    let raw: Vec<Vec<f32>> = out["raw"]
        .as_array()
        .unwrap_or_else(|| panic!("normalize=False failed: {}", out["raw_error"]))
        .iter()
        .map(floats)
        .collect();
    assert_close("hf normalize=False", &raw, &raw_means(&texts), SAME);
}

#[test]
fn langchain_openai_embeds_1200_documents_with_default_chunking() {
    let Some(py) = python() else { return };
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let texts = sentences(1200);
    let query = fixture_texts().remove(0);
    let out = run_client(
        &py,
        "langchain_client.py",
        &json!({"base": server.base, "model": "all-MiniLM-L6-v2", "texts": texts, "query": query}),
    );
    // Two requests: 1000 texts, then 200 (langchain's default chunk_size).
    assert_eq!(out["chunk_size"].as_u64(), Some(1000));
    let mut all = texts.clone();
    all.push(query);
    let reference = lanes_embed(&all);
    let worst = assert_close(
        "langchain embed_documents",
        &vectors(&out["documents"]),
        &reference[..texts.len()],
        SAME,
    );
    assert_close(
        "langchain embed_query",
        &[floats(&out["query"])],
        &reference[texts.len()..],
        SAME,
    );
    eprintln!("langchain: 1200 documents, min cosine vs lanes embed {worst}");
}

// The TEI and OpenAI surface itself, over raw HTTP: each route and option
// compared with `lanes embed` or the model's tokenizer.

#[test]
fn root_embed_and_openai_routes_agree_with_lanes_embed() {
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let texts: Vec<String> = fixture_texts().into_iter().take(6).collect();
    let reference = lanes_embed(&texts);
    let root = server.post("/", &json!({ "inputs": texts }));
    assert_close("POST /", &root.tei_vectors(), &reference, SAME);
    let embed = server.post("/embed", &json!({ "inputs": texts }));
    assert_close("POST /embed", &embed.tei_vectors(), &reference, SAME);
    let openai = server.post("/v1/embeddings", &json!({ "input": texts }));
    assert_close(
        "POST /v1/embeddings",
        &openai.openai_vectors(),
        &reference,
        SAME,
    );
    let one = server.post("/", &json!({"inputs": texts[0]}));
    assert_close(
        "POST / one string",
        &one.tei_vectors(),
        &reference[..1],
        SAME,
    );
}

#[test]
fn info_models_tokenize_and_decode_describe_this_model() {
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let info = server.get("/info");
    assert_eq!(info.status, 200, "{}", info.brief());
    let info = info.json();
    assert!(
        info["model_id"]
            .as_str()
            .is_some_and(|m| m.contains("all-MiniLM-L6-v2")),
        "{info}"
    );
    assert_eq!(info["max_input_length"], 256, "{info}");
    // The CPU computes in float32 (`--dtype auto`); /info says so.
    assert_eq!(info["model_dtype"], "float32", "{info}");
    assert_eq!(info["max_client_batch_size"], 2048, "{info}");

    let models = server.get("/v1/models");
    assert_eq!(models.status, 200, "{}", models.brief());
    let models = models.json();
    assert_eq!(models["object"], "list", "{models}");
    assert!(
        models["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == "all-MiniLM-L6-v2")),
        "{models}"
    );

    let tok = tokenizer();
    let texts = [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
    ];
    let r = server.post("/tokenize", &json!({ "inputs": texts }));
    assert_eq!(r.status, 200, "{}", r.brief());
    let lists = r.json();
    let lists = lists.as_array().expect("one token list per input");
    assert_eq!(lists.len(), texts.len(), "{}", r.brief());
    for (text, list) in texts.iter().zip(lists) {
        // TEI answers token objects ({id, text, special, start, stop}).
        let ids: Vec<u32> = list
            .as_array()
            .expect("a token list")
            .iter()
            .map(|t| t["id"].as_u64().or_else(|| t.as_u64()).expect("id") as u32)
            .collect();
        assert_eq!(ids, tok.encode(text).unwrap().0, "/tokenize {text:?}");
        let d = server.post("/decode", &json!({ "ids": ids }));
        assert_eq!(d.status, 200, "{}", d.brief());
        let decoded = d.json();
        let decoded = decoded
            .as_str()
            .or_else(|| decoded[0].as_str())
            .unwrap_or_else(|| panic!("/decode answered {}", d.brief()));
        // Uncased WordPiece: the lower-cased text, punctuation split off.
        let words = |s: &str| -> String {
            s.to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric())
                .collect()
        };
        assert_eq!(
            words(decoded),
            words(text),
            "/decode of {text:?}: {decoded:?}"
        );
    }
}

#[test]
fn dimensions_cut_and_renormalize() {
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let texts: Vec<String> = fixture_texts().into_iter().take(5).collect();
    let reference = lanes_embed(&texts);
    for dims in [32, 64, 383, 384] {
        let cut = server
            .post(
                "/v1/embeddings",
                &json!({"input": texts, "dimensions": dims}),
            )
            .openai_vectors();
        let want: Vec<Vec<f32>> = reference.iter().map(|v| prefix_unit(v, dims)).collect();
        assert_close(&format!("dimensions {dims}"), &cut, &want, SAME);
        for v in &cut {
            assert!((norm(v) - 1.0).abs() < 1e-3, "dimensions {dims}: not unit");
        }
    }
}

#[test]
fn normalize_false_returns_the_raw_mean() {
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let texts: Vec<String> = fixture_texts().into_iter().take(5).collect();
    let reference = lanes_embed(&texts);
    let unit = server
        .post("/embed", &json!({"inputs": texts, "normalize": true}))
        .tei_vectors();
    assert_close("normalize:true", &unit, &reference, SAME);
    // The raw mean-pooled vector: the encoder's `forward_mean` in this process,
    // not of unit length, and in the normalized vector's direction.
    let raw = server
        .post("/embed", &json!({"inputs": texts, "normalize": false}))
        .tei_vectors();
    let want = raw_means(&texts);
    assert_close("normalize:false", &raw, &want, SAME);
    for ((r, w), u) in raw.iter().zip(&want).zip(&unit) {
        let rel = (norm(r) - norm(w)).abs() / norm(w);
        assert!(rel < 1e-4, "raw norm {} vs reference {}", norm(r), norm(w));
        assert!(
            (norm(r) - 1.0).abs() > 1e-2,
            "raw vector has unit length: {}",
            norm(r)
        );
        assert!(cosine(r, u) > SAME, "raw and normalized point the same way");
    }
    // `dimensions` with `normalize: false`: the first N raw components.
    let cut = server
        .post(
            "/embed",
            &json!({"inputs": texts, "normalize": false, "dimensions": 64}),
        )
        .tei_vectors();
    for (c, w) in cut.iter().zip(&want) {
        assert_eq!(c.len(), 64);
        let diff = c
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-4 * norm(w) as f32, "cut raw differs by {diff}");
    }
}

#[test]
fn prompt_name_and_default_prompt_prefix_the_text() {
    let Some(server) = Server::start(&[
        "--prompt",
        "query=query: ",
        "--prompt",
        "doc=passage: ",
        "--default-prompt",
        "search_document: ",
    ]) else {
        return;
    };
    let texts: Vec<String> = fixture_texts().into_iter().take(4).collect();
    let mut refs = Vec::new();
    for prefix in ["query: ", "passage: ", "search_document: "] {
        refs.extend(texts.iter().map(|t| format!("{prefix}{t}")));
    }
    let reference = lanes_embed(&refs);
    let n = texts.len();
    let q = server.post("/embed", &json!({"inputs": texts, "prompt_name": "query"}));
    assert_close("prompt_name query", &q.tei_vectors(), &reference[..n], SAME);
    let d = server.post("/embed", &json!({"inputs": texts, "prompt_name": "doc"}));
    assert_close(
        "prompt_name doc",
        &d.tei_vectors(),
        &reference[n..2 * n],
        SAME,
    );
    let plain = server.post("/embed", &json!({ "inputs": texts }));
    assert_close(
        "--default-prompt",
        &plain.tei_vectors(),
        &reference[2 * n..],
        SAME,
    );
    let openai = server.post("/v1/embeddings", &json!({ "input": texts }));
    assert_close(
        "--default-prompt on /v1/embeddings",
        &openai.openai_vectors(),
        &reference[2 * n..],
        SAME,
    );
    let bad = server.post("/embed", &json!({"inputs": texts, "prompt_name": "nope"}));
    assert!(matches!(bad.status, 400 | 422), "{}", bad.brief());
    assert!(bad.body.contains("nope"), "{}", bad.brief());
}

#[test]
fn truncation_direction_left_keeps_the_end() {
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let long = sentences(40).join(" ");
    let all = tokenizer().encode(&long).unwrap().0;
    assert!(all.len() > 300);
    let tail = decode_words(&all[all.len() - 255..all.len() - 1]);
    let reference = lanes_embed(&[long.clone(), tail]);
    for (dir, want) in [("left", &reference[1]), ("right", &reference[0])] {
        let r = server.post(
            "/embed",
            &json!({"inputs": long, "truncate": true, "truncation_direction": dir}),
        );
        assert_close(
            &format!("truncation_direction {dir}"),
            &r.tei_vectors(),
            std::slice::from_ref(want),
            SAME,
        );
    }
}

#[test]
fn json_access_log_records_each_request() {
    let Some(server) = Server::start(&["--log-format", "json"]) else {
        return;
    };
    let r = server.post("/v1/embeddings", &json!({"input": "logged"}));
    assert_eq!(r.status, 200, "{}", r.brief());
    let bad = server.post("/v1/embeddings", &json!({"input": []}));
    assert_eq!(bad.status, 400, "{}", bad.brief());
    // The log line may follow the response by a moment.
    let start = std::time::Instant::now();
    loop {
        let log = server.stderr();
        let entries: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.to_string().contains("/v1/embeddings"))
            .collect();
        let has = |status: &str| entries.iter().any(|e| e.to_string().contains(status));
        if has("200") && has("400") {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no JSON access-log lines for POST /v1/embeddings with 200 and 400 on stderr:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn bad_inputs_are_400_naming_the_problem() {
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/embeddings",
            json!({"input": [[101, 999999, 102]]}),
            "999999",
        ),
        ("/v1/embeddings", json!({"input": [[101, -1, 102]]}), "-1"),
        ("/v1/embeddings", json!({"input": []}), "input"),
        (
            "/v1/embeddings",
            json!({"input": "x", "dimensions": 0}),
            "dimensions",
        ),
        (
            "/v1/embeddings",
            json!({"input": "x", "dimensions": 385}),
            "dimensions",
        ),
        (
            "/embed",
            json!({"inputs": "x", "truncation_direction": "middle"}),
            "truncation_direction",
        ),
        (
            "/embed",
            json!({"inputs": "x", "prompt_name": "nope"}),
            "nope",
        ),
    ];
    for (path, body, needle) in cases {
        let r = server.post(path, &body);
        assert!(
            matches!(r.status, 400 | 422),
            "{path} {body}: {}",
            r.brief()
        );
        assert!(r.body.contains(needle), "{path} {body}: {}", r.brief());
    }
    server.assert_serves("after bad inputs");
}

#[test]
fn max_client_batch_size_defaults_to_2048() {
    let Some(server) = Server::start(&["--max-queue-tokens", "1000000"]) else {
        return;
    };
    let at = vec!["a"; 2048];
    let r = server.post("/v1/embeddings", &json!({ "input": at }));
    assert_eq!(r.status, 200, "{}", r.brief());
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(2048));
    let over = vec!["a"; 2049];
    let r = server.post("/v1/embeddings", &json!({ "input": over }));
    assert_eq!(r.status, 413, "{}", r.brief());
    assert!(
        r.body.contains("2048"),
        "the 413 names the limit: {}",
        r.brief()
    );
    drop(server);

    let Some(small) = Server::start(&["--max-client-batch-size", "4"]) else {
        return;
    };
    let r = small.post("/embed", &json!({"inputs": ["a", "b", "c", "d", "e"]}));
    assert_eq!(r.status, 413, "{}", r.brief());
    let r = small.post("/embed", &json!({"inputs": ["a", "b", "c", "d"]}));
    assert_eq!(r.status, 200, "{}", r.brief());
}
