//! [`Engine`]: the batching engine's front door. [`Engine::submit`] prepares a
//! request (tokenizes texts or checks token ids, applies the length rule),
//! queues it, and returns a [`Handle`] to wait on, blocking
//! ([`Handle::wait`]) or async (`Handle` is a `Future`). Dropping a handle
//! before its answer cancels the request: its queued rows are dropped and
//! `lanes_requests_cancelled_total` counts it. A deadline in [`Options`]
//! bounds the wait and drops the work when it passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lanes_nn::{Embedding, Encoder};

use crate::codec::Codec;
use crate::completion::Completion;
use crate::error::{Result, ServeError};
use crate::input::{prepare, Input, Limits, Options};
use crate::metrics::EngineMetrics;
use crate::queue::{BatchRule, Queue};
use crate::worker;

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Worker threads, one lane each.
    pub workers: usize,
    /// Token budget of one forward pass (an input longer than it runs alone).
    pub max_batch_tokens: usize,
    /// How long a partial batch may wait for requests being prepared.
    pub max_wait: Duration,
    /// `false`: one request per forward pass.
    pub batching: bool,
    /// Queue bound in tokens (a request is always admitted into an empty queue).
    pub max_queue_tokens: usize,
    /// Testing only: texts `__lanes_fault:error__`, `__lanes_fault:panic__`,
    /// `__lanes_fault:sleep_ms=N__` fail, panic or slow their forward pass.
    pub inject_faults: bool,
}

/// The batching engine.
pub struct Engine {
    encoder: Arc<Encoder>,
    codec: Codec,
    queue: Arc<Queue>,
    metrics: Arc<EngineMetrics>,
    arriving: Arc<AtomicUsize>,
    limits: Limits,
    next_id: AtomicU64,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Starts `config.workers` workers on `encoder`'s device; `codec` is the
    /// model's tokenizer (see [`Codec::from_file`]).
    pub fn start(encoder: Arc<Encoder>, codec: Codec, config: EngineConfig) -> Result<Engine> {
        let max_len = encoder
            .tokenizer()
            .max_len()
            .min(encoder.config().max_position_embeddings);
        if config.workers == 0 || config.max_queue_tokens == 0 {
            return Err(ServeError::Start(
                "workers and the queue bound must be at least 1".into(),
            ));
        }
        if config.max_batch_tokens == 0 {
            return Err(ServeError::Start(
                "the batch budget must be at least 1 token (an input longer than it runs alone)"
                    .into(),
            ));
        }
        let metrics = Arc::new(EngineMetrics::new());
        metrics.workers.set(config.workers as i64);
        let queue = Arc::new(Queue::new(config.max_queue_tokens, metrics.clone()));
        let arriving = Arc::new(AtomicUsize::new(0));
        let shared = worker::Shared {
            encoder: encoder.clone(),
            queue: queue.clone(),
            rule: BatchRule {
                max_batch_tokens: config.max_batch_tokens,
                batching: config.batching,
                max_wait: config.max_wait,
            },
            metrics: metrics.clone(),
            arriving: arriving.clone(),
        };
        let handles = worker::spawn(config.workers, &shared).map_err(|e| {
            queue.close();
            ServeError::Start(e)
        })?;
        let limits = Limits {
            max_len,
            hidden: encoder.config().hidden_size,
            inject_faults: config.inject_faults,
        };
        Ok(Engine {
            encoder,
            codec,
            queue,
            metrics,
            arriving,
            limits,
            next_id: AtomicU64::new(0),
            workers: Mutex::new(handles),
        })
    }

    /// Prepares and queues a request. Bad inputs, a full queue or a closed
    /// engine are refused here, at once.
    pub fn submit(&self, input: Input, options: Options) -> Result<Handle> {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        let _arrived = Arrived(&self.arriving);
        let seqs = prepare(&self.codec, &input, &options, &self.limits)?;
        let timeout = options.deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let completion = Arc::new(Completion::new(seqs.len(), options));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.queue.push(id, completion.clone(), seqs)?;
        Ok(Handle {
            id,
            completion,
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
            timeout,
        })
    }

    /// Submits and waits (blocking).
    pub fn embed(&self, input: Input, options: Options) -> Result<Vec<Embedding>> {
        self.submit(input, options)?.wait()
    }

    /// The tokenizer.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The model.
    pub fn encoder(&self) -> &Arc<Encoder> {
        &self.encoder
    }

    /// The metrics (and their registry).
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Longest input in tokens.
    pub fn max_input_length(&self) -> usize {
        self.limits.max_len
    }

    /// Embedding width.
    pub fn hidden_size(&self) -> usize {
        self.limits.hidden
    }

    /// (requests, texts, tokens) queued now.
    pub fn queue_depth(&self) -> (usize, usize, usize) {
        self.queue.depth()
    }

    /// Refuses new requests (queued ones still run).
    pub fn close(&self) {
        self.queue.close();
    }

    /// Closes, lets the workers drain the queue, and joins them. Returns how
    /// many workers had panicked out of their loop.
    pub fn shutdown(&self) -> usize {
        self.queue.close();
        let handles =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        handles.into_iter().filter_map(|h| h.join().err()).count()
    }
}

impl Engine {
    /// Like [`Engine::shutdown`], but waits at most `limit` for the workers;
    /// returns how many were still running (left detached: a forward pass
    /// cannot be interrupted).
    pub fn shutdown_within(&self, limit: Duration) -> usize {
        self.queue.close();
        let deadline = Instant::now() + limit;
        let mut handles =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        loop {
            let (done, running): (Vec<_>, Vec<_>) =
                handles.into_iter().partition(JoinHandle::is_finished);
            for h in done {
                let _ = h.join();
            }
            handles = running;
            if handles.is_empty() || Instant::now() >= deadline {
                return handles.len();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Arrived<'a>(&'a AtomicUsize);

impl Drop for Arrived<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A queued request. Wait on it ([`Handle::wait`], or `.await`); drop it to
/// cancel the request.
pub struct Handle {
    id: u64,
    completion: Arc<Completion>,
    queue: Arc<Queue>,
    metrics: Arc<EngineMetrics>,
    timeout: Duration,
}

impl Handle {
    /// The request's id (unique within its engine).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Blocks until the embeddings (in input order) or an error; past the
    /// deadline, `DeadlineExceeded` and the request's work is dropped.
    pub fn wait(self) -> Result<Vec<Embedding>> {
        self.completion
            .wait(self.completion.options.deadline, self.timeout)
    }

    /// Whether the answer is ready.
    pub fn is_done(&self) -> bool {
        self.completion.is_done()
    }
}

/// Resolves with the answer. The engine drops the work of a request past its
/// deadline and fails it then, but only when a worker looks at the queue: an
/// async caller should also bound the wait with its runtime's timer.
impl Future for Handle {
    type Output = Result<Vec<Embedding>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.completion.poll(cx)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.completion.is_done() {
            return;
        }
        self.completion.cancel();
        self.queue.cancel(self.id);
        let expired = self
            .completion
            .options
            .deadline
            .is_some_and(|d| Instant::now() >= d);
        if expired {
            self.metrics.expired.inc();
        } else {
            self.metrics.cancelled.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn engine_and_handles_cross_threads_for_bindings() {
        // A Python binding shares one engine between threads and moves a
        // handle to whichever thread (or event loop) waits on it.
        assert_send_sync::<Engine>();
        assert_send::<Handle>();
        assert_send_sync::<crate::Codec>();
    }
}
