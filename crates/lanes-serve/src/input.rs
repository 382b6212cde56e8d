//! What a request carries ([`Input`], [`Options`]) and how it becomes the
//! token sequences the queue holds ([`prepare`]): tokenization, id checks,
//! `[CLS]`/`[SEP]` around bare id lists, the length limit (refuse or truncate
//! from either side), and the test-only fault markers. Also the per-vector
//! post-processing ([`finish`]: Matryoshka `dimensions`, normalization).

use std::time::{Duration, Instant};

use crate::codec::{check_ids, Codec};
use crate::error::{Result, ServeError};

/// The inputs of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Texts, tokenized by the engine.
    Texts(Vec<String>),
    /// Token-id lists of this model's vocabulary. A list that does not start
    /// with `[CLS]` and end with `[SEP]` gets them added, as text would.
    Ids(Vec<Vec<i64>>),
}

impl Input {
    /// Number of inputs.
    pub fn len(&self) -> usize {
        match self {
            Input::Texts(t) => t.len(),
            Input::Ids(i) => i.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which end of an over-long input truncation cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Keep the start (drop the end), as sentence-transformers does.
    #[default]
    Right,
    /// Keep the end.
    Left,
}

/// How one request is handled.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Truncate inputs over the model's maximum (else refuse them).
    pub truncate: bool,
    /// Which end truncation cuts.
    pub direction: Direction,
    /// L2-normalize the vectors (`false`: the raw mean-pooled vector).
    pub normalize: bool,
    /// Keep only the first N components (Matryoshka), normalized after the
    /// cut when `normalize`.
    pub dimensions: Option<usize>,
    /// Answer or give up by then; queued work is dropped at the deadline.
    pub deadline: Option<Instant>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            truncate: true,
            direction: Direction::Right,
            normalize: true,
            dimensions: None,
            deadline: None,
        }
    }
}

impl Options {
    /// `timeout` from now as the deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Options {
        self.deadline = Instant::now().checked_add(timeout);
        self
    }
}

/// A test-only fault a forward pass acts out (`--inject-faults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The pass fails.
    Error,
    /// The pass panics.
    Panic,
    /// The pass sleeps this long first.
    Sleep(Duration),
}

/// Parses `__lanes_fault:error__`, `__lanes_fault:panic__` and
/// `__lanes_fault:sleep_ms=N__` (N at most 10 000).
pub fn parse_fault(text: &str) -> Option<Fault> {
    let inner = text.strip_prefix("__lanes_fault:")?.strip_suffix("__")?;
    match inner {
        "error" => Some(Fault::Error),
        "panic" => Some(Fault::Panic),
        _ => {
            let ms: u64 = inner.strip_prefix("sleep_ms=")?.parse().ok()?;
            Some(Fault::Sleep(Duration::from_millis(ms.min(10_000))))
        }
    }
}

/// One input as the model will see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq {
    /// Token ids, special tokens included, within the model's maximum.
    pub ids: Vec<u32>,
    /// Token-type ids.
    pub types: Vec<u32>,
    /// Test-only fault.
    pub fault: Option<Fault>,
}

/// Limits [`prepare`] applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest input in tokens (special tokens included).
    pub max_len: usize,
    /// Model width, for `dimensions`.
    pub hidden: usize,
    /// Parse fault markers in texts.
    pub inject_faults: bool,
}

/// Tokenizes and checks every input of a request.
pub fn prepare(
    codec: &Codec,
    input: &Input,
    options: &Options,
    limits: &Limits,
) -> Result<Vec<Seq>> {
    if input.is_empty() {
        return Err(ServeError::Empty);
    }
    if let Some(d) = options.dimensions {
        if d == 0 || d > limits.hidden {
            return Err(ServeError::Dimensions {
                asked: d,
                hidden: limits.hidden,
            });
        }
    }
    let mut seqs = Vec::with_capacity(input.len());
    match input {
        Input::Texts(texts) => {
            for (index, text) in texts.iter().enumerate() {
                let enc = codec.encode(index, text)?;
                let fault = if limits.inject_faults {
                    parse_fault(text)
                } else {
                    None
                };
                let (ids, types) = fit(
                    index, enc.ids, enc.types, enc.front, enc.back, options, limits,
                )?;
                seqs.push(Seq { ids, types, fault });
            }
        }
        Input::Ids(lists) => {
            let (cls, sep) = codec.specials();
            for (index, list) in lists.iter().enumerate() {
                let mut ids = check_ids(index, list, codec.vocab_size())?;
                let (mut front, mut back) = (0, 0);
                if let (Some(cls), Some(sep)) = (cls, sep) {
                    if ids.len() >= 2 && ids[0] == cls && ids[ids.len() - 1] == sep {
                        (front, back) = (1, 1);
                    } else {
                        ids.insert(0, cls);
                        ids.push(sep);
                        (front, back) = (1, 1);
                    }
                }
                let types = vec![0; ids.len()];
                let (ids, types) = fit(index, ids, types, front, back, options, limits)?;
                seqs.push(Seq {
                    ids,
                    types,
                    fault: None,
                });
            }
        }
    }
    Ok(seqs)
}

/// Keeps `ids` within `limits.max_len`: refused, or truncated between its
/// `front` and `back` special tokens from the side `options` asks.
fn fit(
    index: usize,
    mut ids: Vec<u32>,
    mut types: Vec<u32>,
    front: usize,
    back: usize,
    options: &Options,
    limits: &Limits,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let max = limits.max_len;
    if ids.len() <= max {
        return Ok((ids, types));
    }
    if !options.truncate {
        return Err(ServeError::TooLong {
            index,
            tokens: ids.len(),
            max,
        });
    }
    let keep = max.saturating_sub(front + back);
    let content = ids.len() - front - back;
    let cut = content - keep;
    let range = match options.direction {
        Direction::Right => front + keep..front + content,
        Direction::Left => front..front + cut,
    };
    ids.drain(range.clone());
    types.drain(range);
    ids.truncate(max);
    types.truncate(max);
    Ok((ids, types))
}

/// Applies `dimensions` (first N components) and then, when `options`
/// ask for it, L2 normalization to one raw mean-pooled vector (the same
/// arithmetic as [`lanes_nn::Encoder::forward`]'s, so a request with the
/// defaults gets exactly the encoder's normalized embedding).
pub fn finish(mut vector: Vec<f32>, options: &Options) -> Vec<f32> {
    if let Some(d) = options.dimensions {
        vector.truncate(d);
    }
    if options.normalize && !vector.is_empty() {
        let dim = vector.len();
        lanes_nn::cpu::l2_normalize(&mut vector, 1, dim);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_len: usize) -> Limits {
        Limits {
            max_len,
            hidden: 4,
            inject_faults: false,
        }
    }

    fn opts(truncate: bool, direction: Direction) -> Options {
        Options {
            truncate,
            direction,
            ..Options::default()
        }
    }

    #[test]
    fn fit_truncates_between_the_special_tokens_from_either_side() {
        let ids = vec![101, 1, 2, 3, 4, 5, 102];
        let types = vec![0; 7];
        let right = fit(
            0,
            ids.clone(),
            types.clone(),
            1,
            1,
            &opts(true, Direction::Right),
            &limits(5),
        )
        .unwrap();
        assert_eq!(right.0, vec![101, 1, 2, 3, 102]);
        assert_eq!(right.1.len(), 5);
        let left = fit(
            0,
            ids.clone(),
            types.clone(),
            1,
            1,
            &opts(true, Direction::Left),
            &limits(5),
        )
        .unwrap();
        assert_eq!(left.0, vec![101, 3, 4, 5, 102]);
        let short = fit(
            0,
            ids.clone(),
            types.clone(),
            1,
            1,
            &opts(false, Direction::Right),
            &limits(7),
        )
        .unwrap();
        assert_eq!(short.0, ids);
        let err = fit(
            2,
            ids,
            types,
            1,
            1,
            &opts(false, Direction::Right),
            &limits(5),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ServeError::TooLong {
                index: 2,
                tokens: 7,
                max: 5
            }
        );
    }

    #[test]
    fn finish_cuts_and_renormalizes() {
        let v = vec![0.6, 0.8, 0.0, 0.0];
        let o = Options {
            dimensions: Some(1),
            ..Options::default()
        };
        assert_eq!(finish(v.clone(), &o), vec![1.0]);
        let raw = Options {
            dimensions: Some(1),
            normalize: false,
            ..Options::default()
        };
        assert_eq!(finish(vec![3.0, 4.0], &raw), vec![3.0]);
        assert_eq!(finish(v.clone(), &Options::default()), v);
        // The worker hands over raw means: the defaults normalize them, `normalize:
        // false` leaves them as they are.
        assert_eq!(finish(vec![3.0, 4.0], &Options::default()), vec![0.6, 0.8]);
        let keep = Options {
            normalize: false,
            ..Options::default()
        };
        assert_eq!(finish(vec![3.0, 4.0], &keep), vec![3.0, 4.0]);
        assert_eq!(finish(vec![0.0, 0.0], &Options::default()), vec![0.0, 0.0]);
    }

    #[test]
    fn faults_parse_only_in_their_exact_form() {
        assert_eq!(parse_fault("__lanes_fault:error__"), Some(Fault::Error));
        assert_eq!(parse_fault("__lanes_fault:panic__"), Some(Fault::Panic));
        assert_eq!(
            parse_fault("__lanes_fault:sleep_ms=5__"),
            Some(Fault::Sleep(Duration::from_millis(5)))
        );
        assert!(parse_fault("__lanes_fault:sleep_ms=x__").is_none());
        assert!(parse_fault("hello").is_none());
    }
}
