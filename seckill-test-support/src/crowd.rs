//! Many concurrent clients from a fixed set of tasks.

use std::future::Future;
use std::sync::{Arc, Mutex};

/// Runs `f` on every item, at most `limit` at a time, and returns the
/// results in the items' order.
///
/// The work is done by `limit` worker tasks that take the next item when
/// they finish one. Spawning a task per item instead parks thousands of
/// tasks in the runtime's queue ahead of the HTTP client's own connection
/// tasks; on a busy machine a connection the server has already accepted
/// then waits seconds for its first request, and the server's header read
/// timeout closes it under a request: a lost answer the server never caused.
pub async fn crowd<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send,
{
    let total = items.len();
    let queue = Arc::new(Mutex::new(items.into_iter().enumerate()));
    let workers: Vec<_> = (0..limit.clamp(1, total.max(1)))
        .map(|_| {
            let (queue, f) = (queue.clone(), f.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some((i, item)) = next else { break };
                    done.push((i, f(item).await));
                }
                done
            })
        })
        .collect();
    let mut slots: Vec<Option<R>> = (0..total).map(|_| None).collect();
    for w in workers {
        for (i, r) in w.await.expect("a crowd worker panicked") {
            slots[i] = Some(r);
        }
    }
    slots
        .into_iter()
        .map(|r| r.expect("every item is done"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::crowd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_order_and_the_limit() {
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, p) = (now.clone(), peak.clone());
        let out = crowd((0..200u64).collect(), 7, move |i| {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200 - i)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                i * 2
            }
        })
        .await;
        assert_eq!(out, (0..200u64).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 7);
        assert!(crowd(Vec::<u8>::new(), 4, |i| async move { i })
            .await
            .is_empty());
    }
}
