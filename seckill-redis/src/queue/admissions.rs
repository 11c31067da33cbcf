//! Admissions of one sale, many per script.
//!
//! A spike admits thousands of requests a second into one sale, and a
//! script call costs Redis far more than the few commands inside it. So a
//! gateway runs at most one admission script per sale at a time: a request
//! that finds none running starts one for itself at once (no added
//! latency when it is alone), and the requests that arrive while it runs
//! wait and go together in the next one, in arrival order. Under load the
//! batches grow with the round trip, and Redis sees one call per batch.
//!
//! The script runs in a task of its own, so a caller that gives up (its
//! deadline, its client gone) neither stops it nor strands the requests
//! behind it. A caller that gives up may still be admitted, as with one
//! script per request; the gateway withdraws it, and the script refuses a
//! request whose store deadline passed before it ran (`!late`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use redis::Script;
use tokio::sync::oneshot;

use super::unavailable;
use crate::{keys, Shared};
use seckill_queue::QueueError;

static ADMIT_ENQUEUE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("admit_enqueue", include_str!("admit_enqueue.lua")));

/// Most requests in one script: bounds its keys, its arguments and the
/// time Redis spends in it.
const MAX_BATCH: usize = 128;

/// One request's part of the script, and where its answer goes.
pub(super) struct Pending {
    pub record: String,
    pub idempotency: String,
    pub keyed: &'static str,
    pub request_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub store_by_ms: u64,
    pub ticket: String,
    pub reply: oneshot::Sender<Result<String, QueueError>>,
}

/// The requests waiting, by sale; a sale is present while its script task
/// runs.
#[derive(Clone, Default)]
pub(super) struct Admissions {
    sales: Arc<Mutex<HashMap<String, Vec<Pending>>>>,
}

impl Admissions {
    /// Runs `pending` in its sale's next script and returns the script's
    /// answer for it (see admit_enqueue.lua).
    pub(super) async fn admit(
        &self,
        shared: &Arc<Shared>,
        sale_id: &str,
        pending: impl FnOnce(oneshot::Sender<Result<String, QueueError>>) -> Pending,
    ) -> Result<String, QueueError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut sales = self.sales.lock().unwrap();
            match sales.get_mut(sale_id) {
                Some(waiting) => {
                    waiting.push(pending(tx));
                    false
                }
                None => {
                    sales.insert(sale_id.to_string(), vec![pending(tx)]);
                    true
                }
            }
        };
        if start {
            let task = Task {
                admissions: self.clone(),
                sale_id: sale_id.to_string(),
                done: false,
            };
            tokio::spawn(task.run(shared.clone()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(QueueError::Unavailable(
                "the admission was dropped before it ran".into(),
            ))
        })
    }
}

/// A sale's script task: runs batches until none is waiting.
struct Task {
    admissions: Admissions,
    sale_id: String,
    /// The task took its sale out of the map itself: another may run now.
    done: bool,
}

impl Task {
    async fn run(mut self, shared: Arc<Shared>) {
        let map = self.admissions.sales.clone();
        loop {
            let batch: Vec<Pending> = {
                let mut sales = map.lock().unwrap();
                if sales.get(&self.sale_id).is_none_or(Vec::is_empty) {
                    sales.remove(&self.sale_id);
                    self.done = true;
                    return;
                }
                let waiting = sales.get_mut(&self.sale_id).expect("present");
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            let mut inv = ADMIT_ENQUEUE.prepare_invoke();
            inv.key(keys::queue_config(&self.sale_id))
                .key(keys::queue(&self.sale_id))
                .arg(shared.retention_ms())
                .arg(batch.len());
            for p in &batch {
                inv.key(&p.record)
                    .key(&p.idempotency)
                    .arg(&p.request_id)
                    .arg(p.keyed)
                    .arg(&p.user_id)
                    .arg(p.quantity)
                    .arg(p.store_by_ms)
                    .arg(&p.ticket);
            }
            let answers: Result<Vec<String>, QueueError> = inv
                .invoke_async(&mut shared.conn.clone())
                .await
                .map_err(unavailable);
            match answers {
                Ok(answers) if answers.len() == batch.len() => {
                    for (p, answer) in batch.into_iter().zip(answers) {
                        let _ = p.reply.send(Ok(answer));
                    }
                }
                Ok(_) => fail(batch, "unexpected admission reply length"),
                Err(QueueError::Unavailable(why)) => fail(batch, &why),
                Err(e) => fail(batch, &e.to_string()),
            }
        }
    }
}

fn fail(batch: Vec<Pending>, why: &str) {
    for p in batch {
        let _ = p.reply.send(Err(QueueError::Unavailable(why.to_string())));
    }
}

impl Drop for Task {
    /// A task that ends in any way (a panic, the runtime going away) takes
    /// its sale's waiting requests with it: their callers hear at once,
    /// and the next request starts a new task.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(mut sales) = self.admissions.sales.lock() {
            sales.remove(&self.sale_id);
        }
    }
}
