//! `lanes embed`: texts in, JSONL embeddings out, in input order.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lanes_nn::{Embedding, Encoder};

use crate::common;

/// How input lines are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One text per line.
    Text,
    /// One JSON string or `{"text": ...}` object per line.
    Jsonl,
}

/// Arguments of `lanes embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Model folder (else $LANES_MODEL, else ./models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Threads, each on its own lane.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Input format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Input file (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout). Written whole or not at all.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Runs the command; returns the exit code.
pub fn run(args: EmbedArgs) -> Result<u8> {
    if args.threads == 0 || args.batch == 0 {
        bail!("--threads and --batch must be at least 1");
    }
    let raw = match &args.input {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            buf
        }
    };
    let source = args
        .input
        .as_ref()
        .map_or("stdin".to_string(), |p| p.display().to_string());
    let texts = parse_input(&raw, args.format, &source)?;
    let dir = common::model_dir(args.model.clone())?;
    let device = common::open_device(&args.device, args.threads)?;
    let encoder = Encoder::load(&dir, &device)
        .with_context(|| format!("cannot load the model from {}", dir.display()))?;

    let start = Instant::now();
    let embeddings = embed_all(&encoder, &texts, args.threads, args.batch)?;
    let secs = start.elapsed().as_secs_f64();

    let mut out = Vec::with_capacity(texts.len() * 4096);
    for (i, e) in embeddings.iter().enumerate() {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"index": i, "tokens": e.tokens, "embedding": e.vector}),
        )?;
        out.push(b'\n');
    }
    match &args.output {
        Some(path) => write_atomically(path, &out)?,
        None => std::io::stdout()
            .lock()
            .write_all(&out)
            .context("cannot write stdout")?,
    }
    eprintln!(
        "lanes embed: {} texts on {} with {} threads in {:.3} s ({:.1} texts/s)",
        texts.len(),
        device.name(),
        args.threads,
        secs,
        texts.len() as f64 / secs.max(1e-9)
    );
    Ok(0)
}

/// Splits the input into texts, naming the line of any bad one.
pub fn parse_input(raw: &[u8], format: Format, source: &str) -> Result<Vec<String>> {
    // A final newline ends the last text; it does not start another.
    let body = raw.strip_suffix(b"\n").unwrap_or(raw);
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let mut texts = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let lineno = n + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line)
            .with_context(|| format!("{source}, line {lineno}: invalid UTF-8"))?;
        let text = match format {
            Format::Text => line.to_string(),
            Format::Jsonl => {
                parse_json_line(line).with_context(|| format!("{source}, line {lineno}"))?
            }
        };
        texts.push(text);
    }
    Ok(texts)
}

fn parse_json_line(line: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(line).context("bad JSON")?;
    match v {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Object(mut o) => match o.remove("text") {
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(other) => bail!("field `text` must be a string, not {}", kind(&other)),
            None => bail!("object has no field `text`"),
        },
        other => bail!(
            "expected a JSON string or an object with `text`, not {}",
            kind(&other)
        ),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Embeds every text with `threads` threads, each on its own lane, pulling batches
/// of `batch` texts from a shared cursor; results come back in input order.
///
/// Batches are formed from texts of similar length (sorted by byte length), so a
/// long text does not make a whole batch of short ones pay for its padding.
pub fn embed_all(
    encoder: &Encoder,
    texts: &[String],
    threads: usize,
    batch: usize,
) -> Result<Vec<Embedding>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let chunks: Vec<&[usize]> = order.chunks(batch).collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Vec<Embedding>>>> = Mutex::new(vec![None; chunks.len()]);
    let progress = progress_bar(texts.len());
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(chunks.len().max(1)) {
            s.spawn(|| {
                let lane = match encoder.device().current_lane() {
                    Ok(lane) => lane,
                    Err(e) => {
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e.into());
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks.len() || first_error.lock().map(|e| e.is_some()).unwrap_or(true)
                    {
                        break;
                    }
                    let refs: Vec<&str> = chunks[i].iter().map(|&t| texts[t].as_str()).collect();
                    match encoder.embed_on(&lane, &refs) {
                        Ok(embs) => {
                            if let Some(p) = &progress {
                                p.inc(embs.len() as u64);
                            }
                            results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(embs);
                        }
                        Err(e) => {
                            let e = anyhow::Error::new(e).context(format!(
                                "batch of texts {:?}",
                                chunks[i].iter().map(|t| t + 1).collect::<Vec<_>>()
                            ));
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
                encoder.device().unbind_current();
            });
        }
    });
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    // Put every embedding back at its text's input position.
    let mut slots: Vec<Option<Embedding>> = vec![None; texts.len()];
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    for (chunk, r) in chunks.iter().zip(results) {
        for (&t, e) in chunk.iter().zip(r.context("a batch produced no result")?) {
            slots[t] = Some(e);
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.with_context(|| format!("text {} produced no embedding", i + 1)))
        .collect()
}

fn progress_bar(total: usize) -> Option<indicatif::ProgressBar> {
    if total < 256 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} texts {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Writes `data` to a temporary file beside `path`, then renames it over `path`:
/// a reader never sees a half-written file and a failure leaves none behind.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    // Devices and pipes (`/dev/stdout`, a FIFO) cannot be replaced: write through.
    if path.exists() && !path.is_file() {
        return std::fs::write(path, data)
            .with_context(|| format!("cannot write {}", path.display()));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.partial.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_keep_empty_texts_but_not_the_final_newline() {
        let t = parse_input(b"a\n\nb\n", Format::Text, "x").unwrap();
        assert_eq!(t, vec!["a", "", "b"]);
        assert_eq!(
            parse_input(b"", Format::Text, "x").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            parse_input(b"only", Format::Text, "x").unwrap(),
            vec!["only"]
        );
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = parse_input(b"ok\n\xff\xfe\n", Format::Text, "in.txt").unwrap_err();
        assert!(
            format!("{err:#}").contains("in.txt, line 2: invalid UTF-8"),
            "{err:#}"
        );
    }

    #[test]
    fn jsonl_accepts_strings_and_objects_and_names_bad_lines() {
        let t = parse_input(b"\"a\"\n{\"text\": \"b\"}\n", Format::Jsonl, "x").unwrap();
        assert_eq!(t, vec!["a", "b"]);
        let err = parse_input(b"\"a\"\n{\"text\": 3}\n", Format::Jsonl, "f.jsonl").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("f.jsonl, line 2") && msg.contains("`text` must be a string"),
            "{msg}"
        );
        let err = parse_input(b"{oops\n", Format::Jsonl, "f.jsonl").unwrap_err();
        assert!(format!("{err:#}").contains("line 1: bad JSON"), "{err:#}");
    }
}
