//! One request's results as workers fill them in, and the rendezvous with
//! whoever waits for them: a blocking wait (condition variable, with a
//! deadline) or a future (waker). Chunks of one request may run on several
//! workers at once; each delivers its rows here, under this request's own lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use lanes_nn::Embedding;

use crate::error::{Result, ServeError};
use crate::input::{finish, Options};

struct State {
    results: Vec<Option<Embedding>>,
    remaining: usize,
    outcome: Option<Result<Vec<Embedding>>>,
    waker: Option<Waker>,
}

/// A request's shared completion state.
pub struct Completion {
    state: Mutex<State>,
    cond: Condvar,
    cancelled: AtomicBool,
    /// The request's options (post-processing, deadline).
    pub options: Options,
    /// When it was queued.
    pub enqueued: Instant,
}

impl Completion {
    /// A completion for `n` rows.
    pub fn new(n: usize, options: Options) -> Completion {
        Completion {
            state: Mutex::new(State {
                results: vec![None; n],
                remaining: n,
                outcome: (n == 0).then(|| Ok(Vec::new())),
                waker: None,
            }),
            cond: Condvar::new(),
            cancelled: AtomicBool::new(false),
            options,
            enqueued: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the request abandoned by its caller: workers skip its rows.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether the caller abandoned the request.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether an outcome is set (answered or failed).
    pub fn is_done(&self) -> bool {
        self.lock().outcome.is_some()
    }

    /// Whether nobody needs this request's rows any more.
    pub fn is_dead(&self) -> bool {
        self.is_cancelled() || self.is_done()
    }

    /// Stores row `row`'s embedding (post-processed); completes the request
    /// with its last row.
    pub fn deliver(&self, row: usize, mut emb: Embedding) {
        emb.vector = finish(std::mem::take(&mut emb.vector), &self.options);
        let mut s = self.lock();
        if s.outcome.is_some() {
            return;
        }
        let Some(slot) = s.results.get_mut(row) else {
            return;
        };
        if slot.replace(emb).is_none() {
            s.remaining -= 1;
        }
        if s.remaining == 0 {
            let rows: Option<Vec<Embedding>> = s.results.drain(..).collect();
            let outcome = rows.ok_or_else(|| {
                ServeError::Inference("internal error: a row got no embedding".into())
            });
            self.settle(s, outcome);
        }
    }

    /// Fails the request (the first outcome wins).
    pub fn fail(&self, err: ServeError) {
        let s = self.lock();
        if s.outcome.is_none() {
            self.settle(s, Err(err));
        }
    }

    fn settle(&self, mut s: MutexGuard<'_, State>, outcome: Result<Vec<Embedding>>) {
        s.outcome = Some(outcome);
        let waker = s.waker.take();
        drop(s);
        self.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the outcome if set, else registers `cx`'s waker.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Vec<Embedding>>> {
        let mut s = self.lock();
        match s.outcome.take() {
            Some(o) => {
                s.outcome = Some(Err(ServeError::Inference(
                    "the result was already taken".into(),
                )));
                Poll::Ready(o)
            }
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Blocks until the outcome is set or `deadline` passes
    /// (`DeadlineExceeded(timeout)` then).
    pub fn wait(&self, deadline: Option<Instant>, timeout: Duration) -> Result<Vec<Embedding>> {
        let mut s = self.lock();
        loop {
            if let Some(o) = s.outcome.take() {
                s.outcome = Some(Err(ServeError::Inference(
                    "the result was already taken".into(),
                )));
                return o;
            }
            s = match deadline {
                None => self.cond.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(ServeError::DeadlineExceeded(timeout));
                    }
                    self.cond
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(x: f32) -> Embedding {
        Embedding {
            tokens: 2,
            vector: vec![x],
        }
    }

    #[test]
    fn rows_arrive_in_any_order_and_complete_in_input_order() {
        // Raw vectors, so that `finish` leaves the values as they are.
        let raw = Options {
            normalize: false,
            ..Options::default()
        };
        let c = Completion::new(2, raw);
        c.deliver(1, emb(2.0));
        assert!(!c.is_done());
        c.deliver(1, emb(3.0));
        c.deliver(0, emb(1.0));
        let got = c.wait(None, Duration::ZERO).unwrap();
        assert_eq!(got, vec![emb(1.0), emb(3.0)]);
    }

    #[test]
    fn the_first_outcome_wins_and_waits_time_out() {
        let c = Completion::new(1, Options::default());
        let t = Instant::now();
        let timeout = Duration::from_millis(20);
        assert_eq!(
            c.wait(Some(t + timeout), timeout),
            Err(ServeError::DeadlineExceeded(timeout))
        );
        c.fail(ServeError::ShuttingDown);
        c.deliver(0, emb(1.0));
        assert_eq!(c.wait(None, timeout), Err(ServeError::ShuttingDown));
    }
}
