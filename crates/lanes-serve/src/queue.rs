//! The token-bounded, fair request queue between callers and workers.
//!
//! A request is queued as one [`Entry`] holding its rows (tokenized inputs).
//! Admission counts tokens: a request is admitted while the queued tokens plus
//! its own stay within the bound, and always into an empty queue (so a request
//! larger than the bound is not refused forever).
//!
//! Workers [`Queue::take`] a batch of rows within a token budget, round-robin
//! over the queued requests: every request gets a share of each batch and a
//! request that contributed goes to the back, so a small request is answered
//! within a batch or two even while a request of thousands of texts runs; the
//! heavy one fills whatever budget is left. Rows of cancelled requests and of
//! requests past their deadline are dropped here, before any work is done.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::completion::Completion;
use crate::error::{Result, ServeError};
use crate::input::Seq;
use crate::metrics::EngineMetrics;

/// One input of a request, as queued and as handed to a worker.
pub struct Row {
    /// The request's id.
    pub id: u64,
    /// Index of the input in its request.
    pub row: usize,
    /// Its tokens.
    pub seq: Seq,
    /// Where its result goes.
    pub completion: Arc<Completion>,
}

struct Entry {
    id: u64,
    completion: Arc<Completion>,
    rows: VecDeque<Row>,
    tokens: usize,
}

struct State {
    entries: VecDeque<Entry>,
    tokens: usize,
    texts: usize,
    closed: bool,
}

/// How workers form batches.
#[derive(Clone, Debug)]
pub struct BatchRule {
    /// Token budget of one forward pass (sum of the rows' lengths; packed
    /// batches carry no padding). At least one row always runs.
    pub max_batch_tokens: usize,
    /// `false`: one request per forward pass.
    pub batching: bool,
    /// How long a partial batch may wait for requests being prepared.
    pub max_wait: Duration,
}

/// The queue.
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    metrics: Arc<EngineMetrics>,
}

impl Queue {
    /// An empty queue bounded at `capacity` tokens.
    pub fn new(capacity: usize, metrics: Arc<EngineMetrics>) -> Queue {
        metrics
            .queue_capacity
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        Queue {
            state: Mutex::new(State {
                entries: VecDeque::new(),
                tokens: 0,
                texts: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, s: &State) {
        self.metrics.queue_requests.set(s.entries.len() as i64);
        self.metrics.queue_texts.set(s.texts as i64);
        self.metrics.queue_tokens.set(s.tokens as i64);
    }

    /// Queues request `id`'s rows, or says why not at once.
    pub fn push(&self, id: u64, completion: Arc<Completion>, seqs: Vec<Seq>) -> Result<()> {
        let tokens: usize = seqs.iter().map(|s| s.ids.len()).sum();
        let mut s = self.lock();
        if s.closed {
            return Err(ServeError::ShuttingDown);
        }
        if s.tokens > 0 && s.tokens + tokens > self.capacity {
            return Err(ServeError::Overloaded {
                queued_tokens: s.tokens,
                capacity: self.capacity,
            });
        }
        s.tokens += tokens;
        s.texts += seqs.len();
        let rows = seqs
            .into_iter()
            .enumerate()
            .map(|(row, seq)| Row {
                id,
                row,
                seq,
                completion: completion.clone(),
            })
            .collect();
        s.entries.push_back(Entry {
            id,
            completion,
            rows,
            tokens,
        });
        self.publish(&s);
        drop(s);
        self.ready.notify_all();
        Ok(())
    }

    /// Drops request `id`'s queued rows; whether it had any.
    pub fn cancel(&self, id: u64) -> bool {
        let mut s = self.lock();
        let Some(i) = s.entries.iter().position(|e| e.id == id) else {
            return false;
        };
        if let Some(e) = s.entries.remove(i) {
            s.tokens -= e.tokens;
            s.texts -= e.rows.len();
        }
        self.publish(&s);
        true
    }

    /// Refuses new requests; workers drain what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// (requests, texts, tokens) queued now.
    pub fn depth(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.entries.len(), s.texts, s.tokens)
    }

    /// The bound, in tokens.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drops entries nobody waits for and fails those past their deadline.
    fn purge(&self, s: &mut State) {
        let now = Instant::now();
        let mut i = 0;
        while i < s.entries.len() {
            let e = &s.entries[i];
            let expired = e.completion.options.deadline.filter(|&d| now >= d);
            if !e.completion.is_dead() && expired.is_none() {
                i += 1;
                continue;
            }
            if let Some(e) = s.entries.remove(i) {
                s.tokens -= e.tokens;
                s.texts -= e.rows.len();
                if let Some(d) = expired {
                    if !e.completion.is_dead() {
                        self.metrics.expired.inc();
                        let timeout = d.saturating_duration_since(e.completion.enqueued);
                        e.completion.fail(ServeError::DeadlineExceeded(timeout));
                    }
                }
            }
        }
    }

    /// The next batch: waits for work; `None` once closed and drained. With
    /// batching, a partial batch waits up to `max_wait` (from its oldest
    /// request's arrival) while `arriving` requests are being prepared.
    pub fn take(&self, rule: &BatchRule, arriving: &AtomicUsize) -> Option<Vec<Row>> {
        let mut s = self.lock();
        loop {
            self.purge(&mut s);
            if !s.entries.is_empty() {
                break;
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        let mut batch = Vec::new();
        let mut used = 0;
        fill(&mut s, rule, &mut batch, &mut used);
        if rule.batching && !rule.max_wait.is_zero() {
            let oldest = batch
                .iter()
                .map(|r| r.completion.enqueued)
                .min()
                .unwrap_or_else(Instant::now);
            let until = oldest + rule.max_wait;
            while used < rule.max_batch_tokens && !s.closed && arriving.load(Ordering::SeqCst) > 0 {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                s = self
                    .ready
                    .wait_timeout(s, until - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                self.purge(&mut s);
                fill(&mut s, rule, &mut batch, &mut used);
            }
        }
        self.publish(&s);
        Some(batch)
    }
}

/// Moves rows from the queued entries into `batch` within the budget.
fn fill(s: &mut State, rule: &BatchRule, batch: &mut Vec<Row>, used: &mut usize) {
    let budget = rule.max_batch_tokens;
    let fits = |batch: &Vec<Row>, used: usize, len: usize| batch.is_empty() || used + len <= budget;
    let mut contributed = vec![false; s.entries.len()];
    if !rule.batching {
        if !batch.is_empty() {
            return;
        }
        if let Some(e) = s.entries.front_mut() {
            while let Some(len) = e.rows.front().map(|r| r.seq.ids.len()) {
                if !fits(batch, *used, len) {
                    break;
                }
                take_row(e, batch, used, &mut s.tokens, &mut s.texts);
            }
            contributed[0] = true;
        }
    } else {
        loop {
            let live = s
                .entries
                .iter()
                .filter(|e| !e.rows.is_empty())
                .count()
                .max(1);
            let quota = (budget.saturating_sub(*used) / live).max(1);
            let mut progressed = false;
            for (i, e) in s.entries.iter_mut().enumerate() {
                let mut took = 0;
                while let Some(len) = e.rows.front().map(|r| r.seq.ids.len()) {
                    if !fits(batch, *used, len) || (took > 0 && took + len > quota) {
                        break;
                    }
                    take_row(e, batch, used, &mut s.tokens, &mut s.texts);
                    took += len;
                }
                if took > 0 {
                    progressed = true;
                    contributed[i] = true;
                }
            }
            if !progressed || *used >= budget {
                break;
            }
        }
    }
    // Requests that got a share go to the back, in order; emptied ones leave.
    let mut stay = VecDeque::with_capacity(s.entries.len());
    let mut back = Vec::new();
    for (e, c) in s
        .entries
        .drain(..)
        .zip(contributed.into_iter().chain(std::iter::repeat(false)))
    {
        if e.rows.is_empty() {
            continue;
        }
        if c {
            back.push(e);
        } else {
            stay.push_back(e);
        }
    }
    stay.extend(back);
    s.entries = stay;
}

fn take_row(
    e: &mut Entry,
    batch: &mut Vec<Row>,
    used: &mut usize,
    tokens: &mut usize,
    texts: &mut usize,
) {
    if let Some(r) = e.rows.pop_front() {
        let len = r.seq.ids.len();
        *used += len;
        e.tokens -= len;
        *tokens -= len;
        *texts -= 1;
        batch.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Options;

    fn seqs(lens: &[usize]) -> Vec<Seq> {
        lens.iter()
            .map(|&l| Seq {
                ids: vec![1; l],
                types: vec![0; l],
                fault: None,
            })
            .collect()
    }

    fn queue(capacity: usize) -> Queue {
        Queue::new(capacity, Arc::new(EngineMetrics::new()))
    }

    fn push(q: &Queue, id: u64, lens: &[usize]) -> (Result<()>, Arc<Completion>) {
        let c = Arc::new(Completion::new(lens.len(), Options::default()));
        (q.push(id, c.clone(), seqs(lens)), c)
    }

    fn rule(budget: usize, batching: bool) -> BatchRule {
        BatchRule {
            max_batch_tokens: budget,
            batching,
            max_wait: Duration::ZERO,
        }
    }

    fn ids(batch: &[Row]) -> Vec<(u64, usize)> {
        batch.iter().map(|r| (r.id, r.row)).collect()
    }

    #[test]
    fn admission_counts_tokens_and_an_empty_queue_takes_anything() {
        let q = queue(100);
        assert!(push(&q, 0, &[80, 80]).0.is_ok(), "empty queue");
        assert_eq!(
            push(&q, 1, &[5]).0,
            Err(ServeError::Overloaded {
                queued_tokens: 160,
                capacity: 100
            })
        );
        let none = AtomicUsize::new(0);
        assert_eq!(q.take(&rule(1000, true), &none).map(|b| b.len()), Some(2));
        assert!(push(&q, 2, &[60]).0.is_ok());
        assert!(push(&q, 3, &[40]).0.is_ok());
        assert!(push(&q, 4, &[1]).0.is_err());
        assert_eq!(q.depth(), (2, 2, 100));
    }

    #[test]
    fn a_small_request_shares_the_next_batch_with_a_heavy_one() {
        let q = queue(1 << 20);
        let none = AtomicUsize::new(0);
        let _h = push(&q, 0, &[10; 100]);
        let first = q.take(&rule(50, true), &none).unwrap();
        assert_eq!(ids(&first), (0..5).map(|r| (0, r)).collect::<Vec<_>>());
        let _t = push(&q, 1, &[10, 10]);
        let second = q.take(&rule(50, true), &none).unwrap();
        let got = ids(&second);
        assert!(got.contains(&(1, 0)) && got.contains(&(1, 1)), "{got:?}");
        assert_eq!(second.iter().map(|r| r.seq.ids.len()).sum::<usize>(), 50);
        assert_eq!(q.depth(), (1, 92, 920));
    }

    #[test]
    fn over_budget_rows_run_alone_and_without_batching_one_request_per_pass() {
        let q = queue(1 << 20);
        let none = AtomicUsize::new(0);
        let _a = push(&q, 0, &[300, 10]);
        let _b = push(&q, 1, &[10]);
        let batch = q.take(&rule(256, false), &none).unwrap();
        assert_eq!(ids(&batch), vec![(0, 0)]);
        let batch = q.take(&rule(256, false), &none).unwrap();
        assert_eq!(ids(&batch), vec![(1, 0)], "request 0 went to the back");
        let batch = q.take(&rule(256, false), &none).unwrap();
        assert_eq!(ids(&batch), vec![(0, 1)]);
    }

    #[test]
    fn cancelled_and_expired_requests_are_dropped_before_work() {
        let q = queue(1 << 20);
        let none = AtomicUsize::new(0);
        let (_, a) = push(&q, 0, &[10]);
        a.cancel();
        let late = Options {
            deadline: Some(Instant::now()),
            ..Options::default()
        };
        let b = Arc::new(Completion::new(1, late));
        q.push(1, b.clone(), seqs(&[10])).unwrap();
        let _c = push(&q, 2, &[10]);
        assert!(q.cancel(2));
        assert!(!q.cancel(2));
        q.close();
        assert!(q.take(&rule(100, true), &none).is_none());
        assert!(matches!(
            b.wait(None, Duration::ZERO),
            Err(ServeError::DeadlineExceeded(_))
        ));
        assert_eq!(q.depth(), (0, 0, 0));
        assert_eq!(q.metrics.expired.get(), 1);
    }

    #[test]
    fn a_closed_queue_refuses_new_requests_and_drains_old_ones() {
        let q = queue(100);
        let none = AtomicUsize::new(0);
        let _a = push(&q, 0, &[5]);
        q.close();
        assert_eq!(push(&q, 1, &[5]).0, Err(ServeError::ShuttingDown));
        assert!(q.take(&rule(100, true), &none).is_some());
        assert!(q.take(&rule(100, true), &none).is_none());
    }
}
