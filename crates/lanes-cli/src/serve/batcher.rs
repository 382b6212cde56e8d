//! The inference workers and dynamic batching.
//!
//! Each worker is a dedicated OS thread holding one lane lease for its whole
//! life. It pops the oldest queued job (already tokenized by the handler), then
//! (dynamic batching) pops the oldest queued jobs that fit the pass it is
//! forming (within the padded token budget, `texts × longest text`, and with
//! little padding) until the pass is full or the oldest job it holds has waited
//! `max_wait`. Jobs that do not fit stay queued for other workers. It runs one
//! forward pass and splits the vectors back to each job. A job too large (or too
//! mixed in length) for one pass runs over several passes on the same worker. A
//! failed or panicking pass that mixed several jobs is re-run job by job, so an
//! inference error fails only the request that caused it.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use lanes::Lease;
use lanes_nn::{Embedding, Encoder, Tokens};
use tokio::sync::oneshot;

use super::metrics::Metrics;
use super::plan::{fits, panic_message, plan, BatchConfig, Fault, Item};
use super::queue::{Job, Queue, Reply};

/// Starts `n` workers, each with its own lane; returns once every one holds its
/// lease (or the first failure to get one).
pub fn spawn_workers(
    n: usize,
    encoder: &Arc<Encoder>,
    queue: &Arc<Queue>,
    config: &BatchConfig,
    metrics: &Arc<Metrics>,
) -> Result<Vec<JoinHandle<()>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (encoder, queue, config, metrics) = (
            encoder.clone(),
            queue.clone(),
            config.clone(),
            metrics.clone(),
        );
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("lanes-serve-{i}"))
            .spawn(move || {
                let lease = match encoder.device().lease() {
                    Ok(lease) => lease,
                    Err(e) => {
                        let _ = ready.send(Err(format!("worker {i} cannot lease a lane: {e}")));
                        return;
                    }
                };
                let _ = ready.send(Ok(lease.index()));
                drop(ready);
                Worker::new(lease, encoder, queue, config, metrics).run();
            })
            .with_context(|| format!("cannot start worker thread {i}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(_lane)) => {}
            Ok(Err(e)) => return Err(anyhow!(e)),
            Err(_) => return Err(anyhow!("a worker thread exited before leasing a lane")),
        }
    }
    Ok(handles)
}

/// A job a worker has taken from the queue and not yet answered.
struct Active {
    reply: oneshot::Sender<Reply>,
    results: Vec<Option<Embedding>>,
    remaining: usize,
    enqueued: Instant,
}

/// Counts a worker as alive until it is dropped (also when unwinding).
struct AliveGuard(Arc<Metrics>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.workers_alive.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Worker {
    lease: Lease,
    encoder: Arc<Encoder>,
    queue: Arc<Queue>,
    config: BatchConfig,
    metrics: Arc<Metrics>,
    active: HashMap<u64, Active>,
    pending: VecDeque<Item>,
    next_id: u64,
}

impl Worker {
    fn new(
        lease: Lease,
        encoder: Arc<Encoder>,
        queue: Arc<Queue>,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Worker {
        Worker {
            lease,
            encoder,
            queue,
            config,
            metrics,
            active: HashMap::new(),
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Serves until the queue is closed and drained. A panic that escapes a
    /// forward pass's own guard (a bug in the bookkeeping) fails the jobs this
    /// worker holds and the worker goes on.
    fn run(mut self) {
        self.metrics.workers_alive.fetch_add(1, Ordering::SeqCst);
        let _alive = AliveGuard(self.metrics.clone());
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve())) {
                Ok(()) => return,
                Err(panic) => {
                    self.metrics.worker_panics.fetch_add(1, Ordering::Relaxed);
                    let msg = format!("internal error in the worker: {}", panic_message(&*panic));
                    eprintln!(
                        "lanes serve: {msg}; failing {} request(s) and going on",
                        self.active.len()
                    );
                    self.pending.clear();
                    let n = self.active.len();
                    self.metrics.jobs_in_workers.fetch_sub(n, Ordering::SeqCst);
                    for (_, job) in self.active.drain() {
                        let _ = job.reply.send(Err(msg.clone()));
                    }
                }
            }
        }
    }

    fn serve(&mut self) {
        loop {
            while self.pending.is_empty() {
                match self.queue.pop(None) {
                    Some(job) => self.admit(job),
                    None => return,
                }
            }
            if self.config.batching {
                let oldest = self
                    .pending
                    .front()
                    .and_then(|i| self.active.get(&i.job))
                    .map(|a| a.enqueued);
                let deadline = oldest.unwrap_or_else(Instant::now) + self.config.max_wait;
                loop {
                    let next = plan(&self.pending, &self.config);
                    // Holding more than one pass already, or a full pass: run it.
                    if next.picked.len() < self.pending.len()
                        || next.padded() >= self.config.max_batch_tokens
                    {
                        break;
                    }
                    // Wait only while requests are on their way (read, parsed or
                    // queued, not held by a worker): a lone client never waits.
                    let wait_until = if self.metrics.requests_on_the_way() > 0 {
                        deadline
                    } else {
                        Instant::now()
                    };
                    let config = &self.config;
                    match self
                        .queue
                        .pop_where(Some(wait_until), |job| fits(&next, job, config))
                    {
                        Some(job) => self.admit(job),
                        None => break,
                    }
                }
            }
            let batch = self.take_batch();
            if !batch.is_empty() {
                self.run_batch(batch);
            }
        }
    }

    /// Adds `job`'s texts to the pending items (or drops it if its client left).
    fn admit(&mut self, job: Job) {
        if job.reply.is_closed() {
            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = job.seqs.len();
        if n == 0 {
            let _ = job.reply.send(Ok(Vec::new()));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for (row, seq) in job.seqs.into_iter().enumerate() {
            self.pending.push_back(Item {
                job: id,
                row,
                ids: seq.ids,
                types: seq.types,
                fault: seq.fault,
            });
        }
        let active = Active {
            reply: job.reply,
            results: vec![None; n],
            remaining: n,
            enqueued: job.enqueued,
        };
        self.active.insert(id, active);
        self.metrics.jobs_in_workers.fetch_add(1, Ordering::SeqCst);
    }

    fn take_batch(&mut self) -> Vec<Item> {
        let picked = plan(&self.pending, &self.config).picked;
        let mut batch = Vec::with_capacity(picked.len());
        let mut rest = VecDeque::with_capacity(self.pending.len() - picked.len());
        let mut next = picked.iter().peekable();
        for (i, item) in self.pending.drain(..).enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                batch.push(item);
            } else {
                rest.push_back(item);
            }
        }
        self.pending = rest;
        batch
    }

    fn run_batch(&mut self, batch: Vec<Item>) {
        // Skip the texts of jobs failed meanwhile (there are none today, but a
        // job's items are never run once it has been answered).
        let batch: Vec<Item> = batch
            .into_iter()
            .filter(|i| self.active.contains_key(&i.job))
            .collect();
        if batch.is_empty() {
            return;
        }
        match self.forward(&batch) {
            Ok(vectors) => self.deliver(batch, vectors),
            Err(msg) => {
                let mut jobs: Vec<u64> = Vec::new();
                for item in &batch {
                    if !jobs.contains(&item.job) {
                        jobs.push(item.job);
                    }
                }
                if jobs.len() == 1 {
                    self.fail(jobs[0], msg);
                    return;
                }
                // Several requests shared the pass: find the one that failed it.
                let mut by_job: Vec<(u64, Vec<Item>)> =
                    jobs.iter().map(|&j| (j, Vec::new())).collect();
                for item in batch {
                    if let Some((_, items)) = by_job.iter_mut().find(|(j, _)| *j == item.job) {
                        items.push(item);
                    }
                }
                for (job, items) in by_job {
                    match self.forward(&items) {
                        Ok(vectors) => self.deliver(items, vectors),
                        Err(msg) => self.fail(job, msg),
                    }
                }
            }
        }
    }

    /// One forward pass over `items`; errors and panics become a message.
    fn forward(&self, items: &[Item]) -> std::result::Result<Vec<Embedding>, String> {
        let metrics = &self.metrics;
        let longest = items.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        metrics.workers_busy.fetch_add(1, Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(
            || -> std::result::Result<Vec<Embedding>, String> {
                for item in items {
                    match item.fault {
                        Some(Fault::Error) => return Err("inference failed: injected fault".into()),
                        Some(Fault::Panic) => panic!("injected panic in a forward pass"),
                        Some(Fault::Sleep(d)) => std::thread::sleep(d),
                        None => {}
                    }
                }
                let seqs: Vec<(Vec<u32>, Vec<u32>)> = items
                    .iter()
                    .map(|i| (i.ids.clone(), i.types.clone()))
                    .collect();
                let enc = Tokens::from_sequences(&seqs)
                    .map_err(|e| format!("cannot form a batch: {e}"))?;
                let flat = self
                    .encoder
                    .forward(&self.lease, &enc)
                    .map_err(|e| format!("inference failed: {e}"))?;
                let hidden = self.encoder.config().hidden_size;
                if hidden == 0 || flat.len() != items.len() * hidden {
                    return Err(format!(
                        "the model returned {} values for {} texts",
                        flat.len(),
                        items.len()
                    ));
                }
                Ok(flat
                    .chunks_exact(hidden)
                    .zip(items)
                    .map(|(v, item)| Embedding {
                        tokens: item.ids.len(),
                        vector: v.to_vec(),
                    })
                    .collect())
            },
        ));
        metrics.workers_busy.fetch_sub(1, Ordering::Relaxed);
        metrics.batches.fetch_add(1, Ordering::Relaxed);
        metrics.batch_texts.observe(items.len() as f64);
        metrics.batch_tokens.observe((items.len() * longest) as f64);
        let result = match result {
            Ok(r) => r,
            Err(panic) => {
                metrics.worker_panics.fetch_add(1, Ordering::Relaxed);
                Err(format!("inference panicked: {}", panic_message(&*panic)))
            }
        };
        match &result {
            Ok(_) => {
                metrics
                    .texts
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                let tokens: usize = items.iter().map(|i| i.ids.len()).sum();
                metrics.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
            }
            Err(_) => {
                metrics.batch_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn deliver(&mut self, items: Vec<Item>, vectors: Vec<Embedding>) {
        for (item, emb) in items.into_iter().zip(vectors) {
            let Some(job) = self.active.get_mut(&item.job) else {
                continue;
            };
            if let Some(slot) = job.results.get_mut(item.row) {
                if slot.replace(emb).is_none() {
                    job.remaining -= 1;
                }
            }
            if job.remaining == 0 {
                if let Some(job) = self.active.remove(&item.job) {
                    self.metrics.jobs_in_workers.fetch_sub(1, Ordering::SeqCst);
                    let results: Option<Vec<Embedding>> = job.results.into_iter().collect();
                    let reply = results
                        .ok_or_else(|| "internal error: a text got no embedding".to_string());
                    let _ = job.reply.send(reply);
                }
            }
        }
    }

    /// Answers job `id` with an error and drops its texts still pending.
    fn fail(&mut self, id: u64, msg: String) {
        self.pending.retain(|i| i.job != id);
        if let Some(job) = self.active.remove(&id) {
            self.metrics.jobs_in_workers.fetch_sub(1, Ordering::SeqCst);
            let _ = job.reply.send(Err(msg));
        }
    }
}
