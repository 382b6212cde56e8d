//! How passes are formed: tokenized texts ([`Seq`], [`tokenize`]), the items a
//! worker holds, and the batching rules ([`plan`] for the texts a worker holds,
//! [`fits`] for a queued job that may join). Pure functions, unit-tested here.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use lanes_nn::Encoder;

use super::queue::Job;

/// How workers form batches.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Padded-token budget of one forward pass (at least one text always runs).
    pub max_batch_tokens: usize,
    /// How long the oldest job may wait for others to join its batch.
    pub max_wait: Duration,
    /// `false`: one request per forward pass (a large one split by the budget).
    pub batching: bool,
    /// Padding tokens a pass may always carry when texts of different lengths
    /// share it; past that, padding may be at most a quarter of the pass.
    pub padding_slack: usize,
}

/// One tokenized text, as queued.
pub struct Seq {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
    pub(super) fault: Option<Fault>,
}

impl Seq {
    /// A text's token ids (all of type 0), without a fault.
    #[cfg(test)]
    pub fn new(ids: Vec<u32>) -> Seq {
        let types = vec![0; ids.len()];
        Seq {
            ids,
            types,
            fault: None,
        }
    }
}

/// Tokenizes `texts` as the model does (truncating to its maximum length).
/// `Err((i, message))` names the text that failed.
pub fn tokenize(
    encoder: &Encoder,
    texts: &[String],
    inject_faults: bool,
) -> std::result::Result<Vec<Seq>, (usize, String)> {
    let tokenizer = encoder.tokenizer();
    let mut seqs = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let encoded = catch_unwind(AssertUnwindSafe(|| tokenizer.encode(text)));
        match encoded {
            Ok(Ok((ids, types))) => {
                let fault = if inject_faults {
                    parse_fault(text)
                } else {
                    None
                };
                seqs.push(Seq { ids, types, fault });
            }
            Ok(Err(e)) => return Err((i, e.to_string())),
            Err(panic) => {
                return Err((
                    i,
                    format!("the tokenizer panicked: {}", panic_message(&*panic)),
                ))
            }
        }
    }
    Ok(seqs)
}

/// One tokenized text of an active job.
pub(super) struct Item {
    pub(super) job: u64,
    pub(super) row: usize,
    pub(super) ids: Vec<u32>,
    pub(super) types: Vec<u32>,
    pub(super) fault: Option<Fault>,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Fault {
    Error,
    Panic,
    Sleep(Duration),
}

fn parse_fault(text: &str) -> Option<Fault> {
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

/// The texts of the next forward pass.
pub(super) struct Plan {
    /// Indices into the worker's pending items, ascending.
    pub(super) picked: Vec<usize>,
    /// Longest picked text, in tokens.
    pub(super) longest: usize,
    /// Real tokens of the picked texts.
    pub(super) real: usize,
}

impl Plan {
    pub(super) fn padded(&self) -> usize {
        self.picked.len() * self.longest
    }
}

/// Whether a pass of `padded` tokens, `real` of them real, pads little enough:
/// at most `padding_slack` tokens, or else at most a quarter of the pass.
pub(super) fn padding_ok(padded: usize, real: usize, config: &BatchConfig) -> bool {
    let waste = padded.saturating_sub(real);
    waste <= config.padding_slack || waste * 4 <= padded
}

/// Which pending items the next forward pass takes. The oldest item always
/// goes. With batching, later items join, in order, while the pass stays within
/// the token budget and [`padding_ok`]: one 256-token text does not make fifty
/// 10-token texts pay for 256 tokens each; it leads a later pass instead (it is
/// the oldest there). Without batching: only the oldest item's request, in
/// order, up to the budget.
pub(super) fn plan(pending: &VecDeque<Item>, config: &BatchConfig) -> Plan {
    let Some(first) = pending.front() else {
        return Plan {
            picked: Vec::new(),
            longest: 0,
            real: 0,
        };
    };
    let budget = config.max_batch_tokens;
    let mut plan = Plan {
        picked: vec![0],
        longest: first.ids.len(),
        real: first.ids.len(),
    };
    for (i, item) in pending.iter().enumerate().skip(1) {
        if (plan.picked.len() + 1) * plan.longest > budget {
            break; // not even a shorter text fits
        }
        if !config.batching && item.job != first.job {
            break;
        }
        let len = item.ids.len();
        let longest = plan.longest.max(len);
        let padded = (plan.picked.len() + 1) * longest;
        if padded > budget || (config.batching && !padding_ok(padded, plan.real + len, config)) {
            if config.batching {
                continue;
            }
            break;
        }
        plan.picked.push(i);
        plan.longest = longest;
        plan.real += len;
    }
    plan
}

/// Whether all of `job`'s texts can join the pass `plan` describes.
pub(super) fn fits(plan: &Plan, job: &Job, config: &BatchConfig) -> bool {
    let n = plan.picked.len() + job.seqs.len();
    let longest = job
        .seqs
        .iter()
        .map(|s| s.ids.len())
        .fold(plan.longest, usize::max);
    let real = plan.real + job.seqs.iter().map(|s| s.ids.len()).sum::<usize>();
    let padded = n * longest;
    padded <= config.max_batch_tokens && padding_ok(padded, real, config)
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::sync::oneshot;

    #[test]
    fn faults_parse_only_in_their_exact_form() {
        assert!(matches!(
            parse_fault("__lanes_fault:error__"),
            Some(Fault::Error)
        ));
        assert!(matches!(
            parse_fault("__lanes_fault:panic__"),
            Some(Fault::Panic)
        ));
        assert!(
            matches!(parse_fault("__lanes_fault:sleep_ms=5__"), Some(Fault::Sleep(d)) if d == Duration::from_millis(5))
        );
        assert!(parse_fault("__lanes_fault:sleep_ms=x__").is_none());
        assert!(parse_fault("hello").is_none());
    }

    fn pp(pending: &VecDeque<Item>, config: &BatchConfig) -> (Vec<usize>, usize) {
        let plan = plan(pending, config);
        let padded = plan.padded();
        (plan.picked, padded)
    }

    fn cfg(budget: usize, batching: bool, padding_slack: usize) -> BatchConfig {
        BatchConfig {
            max_batch_tokens: budget,
            max_wait: Duration::ZERO,
            batching,
            padding_slack,
        }
    }

    fn items(spec: &[(u64, usize)]) -> VecDeque<Item> {
        spec.iter()
            .map(|&(job, len)| Item {
                job,
                row: 0,
                ids: vec![1; len],
                types: vec![0; len],
                fault: None,
            })
            .collect()
    }

    #[test]
    fn plan_keeps_within_the_token_budget_and_always_takes_the_oldest() {
        let p = items(&[(0, 300), (1, 10)]);
        assert_eq!(
            pp(&p, &cfg(256, true, 0)),
            (vec![0], 300),
            "an over-budget text still runs, alone"
        );
        let p = items(&[(0, 10); 30]);
        let (picked, padded) = pp(&p, &cfg(100, true, 0));
        assert_eq!((picked.len(), padded), (10, 100));
    }

    #[test]
    fn plan_leaves_a_long_text_out_of_a_batch_of_short_ones() {
        let mut spec = vec![(0, 10), (1, 256)];
        spec.extend((2..40).map(|j| (j, 12)));
        let (picked, padded) = pp(&items(&spec), &cfg(8192, true, 128));
        assert!(!picked.contains(&1), "{picked:?}");
        assert_eq!(picked.len(), 39);
        assert_eq!(padded, 39 * 12);
        // The long text leads the next pass once it is the oldest.
        let (picked, _) = pp(
            &items(&[(1, 256), (2, 12), (3, 200)]),
            &cfg(8192, true, 128),
        );
        assert_eq!(picked, vec![0, 2]);
    }

    #[test]
    fn plan_without_batching_takes_one_request_in_order() {
        let p = items(&[(0, 10), (0, 200), (0, 10), (1, 10)]);
        assert_eq!(pp(&p, &cfg(8192, false, 0)), (vec![0, 1, 2], 600));
        assert_eq!(pp(&p, &cfg(400, false, 0)), (vec![0, 1], 400));
    }

    #[test]
    fn plan_padding_slack_lets_short_texts_of_different_lengths_share_a_pass() {
        let p = items(&[(0, 10), (1, 60), (2, 20)]);
        assert_eq!(
            pp(&p, &cfg(8192, true, 0)).0,
            vec![0, 2],
            "no slack: 10 and 60 do not mix"
        );
        assert_eq!(
            pp(&p, &cfg(8192, true, 256)).0,
            vec![0, 1, 2],
            "with slack they do"
        );
    }

    #[test]
    fn a_job_fits_only_without_much_padding_or_over_the_budget() {
        let config = cfg(100, true, 0);
        let pending = items(&[(0, 10), (0, 12)]);
        let next = plan(&pending, &config);
        let job = |lens: &[usize]| {
            let (tx, _rx) = oneshot::channel();
            let seqs = lens.iter().map(|&l| Seq::new(vec![1; l])).collect();
            Job {
                seqs,
                reply: tx,
                enqueued: Instant::now(),
            }
        };
        assert!(fits(&next, &job(&[11, 12]), &config));
        assert!(
            !fits(&next, &job(&[40]), &config),
            "padding 10 and 12 to 40"
        );
        assert!(!fits(&next, &job(&[12; 7]), &config), "9 x 12 > 100 tokens");
    }
}
