//! `lanes embed` end to end on the CPU: output in input order equal to the
//! sentence-transformers fixture; bad input reported by line with no output file;
//! blank lines skipped and counted in both formats; streaming in windows equal to
//! one batch, in bounded memory; an output written through an exclusive temporary
//! file that keeps the replaced file's mode and follows no planted symlink.

mod cli_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use cli_support::{cosine, fixture, floats, lanes, max_abs_diff, model_dir, run, run_peak_rss};

/// One output line: index, input line, tokens, embedding.
type Row = (u64, u64, u64, Vec<f32>);

fn read_output(path: &Path) -> Vec<Row> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("output line is JSON");
            (
                v["index"].as_u64().expect("index"),
                v["line"].as_u64().expect("line"),
                v["tokens"].as_u64().expect("tokens"),
                floats(&v["embedding"]),
            )
        })
        .collect()
}

/// `lanes embed --device cpu --model M ARGS --input IN --output OUT`.
fn embed(model: &Path, args: &[&str], input: &Path, output: &Path) -> (i32, String) {
    let (code, _, stderr) = run(lanes(&["embed", "--device", "cpu"])
        .arg("--model")
        .arg(model)
        .args(args)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output));
    (code, stderr)
}

fn no_partial_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial"))
}

/// Asserts two runs gave the same texts the same rows (tolerance as `stress`).
fn assert_same_rows(got: &[Row], want: &[Row]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0, g.1, g.2), (w.0, w.1, w.2), "index, line, tokens");
        let (c, d) = (cosine(&g.3, &w.3), max_abs_diff(&g.3, &w.3));
        assert!(
            c >= 0.99999 && d <= 1e-5,
            "text {}: cosine {c}, max |diff| {d}",
            g.0
        );
    }
}

#[test]
fn embeddings_come_back_in_input_order_and_match_the_fixture() {
    let Some(model) = model_dir() else { return };
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
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
    let output = dir.path().join("out.jsonl");
    let args = ["--threads", "3", "--batch", "3", "--format", "jsonl"];
    let (code, stderr) = embed(&model, &args, &input, &output);
    assert_eq!(code, 0, "{stderr}");
    let out = read_output(&output);
    assert_eq!(out.len(), fx.len());
    for (i, ((index, line, tokens, got), f)) in out.iter().zip(&fx).enumerate() {
        assert_eq!((*index, *line), (i as u64, i as u64 + 1));
        assert_eq!(
            Some(*tokens),
            f["n_tokens"].as_u64(),
            "text {i} token count"
        );
        let want = floats(&f["embedding"]);
        let (c, d) = (cosine(got, &want), max_abs_diff(got, &want));
        assert!(
            c >= 0.99999 && d <= 1e-5,
            "text {i}: cosine {c}, max |diff| {d}"
        );
    }
}

#[test]
fn bad_input_names_the_line_and_writes_no_output_file() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    for (content, format, needle) in [
        (
            &b"\"ok\"\n{\"text\": \"fine\"}\n{oops\n"[..],
            "jsonl",
            "line 3: bad JSON",
        ),
        (&b"\"ok\"\n\n{\"txt\": \"x\"}\n"[..], "jsonl", "line 3"),
        (&b"fine\n\xff\xfe\n"[..], "text", "line 2: invalid UTF-8"),
    ] {
        let input = dir.path().join("in.txt");
        std::fs::write(&input, content).expect("write");
        // A window of one text: earlier texts are already written to the
        // temporary file when the bad line is read.
        let (code, stderr) = embed(
            &model,
            &["--format", format, "--window", "1"],
            &input,
            &output,
        );
        assert_ne!(code, 0, "bad input must fail");
        assert!(
            stderr.contains(needle),
            "stderr names the line ({needle}): {stderr}"
        );
        assert!(!output.exists(), "no output file after an error");
        assert!(no_partial_files(dir.path()), "no partial file left behind");
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

#[test]
fn half_precision_on_the_cpu_is_a_clear_error_and_auto_is_float32() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "one\ntwo\n").unwrap();
    for half in ["float16", "bfloat16"] {
        let output = dir.path().join(format!("{half}.jsonl"));
        let (code, stderr) = embed(&model, &["--dtype", half], &input, &output);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("precision {half} on device cpu"))
                && stderr.contains("float32 only"),
            "{stderr}"
        );
        assert!(!output.exists());
    }
    let (auto, f32) = (dir.path().join("auto.jsonl"), dir.path().join("f32.jsonl"));
    let (code, stderr) = embed(&model, &[], &input, &auto);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("in float32"), "{stderr}");
    let (code, stderr) = embed(&model, &["--dtype", "float32"], &input, &f32);
    assert_eq!(code, 0, "{stderr}");
    assert_same_rows(&read_output(&auto), &read_output(&f32));
}

#[test]
fn blank_lines_are_skipped_and_counted_in_both_formats() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (format, content) in [
        ("text", "first text\n\n   \t\nsecond text\r\n\n"),
        (
            "jsonl",
            "\"first text\"\n\n   \t\n{\"text\": \"second text\"}\r\n\n",
        ),
    ] {
        let input = dir.path().join(format!("in.{format}"));
        let output = dir.path().join(format!("out.{format}.jsonl"));
        std::fs::write(&input, content).unwrap();
        let (code, stderr) = embed(&model, &["--format", format], &input, &output);
        assert_eq!(code, 0, "{format}: {stderr}");
        assert!(
            stderr.contains("3 blank lines skipped"),
            "{format}: {stderr}"
        );
        let rows = read_output(&output);
        let at: Vec<(u64, u64)> = rows.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(at, [(0, 1), (1, 4)], "{format}: index and input line");
        outputs.push(rows);
    }
    assert_same_rows(&outputs[0], &outputs[1]);
    let (code, help, _) = run(&mut lanes(&["embed", "--help"]));
    assert_eq!(code, 0);
    assert!(
        help.contains("Blank lines (empty, or only spaces, tabs and carriage returns) are skipped in both formats"),
        "--help states the rule: {help}"
    );
}

/// Texts of 1..=24 words, different lengths in every window.
fn generated_texts(n: usize) -> Vec<String> {
    let words = [
        "lane", "stream", "thread", "device", "memory", "naïve", "über", "kernel", "batch",
        "token", "the", "river", "rose", "by", "morning", "42", "東京",
    ];
    (0..n)
        .map(|i| {
            let len = 1 + (i * 7919) % 24;
            (0..len)
                .map(|j| words[(i * 31 + j * 17) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn a_streamed_run_equals_one_batch() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let texts = generated_texts(120);
    std::fs::write(&input, texts.join("\n\n") + "\n").unwrap();
    let streamed = dir.path().join("streamed.jsonl");
    let whole = dir.path().join("whole.jsonl");
    let args = ["--threads", "2", "--batch", "3", "--window", "7"];
    let (code, stderr) = embed(&model, &args, &input, &streamed);
    assert_eq!(code, 0, "{stderr}");
    let args = ["--threads", "1", "--batch", "1000", "--window", "1000"];
    let (code, stderr) = embed(&model, &args, &input, &whole);
    assert_eq!(code, 0, "{stderr}");
    let (streamed, whole) = (read_output(&streamed), read_output(&whole));
    assert_eq!(streamed.len(), texts.len());
    for (i, r) in streamed.iter().enumerate() {
        assert_eq!((r.0, r.1), (i as u64, 2 * i as u64 + 1), "in input order");
    }
    assert_same_rows(&streamed, &whole);
}

/// `lines` JSONL lines, each a text of two words and a `pad` field of `pad`
/// bytes that the reader must read and parse but that costs nothing to embed
/// (embedding 48 MiB of real text on a shared CPU would take minutes).
fn padded_input(path: &Path, lines: usize, pad: usize) -> u64 {
    let filler = "x".repeat(pad);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..lines {
        let t = format!("lane {i}");
        serde_json::to_writer(&mut f, &serde_json::json!({"text": t, "pad": filler})).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

#[cfg(target_os = "linux")]
#[test]
fn memory_stays_bounded_on_a_large_input() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 48 MiB in 192 lines of 256 KiB; the baseline has the same lines, 8 of them.
    let (small, big) = (dir.path().join("small.jsonl"), dir.path().join("big.jsonl"));
    let small_size = padded_input(&small, 8, 256 << 10);
    let big_size = padded_input(&big, 192, 256 << 10);
    let peak = |input: &PathBuf| {
        let output = dir.path().join("out.jsonl");
        let (code, err, peak) = run_peak_rss(
            lanes(&[
                "embed",
                "--device",
                "cpu",
                "--threads",
                "2",
                "--format",
                "jsonl",
            ])
            .args(["--window", "64", "--model"])
            // Fewer malloc arenas: less run-to-run noise in the peak.
            .env("MALLOC_ARENA_MAX", "2")
            .arg(&model)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&output),
        );
        assert_eq!(code, 0, "{err}");
        assert!(peak > 0, "VmHWM was read");
        peak
    };
    let (base, large) = (peak(&small), peak(&big));
    let growth = large.saturating_sub(base);
    eprintln!(
        "peak RSS: {} MiB for {} KiB of input, {} MiB for {} MiB (+{} KiB)",
        base >> 20,
        small_size >> 10,
        large >> 20,
        big_size >> 20,
        growth >> 10
    );
    // Reading it whole would add at least the input's size; streamed, the peak
    // moves by the baseline's noise (2.7 MiB in one run, 22 MiB in a loaded CI run).
    assert!(
        growth < big_size * 2 / 3,
        "peak RSS grew by {growth} B for {} B more input: the input is not streamed",
        big_size - small_size
    );
}

#[cfg(unix)]
#[test]
fn replacing_an_output_keeps_its_mode_and_a_new_one_gets_the_usual_mode() {
    use std::os::unix::fs::PermissionsExt;
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "one\ntwo\n").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    let output = dir.path().join("out.jsonl");
    std::fs::write(&output, "old contents\n").unwrap();
    std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, stderr) = embed(&model, &[], &input, &output);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read_output(&output).len(), 2, "the file was replaced");
    assert_eq!(mode(&output), 0o640, "the replaced file's mode is kept");

    // A new output gets what any newly created file gets (0666 less the umask).
    let fresh = dir.path().join("fresh.jsonl");
    let (code, stderr) = embed(&model, &[], &input, &fresh);
    assert_eq!(code, 0, "{stderr}");
    let probe = dir.path().join("probe");
    std::fs::File::create(&probe).unwrap();
    assert_eq!(mode(&fresh), mode(&probe));
    assert!(no_partial_files(dir.path()));
}

#[cfg(unix)]
#[test]
fn a_symlink_planted_at_the_old_temporary_name_is_not_followed() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let mut child = lanes(&["embed", "--device", "cpu", "--model"])
        .arg(&model)
        .arg("--output")
        .arg(&output)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lanes runs");
    // The name earlier versions used: `.NAME.partial.PID`, known before any input.
    let planted = dir
        .path()
        .join(format!(".out.jsonl.partial.{}", child.id()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"one\ntwo\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(read_output(&output).len(), 2);
    let link = std::fs::symlink_metadata(&planted).expect("the planted link is untouched");
    assert!(link.file_type().is_symlink());
}
