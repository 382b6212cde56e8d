//! `lanes embed` end to end on the CPU: output in input order equal to the
//! sentence-transformers fixture, and bad input reported by line with no output file.

mod cli_support;

use cli_support::{lanes, model_dir, run, workspace_root};

fn fixture() -> Vec<serde_json::Value> {
    let path = workspace_root().join("crates/lanes-nn/tests/fixtures/minilm_reference.jsonl");
    std::fs::read_to_string(&path)
        .expect("fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line"))
        .collect()
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lanes-cli-embed-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn embeddings_come_back_in_input_order_and_match_the_fixture() {
    let Some(model) = model_dir() else { return };
    let fx = fixture();
    let dir = temp("order");
    let input = dir.join("in.jsonl");
    // Objects and bare strings mixed; batches of 3 sorted by length internally.
    let lines: Vec<String> = fx
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i % 2 == 0 {
                serde_json::json!({"text": f["text"]}).to_string()
            } else {
                f["text"].to_string()
            }
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").expect("write input");
    let output = dir.join("out.jsonl");
    let (code, _, stderr) = run(lanes(&[
        "embed",
        "--device",
        "cpu",
        "--threads",
        "3",
        "--batch",
        "3",
        "--format",
        "jsonl",
    ])
    .arg("--model")
    .arg(&model)
    .arg("--input")
    .arg(&input)
    .arg("--output")
    .arg(&output));
    assert_eq!(code, 0, "{stderr}");
    let out: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("output line"))
        .collect();
    assert_eq!(out.len(), fx.len());
    for (i, (o, f)) in out.iter().zip(&fx).enumerate() {
        assert_eq!(o["index"], i, "line {i} has index {}", o["index"]);
        assert_eq!(o["tokens"], f["n_tokens"], "text {i} token count");
        let got: Vec<f64> = o["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = f["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let dot: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        let cos = dot
            / (got.iter().map(|a| a * a).sum::<f64>().sqrt()
                * want.iter().map(|b| b * b).sum::<f64>().sqrt());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            cos >= 0.99999 && diff <= 1e-5,
            "text {i}: cosine {cos}, max |diff| {diff}"
        );
    }
}

#[test]
fn bad_input_names_the_line_and_writes_no_output_file() {
    let Some(model) = model_dir() else { return };
    let dir = temp("bad");
    let output = dir.join("out.jsonl");
    for (content, format, needle) in [
        (
            &b"\"ok\"\n{\"text\": \"fine\"}\n{oops\n"[..],
            "jsonl",
            "line 3: bad JSON",
        ),
        (&b"\"ok\"\n{\"txt\": \"x\"}\n"[..], "jsonl", "line 2"),
        (&b"fine\n\xff\xfe\n"[..], "text", "line 2: invalid UTF-8"),
    ] {
        let input = dir.join("in.txt");
        std::fs::write(&input, content).expect("write");
        let (code, _, stderr) = run(lanes(&["embed", "--device", "cpu", "--format", format])
            .arg("--model")
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output));
        assert_ne!(code, 0, "bad input must fail");
        assert!(
            stderr.contains(needle),
            "stderr names the line ({needle}): {stderr}"
        );
        assert!(!output.exists(), "no output file after an error");
        assert!(
            std::fs::read_dir(&dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")),
            "no partial file left behind"
        );
    }
    let (code, _, stderr) = run(&mut lanes(&[
        "embed",
        "--device",
        "cpu",
        "--model",
        "/nonexistent/model",
    ]));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("/nonexistent/model") && stderr.contains("does not exist"),
        "{stderr}"
    );
}
