//! The bounded request queue between the HTTP handlers and the workers.
//!
//! Handlers [`Queue::try_push`] a tokenized [`Job`] and await its oneshot reply;
//! a full queue is an immediate error (a 429), never a wait on the async threads.
//! Workers [`Queue::pop`] the oldest job, or [`Queue::pop_where`] the oldest job
//! that fits the batch they are forming, with an optional deadline (the batching
//! wait). Jobs that do not fit stay queued for other workers.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use lanes_nn::Embedding;
use tokio::sync::oneshot;

use super::plan::Seq;

/// A request's result: its embeddings in input order, or a message saying why not.
pub type Reply = std::result::Result<Vec<Embedding>, String>;

/// One request's tokenized texts and where its reply goes.
pub struct Job {
    pub seqs: Vec<Seq>,
    pub reply: oneshot::Sender<Reply>,
    pub enqueued: Instant,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum PushError {
    /// Admitting the job would exceed the bound (in texts).
    Full {
        queued_texts: usize,
        capacity: usize,
    },
    /// The server is shutting down.
    Closed,
}

struct QueueState {
    jobs: VecDeque<Job>,
    texts: usize,
    closed: bool,
}

/// A bounded MPMC queue of jobs, bounded in texts (not requests): a request is
/// admitted while the queued texts plus its own stay within the capacity, and
/// always into an empty queue (so a request larger than the bound is not refused
/// forever).
pub struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    capacity: usize,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                texts: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` or says why not, at once.
    pub fn try_push(&self, job: Job) -> std::result::Result<(), (PushError, Job)> {
        let mut s = self.lock();
        if s.closed {
            return Err((PushError::Closed, job));
        }
        let n = job.seqs.len();
        if s.texts > 0 && s.texts + n > self.capacity {
            let err = PushError::Full {
                queued_texts: s.texts,
                capacity: self.capacity,
            };
            return Err((err, job));
        }
        s.texts += n;
        s.jobs.push_back(job);
        drop(s);
        // Every waiter looks: one forming a batch may pass over this job, which
        // an idle one would take.
        self.ready.notify_all();
        Ok(())
    }

    /// The oldest job; waits until `deadline` (forever with `None`). `None` on
    /// timeout, or once the queue is closed and empty.
    pub fn pop(&self, deadline: Option<Instant>) -> Option<Job> {
        self.pop_where(deadline, |_| true)
    }

    /// The oldest job that `accept`s; waits until `deadline` (forever with
    /// `None`) for one. `None` on timeout, or once the queue is closed and no
    /// queued job is accepted.
    pub fn pop_where(
        &self,
        deadline: Option<Instant>,
        mut accept: impl FnMut(&Job) -> bool,
    ) -> Option<Job> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s
                .jobs
                .iter()
                .position(&mut accept)
                .and_then(|i| s.jobs.remove(i))
            {
                s.texts -= job.seqs.len();
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s = match deadline {
                None => self.ready.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.ready
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Refuses new jobs; workers drain what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// (requests, texts) waiting now.
    pub fn depth(&self) -> (usize, usize) {
        let s = self.lock();
        (s.jobs.len(), s.texts)
    }

    /// The bound, in texts.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(n: usize) -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        (
            Job {
                seqs: (0..n).map(|_| Seq::new(vec![101, 102])).collect(),
                reply: tx,
                enqueued: Instant::now(),
            },
            rx,
        )
    }

    #[test]
    fn queue_bound_counts_texts_and_admits_into_an_empty_queue() {
        let q = Queue::new(3);
        let (big, _r1) = job(5);
        assert!(q.try_push(big).is_ok(), "an empty queue takes any request");
        let (one, _r2) = job(1);
        assert!(matches!(
            q.try_push(one),
            Err((
                PushError::Full {
                    queued_texts: 5,
                    capacity: 3
                },
                _
            ))
        ));
        assert_eq!(q.depth(), (1, 5));
        assert!(q.pop(Some(Instant::now())).is_some());
        let (two, _r3) = job(2);
        let (one, _r4) = job(1);
        assert!(q.try_push(two).is_ok() && q.try_push(one).is_ok());
        let (one, _r5) = job(1);
        assert!(q.try_push(one).is_err());
        assert_eq!(q.depth(), (2, 3));
    }

    #[test]
    fn closed_queue_refuses_new_jobs_and_drains_old_ones() {
        let q = Queue::new(10);
        let (a, _ra) = job(1);
        q.try_push(a).map_err(|_| "push").unwrap();
        q.close();
        let (b, _rb) = job(1);
        assert!(matches!(q.try_push(b), Err((PushError::Closed, _))));
        assert!(q.pop(None).is_some());
        assert!(q.pop(None).is_none(), "closed and empty: no wait");
    }

    #[test]
    fn pop_times_out() {
        let q = Queue::new(1);
        let t = Instant::now();
        assert!(q.pop(Some(t + Duration::from_millis(20))).is_none());
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn pop_where_skips_jobs_that_do_not_fit_and_leaves_them_queued() {
        let q = Queue::new(10);
        let (a, _ra) = job(3);
        let (b, _rb) = job(1);
        q.try_push(a).map_err(|_| "push").unwrap();
        q.try_push(b).map_err(|_| "push").unwrap();
        let got = q
            .pop_where(Some(Instant::now()), |j| j.seqs.len() == 1)
            .expect("b fits");
        assert_eq!(got.seqs.len(), 1);
        assert_eq!(q.depth(), (1, 3));
        assert!(q
            .pop_where(Some(Instant::now()), |j| j.seqs.len() == 1)
            .is_none());
        assert_eq!(q.pop(None).map(|j| j.seqs.len()), Some(3));
    }
}
