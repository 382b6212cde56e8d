//! The stress suite and its single-threaded references: [`prepare`] generates
//! the requests, runs each once on one lane, and anchors the small ones to the
//! host reference forward; [`execute`] runs one request.

use std::time::Instant;

use anyhow::{Context, Result};
use lanes::Lease;
use lanes_nn::{Encoder, Model, Precision};

use super::compare::{anchor_tolerance, fmt_opt, Compare};
use super::report::Check;
use super::requests::{self, Input, Request, Shapes};

/// The anchor compares requests of at most this many padded tokens.
const ANCHOR_MAX_TOKENS: usize = 512;

/// The suite and its references.
pub struct Suite {
    /// The distinct requests.
    pub requests: Vec<Request>,
    /// Each request's single-threaded result, `rows × hidden`.
    pub references: Vec<Vec<f32>>,
    /// Embedding width.
    pub hidden: usize,
    /// The device reference against the host reference forward, if checked.
    pub anchor: Option<Check>,
    /// Time of the reference pass.
    pub reference_seconds: f64,
    /// The seed the requests came from.
    pub seed: u64,
    /// The precision the encoder computes in (references included).
    pub precision: Precision,
}

/// Runs one request on `lane`: `rows × hidden` values.
pub fn execute(encoder: &Encoder, lane: &Lease, req: &Request) -> lanes_nn::Result<Vec<f32>> {
    match &req.input {
        Input::Tokens(enc) => encoder.forward(lane, enc),
        Input::Texts(texts) => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let embs = encoder.embed_on(lane, &refs)?;
            Ok(embs.into_iter().flat_map(|e| e.vector).collect())
        }
    }
}

/// Builds the suite for `seed` and computes every request's reference on one lane
/// of the encoder's device, one request after the other. With `host_model`, the
/// small requests' references are also compared with the host reference forward
/// (the anchor: a device that is consistently wrong would otherwise pass), within
/// the tolerance of the encoder's precision ([`anchor_tolerance`]).
pub fn prepare(
    encoder: &Encoder,
    host_model: Option<&Model>,
    shapes: Shapes,
    seed: u64,
) -> Result<Suite> {
    let precision = encoder.precision();
    let vocab = encoder.config().vocab_size;
    let requests = requests::generate(encoder.tokenizer(), vocab, shapes, seed)?;
    let hidden = encoder.config().hidden_size;
    let start = Instant::now();
    let lane = encoder
        .device()
        .lease()
        .context("cannot lease a lane for the reference pass")?;
    let mut references = Vec::with_capacity(requests.len());
    for req in &requests {
        let out = execute(encoder, &lane, req)
            .with_context(|| format!("reference pass, {}", req.describe()))?;
        anyhow::ensure!(
            out.len() == req.rows() * hidden,
            "reference pass, {}: {} values, expected {} rows × {hidden}",
            req.describe(),
            out.len(),
            req.rows()
        );
        references.push(out);
    }
    drop(lane);
    let anchor = match host_model {
        Some(model) => Some(anchor(model, &requests, &references, hidden, precision)?),
        None => None,
    };
    Ok(Suite {
        requests,
        references,
        hidden,
        anchor,
        reference_seconds: start.elapsed().as_secs_f64(),
        seed,
        precision,
    })
}

fn anchor(
    model: &Model,
    requests: &[Request],
    references: &[Vec<f32>],
    hidden: usize,
    precision: Precision,
) -> Result<Check> {
    let tolerance = anchor_tolerance(precision);
    let mut cmp = Compare::default();
    let mut checked = Vec::new();
    for (req, reference) in requests.iter().zip(references) {
        if req.padded_tokens() > ANCHOR_MAX_TOKENS {
            continue;
        }
        let enc = match &req.input {
            Input::Tokens(enc) => enc.clone(),
            Input::Texts(texts) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                model.tokenizer.encode_batch(&refs)?
            }
        };
        let host = lanes_nn::reference::forward(&model.weights, &model.config, &enc)
            .with_context(|| format!("host reference forward, {}", req.describe()))?;
        cmp.rows(&host, reference, hidden, tolerance);
        checked.push(req.index);
    }
    let passed = cmp.bad_rows == 0 && !checked.is_empty();
    Ok(Check {
        name: "anchor".into(),
        passed,
        detail: format!(
            "device reference ({precision}) vs host reference forward (float32) on {} requests: {} rows, min cosine {}, max |diff| {}",
            checked.len(),
            cmp.rows,
            fmt_opt(cmp.min_cosine),
            fmt_opt(cmp.max_abs_diff)
        ),
        figures: serde_json::json!({
            "requests": checked, "rows": cmp.rows, "bad_rows": cmp.bad_rows,
            "min_cosine": cmp.min_cosine, "max_abs_diff": cmp.max_abs_diff,
            "tolerance": tolerance, "dtype": precision.name(),
        }),
    })
}
