//! One worker of the pool: take a batch, decide it, report it, acknowledge.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill_inventory::{now_ms, Completion, Decision, Outcome, Purchase};
use seckill_queue::Delivery;
use tokio_util::sync::CancellationToken;

use crate::Service;

/// Why a batch was left unacknowledged.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Inventory(#[from] seckill_inventory::InventoryError),
    #[error(transparent)]
    Queue(#[from] seckill_queue::QueueError),
}

/// Pause after a store error before trying again, so a Redis outage does
/// not turn into a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);

pub(crate) async fn run(service: Arc<Service>, id: usize, shutdown: CancellationToken) {
    let cfg = &service.config;
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = service.queue.next_batch(cfg.batch_size, cfg.poll_wait) => b,
        };
        match batch {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                if let Err(e) = decide(&service, batch).await {
                    tracing::warn!(worker = id, error = %e, "batch left for redelivery");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "cannot read the request queue");
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}

/// Decides one batch. On a store error the batch is not acknowledged, so a
/// queue with redelivery hands it out again; the purchase step is
/// idempotent, so whatever was already decided is not decided twice.
async fn decide(service: &Service, batch: Vec<Delivery>) -> Result<(), BatchError> {
    let started = Instant::now();
    let m = &service.metrics;
    let now = now_ms();
    for d in &batch {
        m.queue_wait
            .record(now.saturating_sub(d.ticket.enqueued_at_ms) as f64 / 1000.0);
    }
    if !service.config.work_delay.is_zero() {
        tokio::time::sleep(service.config.work_delay).await;
    }

    let mut results: Vec<(&Delivery, Decision)> = Vec::with_capacity(batch.len());
    let mut to_buy: Vec<&Delivery> = Vec::with_capacity(batch.len());
    let mut dead: Vec<Delivery> = Vec::new();
    let now = now_ms();
    for d in &batch {
        let p = &d.ticket.purchase;
        // Cheap refusals first: none of them touches stock.
        let settled = if d.deliveries > service.config.max_deliveries {
            dead.push(d.clone());
            Some(rejected("delivery_failed"))
        } else if now > p.deadline_ms {
            Some(Outcome::Expired)
        } else {
            service.risk.check(&p.user_id).map(rejected)
        };
        match settled {
            Some(outcome) => {
                let decision = service.inventory.settle(p, outcome).await?;
                results.push((d, decision));
            }
            None => to_buy.push(d),
        }
    }
    if !to_buy.is_empty() {
        let purchases: Vec<Purchase> = to_buy.iter().map(|d| d.ticket.purchase.clone()).collect();
        let decisions = service.inventory.purchase(&purchases).await?;
        results.extend(to_buy.into_iter().zip(decisions));
    }

    // Report, grouped by the gateway that waits for each result.
    let mut by_gateway: HashMap<&str, Vec<Completion>> = HashMap::new();
    for (d, decision) in &results {
        count(service, decision);
        by_gateway
            .entry(d.ticket.reply_to.as_str())
            .or_default()
            .push(Completion::of(&d.ticket.purchase, decision.outcome.clone()));
    }
    // One call per gateway, concurrently: a slow or dead gateway delays
    // only its own results, by at most the callback deadline.
    let mut calls = tokio::task::JoinSet::new();
    for (addr, results) in by_gateway {
        let (callback, addr) = (service.callback.clone(), addr.to_string());
        let (ok, error) = (m.callback_ok.clone(), m.callback_error.clone());
        calls.spawn(async move {
            let n = results.len() as u64;
            match callback.complete(&addr, results).await {
                Ok(()) => ok.increment(n),
                Err(e) => {
                    // The result is recorded: the client can still read it.
                    error.increment(n);
                    tracing::warn!(error = %e, results = n, "callback failed");
                }
            }
        });
    }
    while calls.join_next().await.is_some() {}

    if !dead.is_empty() {
        service.queue.dead_letter(&dead).await?;
    }
    service.queue.ack(&batch).await?;
    m.process_duration.record(started.elapsed().as_secs_f64());
    Ok(())
}

fn count(service: &Service, decision: &Decision) {
    let m = &service.metrics;
    if decision.duplicate {
        m.duplicate.increment(1);
        return;
    }
    match decision.outcome {
        Outcome::Success { .. } => m.success.increment(1),
        Outcome::SoldOut => m.sold_out.increment(1),
        Outcome::LimitExceeded => m.limit_exceeded.increment(1),
        Outcome::Rejected { .. } => m.rejected.increment(1),
        Outcome::Expired => m.expired.increment(1),
    }
}

fn rejected(reason: &str) -> Outcome {
    Outcome::Rejected {
        reason: reason.to_string(),
    }
}
