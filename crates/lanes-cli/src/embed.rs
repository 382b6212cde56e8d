//! `lanes embed`: texts in, JSONL embeddings out, in input order, in constant
//! memory.
//!
//! The input is read a window at a time (at most `WINDOW_TEXTS` texts or about
//! `WINDOW_BYTES` bytes); the window's texts are embedded in batches of similar
//! length on every thread, written in input order, and the next window is read.
//! An `--output` file is written through a temporary file beside it and renamed
//! over it at the end ([`crate::atomic_file`]): it appears whole or not at all,
//! and a replaced file keeps its mode. To stdout, each window is written when it
//! is done.
//!
//! Blank lines (empty, or only spaces, tabs and carriage returns) are skipped in
//! both formats, and their count is reported on stderr. Each output line carries
//! the text's `index` (0-based among the texts embedded) and its input `line`
//! (1-based).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lanes_nn::{Embedding, Encoder};
use serde::Serialize;

use crate::atomic_file::AtomicFile;
use crate::common;

/// Most texts read, embedded and written at a time (`--window` overrides it).
pub const WINDOW_TEXTS: usize = 4096;
/// A window also ends once its lines hold this many bytes.
pub const WINDOW_BYTES: usize = 4 << 20;

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
#[command(
    after_help = "Blank lines (empty, or only spaces, tabs and carriage returns) are \
skipped in both formats; their count is reported on stderr. Each output line is \
{\"index\": i, \"line\": n, \"tokens\": t, \"embedding\": [...]}: i counts the texts \
embedded from 0, n is the text's input line from 1."
)]
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
    /// Input format. Blank lines are skipped in both (counted on stderr).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Input file (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout). Written whole or not at all; a replaced
    /// file keeps its mode.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Texts read and embedded at a time (memory stays bounded by it).
    #[arg(long, default_value_t = WINDOW_TEXTS, hide = true)]
    pub window: usize,
}

/// One output line.
#[derive(Serialize)]
struct OutputLine<'a> {
    index: usize,
    line: usize,
    tokens: usize,
    embedding: &'a [f32],
}

/// Runs the command; returns the exit code.
pub fn run(args: EmbedArgs) -> Result<u8> {
    if args.threads == 0 || args.batch == 0 || args.window == 0 {
        bail!("--threads, --batch and --window must be at least 1");
    }
    let source = args
        .input
        .as_ref()
        .map_or("stdin".to_string(), |p| p.display().to_string());
    let (input, size): (Box<dyn BufRead>, Option<u64>) = match &args.input {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            let size = f.metadata().ok().map(|m| m.len());
            (Box::new(BufReader::with_capacity(1 << 16, f)), size)
        }
        None => (Box::new(std::io::stdin().lock()), None),
    };
    let mut reader = TextReader::new(input, args.format, source);
    let dir = common::model_dir(args.model.clone())?;
    let device = common::open_device(&args.device, args.threads)?;
    let encoder = Encoder::load(&dir, &device)
        .with_context(|| format!("cannot load the model from {}", dir.display()))?;
    let mut sink = Sink::open(args.output.as_ref())?;
    let progress = progress_bar(size);

    let start = Instant::now();
    let (mut texts, mut lines) = (Vec::new(), Vec::new());
    let mut index = 0;
    loop {
        texts.clear();
        lines.clear();
        let bytes = reader.fill(&mut texts, &mut lines, args.window, WINDOW_BYTES)?;
        if texts.is_empty() {
            break;
        }
        let embeddings =
            embed_all(&encoder, &texts, args.threads, args.batch).with_context(|| {
                format!(
                    "{}, lines {}..={}",
                    reader.source(),
                    lines[0],
                    lines[lines.len() - 1]
                )
            })?;
        for (e, &line) in embeddings.iter().zip(&lines) {
            let out = OutputLine {
                index,
                line,
                tokens: e.tokens,
                embedding: &e.vector,
            };
            serde_json::to_writer(&mut sink, &out).context("cannot write the output")?;
            sink.write_all(b"\n").context("cannot write the output")?;
            index += 1;
        }
        if let Some(p) = &progress {
            p.inc(bytes as u64);
        }
    }
    sink.finish()?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    let skipped = match reader.skipped() {
        0 => String::new(),
        n => format!("; {n} blank line{} skipped", if n == 1 { "" } else { "s" }),
    };
    eprintln!(
        "lanes embed: {index} texts on {} with {} threads in {secs:.3} s ({:.1} texts/s){skipped}",
        device.name(),
        args.threads,
        index as f64 / secs.max(1e-9)
    );
    Ok(0)
}

/// Reads texts line by line, skipping blank lines and naming the line of any bad one.
pub struct TextReader<R> {
    input: R,
    format: Format,
    source: String,
    line: usize,
    skipped: usize,
    consumed: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> TextReader<R> {
    /// Reads `input` (named `source` in errors) in `format`.
    pub fn new(input: R, format: Format, source: impl Into<String>) -> Self {
        TextReader {
            input,
            format,
            source: source.into(),
            line: 0,
            skipped: 0,
            consumed: 0,
            buf: Vec::new(),
        }
    }

    /// The input's name in messages (`stdin` or the file).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Blank lines skipped so far.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The next text and its line number (from 1), or `None` at the end.
    pub fn next_text(&mut self) -> Result<Option<(String, usize)>> {
        loop {
            self.buf.clear();
            let n = self
                .input
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("cannot read {}", self.source))?;
            if n == 0 {
                return Ok(None);
            }
            self.consumed += n;
            self.line += 1;
            let lineno = self.line;
            let mut raw = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if is_blank(raw) {
                self.skipped += 1;
                continue;
            }
            let source = &self.source;
            let line = std::str::from_utf8(raw)
                .with_context(|| format!("{source}, line {lineno}: invalid UTF-8"))?;
            let text = match self.format {
                Format::Text => line.to_string(),
                Format::Jsonl => {
                    parse_json_line(line).with_context(|| format!("{source}, line {lineno}"))?
                }
            };
            return Ok(Some((text, lineno)));
        }
    }

    /// Appends texts (and their line numbers) until `max_texts` are there, the
    /// texts appended hold `max_bytes` bytes, or the input ends. Returns the input
    /// bytes consumed (blank lines included).
    pub fn fill(
        &mut self,
        texts: &mut Vec<String>,
        lines: &mut Vec<usize>,
        max_texts: usize,
        max_bytes: usize,
    ) -> Result<usize> {
        let (mut held, before) = (0, self.consumed);
        while texts.len() < max_texts && held < max_bytes {
            match self.next_text()? {
                Some((text, line)) => {
                    held += text.len();
                    texts.push(text);
                    lines.push(line);
                }
                None => break,
            }
        }
        Ok(self.consumed - before)
    }
}

/// Empty, or only spaces, tabs, carriage returns and form feeds.
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Where the JSON lines go: stdout, an [`AtomicFile`], or straight into a path
/// that cannot be replaced (a device or a FIFO such as `/dev/stdout`).
enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    Atomic(AtomicFile),
    Through(BufWriter<File>, PathBuf),
}

impl Sink {
    fn open(path: Option<&PathBuf>) -> Result<Sink> {
        Ok(match path {
            None => Sink::Stdout(BufWriter::with_capacity(1 << 16, std::io::stdout())),
            Some(p) if p.exists() && !p.is_file() => Sink::Through(
                BufWriter::new(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .with_context(|| format!("cannot write {}", p.display()))?,
                ),
                p.clone(),
            ),
            Some(p) => Sink::Atomic(AtomicFile::create(p)?),
        })
    }

    /// Flushes; an output file is renamed into place only now.
    fn finish(self) -> Result<()> {
        match self {
            Sink::Stdout(mut w) => w.flush().context("cannot write stdout"),
            Sink::Atomic(f) => f.commit(),
            Sink::Through(mut w, p) => w
                .flush()
                .with_context(|| format!("cannot write {}", p.display())),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(w) => w.write(buf),
            Sink::Atomic(f) => f.write(buf),
            Sink::Through(w, _) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(w) => w.flush(),
            Sink::Atomic(f) => f.flush(),
            Sink::Through(w, _) => w.flush(),
        }
    }
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

/// A bar over the input's bytes, for a file of at least 1 MiB on a terminal.
fn progress_bar(size: Option<u64>) -> Option<indicatif::ProgressBar> {
    let size = size.filter(|&s| s >= 1 << 20)?;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(
        raw: &[u8],
        format: Format,
        source: &str,
    ) -> Result<(Vec<String>, Vec<usize>, usize)> {
        let mut r = TextReader::new(raw, format, source);
        let (mut texts, mut lines) = (Vec::new(), Vec::new());
        r.fill(&mut texts, &mut lines, usize::MAX, usize::MAX)?;
        Ok((texts, lines, r.skipped()))
    }

    #[test]
    fn blank_lines_are_skipped_and_counted_in_both_formats() {
        let (t, l, skipped) = read_all(b"a\n\n  \t\nb\r\n\r\n", Format::Text, "x").unwrap();
        assert_eq!(
            (t, l, skipped),
            (vec!["a".to_string(), "b".into()], vec![1, 4], 3)
        );
        let (t, l, skipped) =
            read_all(b"\"a\"\n\n   \n{\"text\": \"b\"}\n\n", Format::Jsonl, "x").unwrap();
        assert_eq!(
            (t, l, skipped),
            (vec!["a".to_string(), "b".into()], vec![1, 4], 3)
        );
        // An explicitly empty JSON text is a text, not a blank line.
        let (t, _, skipped) = read_all(b"\"\"\n", Format::Jsonl, "x").unwrap();
        assert_eq!((t, skipped), (vec![String::new()], 0));
        assert_eq!(
            read_all(b"", Format::Text, "x").unwrap().0,
            Vec::<String>::new()
        );
        assert_eq!(
            read_all(b"only", Format::Text, "x").unwrap().0,
            vec!["only"]
        );
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = read_all(b"ok\n\n\xff\xfe\n", Format::Text, "in.txt").unwrap_err();
        assert!(
            format!("{err:#}").contains("in.txt, line 3: invalid UTF-8"),
            "{err:#}"
        );
    }

    #[test]
    fn jsonl_accepts_strings_and_objects_and_names_bad_lines() {
        let (t, _, _) = read_all(b"\"a\"\n{\"text\": \"b\"}\n", Format::Jsonl, "x").unwrap();
        assert_eq!(t, vec!["a", "b"]);
        let err = read_all(b"\"a\"\n{\"text\": 3}\n", Format::Jsonl, "f.jsonl").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("f.jsonl, line 2") && msg.contains("`text` must be a string"),
            "{msg}"
        );
        let err = read_all(b"{oops\n", Format::Jsonl, "f.jsonl").unwrap_err();
        assert!(format!("{err:#}").contains("line 1: bad JSON"), "{err:#}");
    }

    #[test]
    fn windows_stop_at_the_text_or_byte_bound_and_keep_line_numbers() {
        let input: Vec<u8> = (1..=10)
            .flat_map(|i| format!("text {i}\n\n").into_bytes())
            .collect();
        let mut r = TextReader::new(&input[..], Format::Text, "x");
        let (mut texts, mut lines) = (Vec::new(), Vec::new());
        r.fill(&mut texts, &mut lines, 4, usize::MAX).unwrap();
        assert_eq!(lines, vec![1, 3, 5, 7]);
        texts.clear();
        lines.clear();
        // "text 5" is 6 bytes: the window ends once 12 are held; 16 bytes were read.
        assert_eq!(r.fill(&mut texts, &mut lines, usize::MAX, 12).unwrap(), 16);
        assert_eq!(texts, vec!["text 5", "text 6"]);
        assert_eq!(lines, vec![9, 11]);
        texts.clear();
        lines.clear();
        r.fill(&mut texts, &mut lines, usize::MAX, usize::MAX)
            .unwrap();
        assert_eq!(texts.len(), 4);
        assert_eq!(r.skipped(), 10);
    }
}
