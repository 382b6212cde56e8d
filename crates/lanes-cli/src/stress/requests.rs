//! The stress suite's requests: mixed batch sizes and lengths, fully determined by
//! the seed (the same seed gives the same requests on every machine).
//!
//! Half of the requests are texts (tokenized by the model's tokenizer inside the
//! request, so the tokenizer runs concurrently too), half are synthetic token
//! sequences of exact lengths (random word-piece ids between `[CLS]` and `[SEP]`,
//! some with a second segment of token type 1). The first three requests pin the
//! edges: one sequence of a single token, a full batch with a row of the maximum
//! length, one text of about the maximum length.

use anyhow::{Context, Result};
use lanes_nn::{Tokenizer, Tokens};

use super::Rng;

/// `[CLS]`, `[SEP]` and the first ordinary word-piece id of the BERT uncased vocabulary.
const CLS: u32 = 101;
const SEP: u32 = 102;
const FIRST_WORD_ID: u32 = 1000;

/// Sentences in the spirit of the fixture texts: plain prose, numbers, code,
/// punctuation and non-ASCII text.
const SENTENCES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "GPU streams let many threads share one device without a global lock.",
    "The caching allocator recycles device memory across lanes safely.",
    "Rust's ownership model makes use-after-free a compile-time error.",
    "Sentence embeddings map text to vectors whose cosine reflects meaning.",
    "It rained all night; by morning the river had risen two metres.",
    "Café au lait, naïve façade, Zürich — déjà vu.",
    "東京は日本の首都です。",
    "fn main() { println!(\"hello, world\"); }",
    "SELECT id, name FROM users WHERE age > 21 ORDER BY name;",
    "3.14159 is approximately pi, and e is about 2.71828.",
    "Don't panic: the error names the problem and where it happened.",
    "",
    "     ",
    "Emoji 🚀 and symbols ±×÷ are tokenized as unknown or split pieces.",
    "The meeting is at 10:30 on 2026-11-01 in room B-12.",
];

/// Words for generated texts.
const WORDS: &[&str] = &[
    "lane",
    "stream",
    "thread",
    "device",
    "memory",
    "event",
    "kernel",
    "batch",
    "token",
    "model",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "on",
    "with",
    "for",
    "quickly",
    "slowly",
    "blue",
    "green",
    "river",
    "mountain",
    "city",
    "night",
    "morning",
    "computer",
    "language",
    "vector",
    "embedding",
    "attention",
    "layer",
    "normalization",
    "throughput",
    "latency",
    "allocator",
    "segment",
    "block",
    "pool",
    "lease",
    "callback",
    "shutdown",
    "verification",
    "reference",
    "cosine",
    "similarity",
    "2026",
    "42",
    "x86_64",
    "cuda:0",
    "naïve",
    "über",
    "résumé",
];

/// What a request feeds the encoder.
#[derive(Clone, Debug)]
pub enum Input {
    /// Texts, tokenized within the request (`Encoder::embed_on`).
    Texts(Vec<String>),
    /// A packed batch of token ids (`Encoder::forward`).
    Tokens(Tokens),
}

/// One request of the suite.
#[derive(Clone, Debug)]
pub struct Request {
    /// Its index in the suite.
    pub index: usize,
    /// What it feeds the encoder.
    pub input: Input,
    /// Real token count of each row (for texts: after tokenization).
    pub lengths: Vec<usize>,
}

impl Request {
    /// Rows (sequences) in the batch.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Tokens in the padded batch (rows × longest row).
    pub fn padded_tokens(&self) -> usize {
        self.rows() * self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// `suite request 5: tokens, batch 3, 4..=17 tokens`.
    pub fn describe(&self) -> String {
        let kind = match self.input {
            Input::Texts(_) => "texts",
            Input::Tokens(_) => "tokens",
        };
        let lo = self.lengths.iter().min().copied().unwrap_or(0);
        let hi = self.lengths.iter().max().copied().unwrap_or(0);
        format!(
            "suite request {}: {kind}, batch {}, {lo}..={hi} tokens",
            self.index,
            self.rows()
        )
    }
}

/// Shapes of the suite.
#[derive(Clone, Copy, Debug)]
pub struct Shapes {
    /// Distinct requests.
    pub distinct: usize,
    /// Largest batch (1..=32 by the issue).
    pub max_batch: usize,
    /// Longest sequence in tokens, `[CLS]` and `[SEP]` included (1..=256).
    pub max_len: usize,
}

impl Shapes {
    /// Shapes within the bounds (batch 1..=32, 1..=256 tokens).
    pub fn checked(distinct: usize, max_batch: usize, max_len: usize) -> Result<Shapes> {
        anyhow::ensure!(
            (1..=32).contains(&max_batch),
            "--max-batch must be 1..=32, not {max_batch}"
        );
        anyhow::ensure!(
            (1..=256).contains(&max_len),
            "--max-len must be 1..=256, not {max_len}"
        );
        anyhow::ensure!(distinct >= 1, "--distinct must be at least 1");
        Ok(Shapes {
            distinct,
            max_batch,
            max_len,
        })
    }
}

/// The suite's requests for `seed`.
pub fn generate(
    tokenizer: &Tokenizer,
    vocab: usize,
    shapes: Shapes,
    seed: u64,
) -> Result<Vec<Request>> {
    let Shapes {
        distinct,
        max_batch,
        max_len,
    } = shapes;
    let max_len = max_len.min(tokenizer.max_len());
    anyhow::ensure!(
        distinct >= 1 && max_batch >= 1 && max_len >= 1,
        "the suite needs at least one request of one token"
    );
    anyhow::ensure!(
        vocab > FIRST_WORD_ID as usize,
        "a vocabulary of {vocab} ids is too small for synthetic requests"
    );
    let mut rng = Rng::new(seed ^ 0x5354_5245_5353);
    let mut out = Vec::with_capacity(distinct);
    for index in 0..distinct {
        let req = match index {
            0 => tokens(index, &[1], &mut rng, vocab),
            1 => {
                let mut lens: Vec<usize> =
                    (0..max_batch).map(|_| rng.log_uniform(max_len)).collect();
                lens[0] = max_len;
                tokens(index, &lens, &mut rng, vocab)
            }
            2 => texts(index, &[max_len], &mut rng, tokenizer)?,
            _ => {
                let batch = rng.log_uniform(max_batch);
                let lens: Vec<usize> = (0..batch).map(|_| rng.log_uniform(max_len)).collect();
                if rng.below(2) == 0 {
                    tokens(index, &lens, &mut rng, vocab)
                } else {
                    texts(index, &lens, &mut rng, tokenizer)?
                }
            }
        };
        out.push(req);
    }
    Ok(out)
}

fn tokens(index: usize, lens: &[usize], rng: &mut Rng, vocab: usize) -> Request {
    let seqs: Vec<(Vec<u32>, Vec<u32>)> = lens
        .iter()
        .map(|&len| {
            let mut ids = Vec::with_capacity(len);
            ids.push(CLS);
            while ids.len() + 1 < len {
                ids.push(FIRST_WORD_ID + rng.below(vocab as u64 - FIRST_WORD_ID as u64) as u32);
            }
            if len >= 2 {
                ids.push(SEP);
            }
            // A third of the rows carry a second segment (token type 1).
            let split = if len >= 4 && rng.below(3) == 0 {
                len / 2
            } else {
                len
            };
            let types = (0..len).map(|i| u32::from(i >= split)).collect();
            (ids, types)
        })
        .collect();
    let enc =
        Tokens::from_sequences(&seqs).expect("ids and type ids have equal lengths by construction");
    Request {
        index,
        lengths: lens.to_vec(),
        input: Input::Tokens(enc),
    }
}

fn texts(index: usize, lens: &[usize], rng: &mut Rng, tokenizer: &Tokenizer) -> Result<Request> {
    let mut texts = Vec::with_capacity(lens.len());
    let mut lengths = Vec::with_capacity(lens.len());
    for &target in lens {
        let mut text = String::new();
        if rng.below(2) == 0 {
            // Whole sentences, then words, until about `target` tokens.
            let s = SENTENCES[rng.below(SENTENCES.len() as u64) as usize];
            text.push_str(s);
        }
        let mut n = count(tokenizer, &text)?;
        while n < target {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            if rng.below(8) == 0 {
                text.push(if rng.below(2) == 0 { ',' } else { '.' });
            }
            let before = n;
            n = count(tokenizer, &text)?;
            if n == before {
                break; // truncated at the tokenizer's limit
            }
        }
        // Trim whole words while over the target (a sentence may be long).
        while n > target.max(2) {
            match text.rfind(' ') {
                Some(cut) => text.truncate(cut),
                None => break,
            }
            n = count(tokenizer, &text)?;
        }
        lengths.push(n);
        texts.push(text);
    }
    Ok(Request {
        index,
        input: Input::Texts(texts),
        lengths,
    })
}

fn count(tokenizer: &Tokenizer, text: &str) -> Result<usize> {
    let (ids, _) = tokenizer
        .encode(text)
        .with_context(|| format!("cannot tokenize {text:?}"))?;
    Ok(ids.len())
}
