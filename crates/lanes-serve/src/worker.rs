//! The inference workers: OS threads, each holding one lane lease for its
//! whole life, taking batches from the [`Queue`] and running one forward pass
//! per batch. A failed (or panicking) pass that mixed several requests is
//! re-run request by request, so an inference error fails only the request
//! that caused it; a failed request's other queued rows are dropped.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

use lanes::Lease;
use lanes_nn::{Embedding, Encoder, Tokens};

use crate::error::ServeError;
use crate::input::{Fault, Seq};
use crate::metrics::EngineMetrics;
use crate::queue::{BatchRule, Queue, Row};

/// What every worker shares.
#[derive(Clone)]
pub struct Shared {
    /// The model.
    pub encoder: Arc<Encoder>,
    /// Where batches come from.
    pub queue: Arc<Queue>,
    /// How batches are formed.
    pub rule: BatchRule,
    /// Counters.
    pub metrics: Arc<EngineMetrics>,
    /// Requests being prepared (a partial batch may wait for them).
    pub arriving: Arc<AtomicUsize>,
}

/// Starts `n` workers; returns once each holds its lane, or the first failure.
pub fn spawn(n: usize, shared: &Shared) -> Result<Vec<JoinHandle<()>>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("lanes-serve-{i}"))
            .spawn(move || {
                let lease = match shared.encoder.device().lease() {
                    Ok(lease) => lease,
                    Err(e) => {
                        let _ = ready.send(Err(format!("worker {i} cannot lease a lane: {e}")));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                drop(ready);
                run(&lease, &shared);
            })
            .map_err(|e| format!("cannot start worker thread {i}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a worker thread exited before leasing a lane".into()),
        }
    }
    Ok(handles)
}

/// Counts a worker as alive until dropped (also when unwinding).
struct Alive(Arc<EngineMetrics>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.workers_alive.dec();
    }
}

fn run(lease: &Lease, shared: &Shared) {
    shared.metrics.workers_alive.inc();
    let _alive = Alive(shared.metrics.clone());
    while let Some(batch) = shared.queue.take(&shared.rule, &shared.arriving) {
        let batch: Vec<Row> = batch
            .into_iter()
            .filter(|r| !r.completion.is_dead())
            .collect();
        if batch.is_empty() {
            continue;
        }
        // A panic outside the guarded forward pass (bookkeeping) fails this
        // batch's requests; the worker goes on.
        let ids: Vec<(u64, Arc<crate::completion::Completion>)> =
            batch.iter().map(|r| (r.id, r.completion.clone())).collect();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run_batch(lease, shared, batch))) {
            shared.metrics.worker_panics.inc();
            let msg = format!("internal error in the worker: {}", panic_message(&*panic));
            for (id, c) in ids {
                c.fail(ServeError::Inference(msg.clone()));
                shared.queue.cancel(id);
            }
        }
    }
}

fn run_batch(lease: &Lease, shared: &Shared, batch: Vec<Row>) {
    let seqs: Vec<&Seq> = batch.iter().map(|r| &r.seq).collect();
    match forward(lease, shared, &seqs) {
        Ok(vectors) => deliver(batch, vectors),
        Err(msg) => {
            let mut groups: Vec<(u64, Vec<Row>)> = Vec::new();
            for row in batch {
                match groups.iter_mut().find(|(id, _)| *id == row.id) {
                    Some((_, rows)) => rows.push(row),
                    None => groups.push((row.id, vec![row])),
                }
            }
            if groups.len() == 1 {
                let (id, rows) = groups.remove(0);
                fail(shared, id, &rows, msg);
                return;
            }
            // Several requests shared the pass: find the one that failed it.
            for (id, rows) in groups {
                let seqs: Vec<&Seq> = rows.iter().map(|r| &r.seq).collect();
                match forward(lease, shared, &seqs) {
                    Ok(vectors) => deliver(rows, vectors),
                    Err(msg) => fail(shared, id, &rows, msg),
                }
            }
        }
    }
}

fn deliver(rows: Vec<Row>, vectors: Vec<Embedding>) {
    for (row, emb) in rows.into_iter().zip(vectors) {
        row.completion.deliver(row.row, emb);
    }
}

fn fail(shared: &Shared, id: u64, rows: &[Row], msg: String) {
    if let Some(r) = rows.first() {
        r.completion.fail(ServeError::Inference(msg));
    }
    shared.queue.cancel(id);
}

/// One forward pass; errors and panics become a message.
fn forward(lease: &Lease, shared: &Shared, seqs: &[&Seq]) -> Result<Vec<Embedding>, String> {
    let m = &shared.metrics;
    let tokens: usize = seqs.iter().map(|s| s.ids.len()).sum();
    m.workers_busy.inc();
    let result = catch_unwind(AssertUnwindSafe(|| {
        for s in seqs {
            match s.fault {
                Some(Fault::Error) => return Err("inference failed: injected fault".to_string()),
                Some(Fault::Panic) => panic!("injected panic in a forward pass"),
                Some(Fault::Sleep(d)) => std::thread::sleep(d),
                None => {}
            }
        }
        encode(&shared.encoder, lease, seqs)
    }));
    m.workers_busy.dec();
    m.batches.inc();
    m.batch_texts.observe(seqs.len() as f64);
    m.batch_tokens.observe(tokens as f64);
    let result = result.unwrap_or_else(|panic| {
        m.worker_panics.inc();
        Err(format!("inference panicked: {}", panic_message(&*panic)))
    });
    match &result {
        Ok(_) => {
            m.texts.inc_by(seqs.len() as u64);
            m.tokens.inc_by(tokens as u64);
        }
        Err(_) => m.batch_failures.inc(),
    }
    result
}

/// Runs the encoder on `seqs`; one embedding per sequence.
fn encode(encoder: &Encoder, lease: &Lease, seqs: &[&Seq]) -> Result<Vec<Embedding>, String> {
    // One packed batch: the sequences back to back, no padding.
    let total = seqs.iter().map(|s| s.ids.len()).sum();
    let mut tokens = Tokens::with_capacity(seqs.len(), total);
    for s in seqs {
        tokens
            .push(&s.ids, &s.types)
            .map_err(|e| format!("cannot form a batch: {e}"))?;
    }
    // The raw means: each request's `finish` normalizes (or not) as it asked.
    let flat = encoder
        .forward_mean(lease, &tokens)
        .map_err(|e| format!("inference failed: {e}"))?;
    let hidden = encoder.config().hidden_size;
    if hidden == 0 || flat.len() != seqs.len() * hidden {
        return Err(format!(
            "the model returned {} values for {} texts",
            flat.len(),
            seqs.len()
        ));
    }
    Ok(flat
        .chunks_exact(hidden)
        .zip(seqs)
        .map(|(v, s)| Embedding {
            tokens: s.ids.len(),
            vector: v.to_vec(),
        })
        .collect())
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}
