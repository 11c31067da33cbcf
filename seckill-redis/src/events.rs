//! The catalog-event subscription: sale changes, removals and sell-outs
//! published by any process reach every process's local broadcast channel,
//! so each gateway answers 410 for a sold-out sale without touching Redis.
//!
//! Classic pub/sub messages reach every node of a Redis Cluster, so one
//! subscription to any seed node hears them all. A lost subscription is
//! re-established with backoff, rotating through the seed nodes; messages
//! published meanwhile are missed, which the gateways' periodic catalog
//! resynchronisation covers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use redis::aio::PubSub;
use redis::RedisError;
use seckill_inventory::SaleEvent;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The running subscription; dropping it ends the task.
pub(crate) struct Subscriber {
    task: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    /// Subscribes (once, before returning, so no event published after
    /// `connect` is missed) and starts the task that forwards messages.
    pub async fn start(
        urls: Vec<String>,
        channel: String,
        events: broadcast::Sender<SaleEvent>,
        timeout: Duration,
    ) -> Result<Subscriber, RedisError> {
        let first = subscribe(&urls[0], &channel, timeout).await?;
        let task = tokio::spawn(forward(urls, channel, first, events, timeout));
        Ok(Subscriber { task })
    }
}

async fn subscribe(url: &str, channel: &str, timeout: Duration) -> Result<PubSub, RedisError> {
    let client = redis::Client::open(url)?;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribe timed out",
        ))),
    }
}

async fn forward(
    urls: Vec<String>,
    channel: String,
    first: PubSub,
    events: broadcast::Sender<SaleEvent>,
    timeout: Duration,
) {
    let mut pubsub = first;
    let attempts = AtomicUsize::new(0);
    loop {
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            if let Some(event) = parse(&payload) {
                let _ = events.send(event);
            }
        }
        tracing::warn!("catalog event subscription lost; reconnecting");
        // Each attempt tries the next seed node; jitter keeps the gateways
        // that lost Redis together from coming back together.
        let reconnect = || {
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            subscribe(&urls[n % urls.len()], &channel, timeout)
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(MIN_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_jitter()
            .without_max_times();
        match reconnect
            .retry(backoff)
            .notify(|e, _| tracing::debug!(error = %e, "cannot subscribe to catalog events"))
            .await
        {
            Ok(ps) => {
                tracing::info!("catalog event subscription restored");
                pubsub = ps;
            }
            // Unreachable with no limit on attempts; end the task rather
            // than spin.
            Err(e) => {
                tracing::error!(error = %e, "catalog event subscription given up");
                return;
            }
        }
    }
}

/// `changed:ID`, `removed:ID`, `sold_out:ID`, `released:ID`.
pub(crate) fn parse(payload: &str) -> Option<SaleEvent> {
    let (kind, id) = payload.split_once(':')?;
    let id = id.to_string();
    match kind {
        "changed" => Some(SaleEvent::Changed(id)),
        "removed" => Some(SaleEvent::Removed(id)),
        "sold_out" => Some(SaleEvent::SoldOut(id)),
        "released" => Some(SaleEvent::Released(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events() {
        assert_eq!(parse("changed:a"), Some(SaleEvent::Changed("a".into())));
        assert_eq!(parse("removed:b"), Some(SaleEvent::Removed("b".into())));
        assert_eq!(parse("sold_out:c"), Some(SaleEvent::SoldOut("c".into())));
        assert_eq!(parse("released:d"), Some(SaleEvent::Released("d".into())));
        assert_eq!(parse("other:c"), None);
        assert_eq!(parse("nocolon"), None);
    }
}
