//! The seckill service: consumes the request queue at its own pace, drops
//! requests whose deadline has passed, runs risk control, decides the
//! purchases in the inventory's atomic step, and reports each result to the
//! gateway that holds the buyer's connection.
//!
//! The service never pulls faster than its workers can decide: the queue,
//! not the service, absorbs a spike.

#![forbid(unsafe_code)]

mod args;
pub mod callback;
pub mod metrics;
pub mod risk;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use seckill_inventory::Inventory;
use seckill_ops::http::{
    healthz, json, metrics_response, readyz, serve, HttpResponse, ServerLimits,
};
use seckill_queue::RequestQueue;
use seckill_stores::Stores;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use args::{Args, ServiceArgs};
pub use callback::{Callback, CallbackError, GrpcCallback};
pub use risk::{RiskConfig, RiskControl};

/// How the worker pool runs.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Concurrent workers, each deciding one batch at a time.
    pub workers: usize,
    /// Most entries one worker takes and decides at once.
    pub batch_size: usize,
    /// How long an idle worker waits for entries before looking again.
    pub poll_wait: Duration,
    /// Deliveries after which an entry is dead-lettered and its request
    /// given a definite failure.
    pub max_deliveries: u32,
    /// Extra time spent on every batch, standing in for downstream work;
    /// zero in production, used for drills and tests of a slow backend.
    pub work_delay: Duration,
    pub risk: RiskConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            workers: 4,
            batch_size: 64,
            poll_wait: Duration::from_millis(200),
            max_deliveries: 5,
            work_delay: Duration::ZERO,
            risk: RiskConfig::default(),
        }
    }
}

/// What the workers share.
pub struct Service {
    pub(crate) queue: Arc<dyn RequestQueue>,
    pub(crate) inventory: Arc<dyn Inventory>,
    pub(crate) callback: Arc<dyn Callback>,
    pub(crate) risk: RiskControl,
    pub(crate) config: ServiceConfig,
    pub(crate) metrics: metrics::ServiceMetrics,
}

impl Service {
    pub fn new(
        queue: Arc<dyn RequestQueue>,
        inventory: Arc<dyn Inventory>,
        callback: Arc<dyn Callback>,
        config: ServiceConfig,
    ) -> Arc<Self> {
        Arc::new(Service {
            queue,
            inventory,
            callback,
            risk: RiskControl::new(config.risk.clone()),
            config,
            metrics: metrics::ServiceMetrics::new(),
        })
    }

    /// Runs the worker pool until `shutdown` fires. Each worker finishes
    /// the batch in hand (results recorded, callback attempted, entries
    /// acknowledged) before it stops.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let workers: Vec<_> = (0..self.config.workers.max(1))
            .map(|id| tokio::spawn(worker::run(self.clone(), id, shutdown.clone())))
            .collect();
        for w in workers {
            if let Err(e) = w.await {
                tracing::error!(error = %e, "seckill worker failed");
            }
        }
    }
}

/// Why the service process stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the worker pool stopped by itself")]
    WorkersStopped,
}

/// The `seckill-service` process: the worker pool on `stores`, and the
/// operational endpoints on `admin`, until `shutdown` fires. Then each
/// worker finishes the batch in hand within `grace` (entries still
/// unacknowledged after it are reclaimed by another instance), and the
/// admin listener closes last, so readiness stays observable meanwhile.
pub async fn run(
    admin: TcpListener,
    stores: Stores,
    callback: Arc<dyn Callback>,
    config: ServiceConfig,
    grace: Duration,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let admin_stop = CancellationToken::new();
    let admin = {
        let stores = stores.clone();
        tokio::spawn(serve(
            admin,
            move |req| {
                let stores = stores.clone();
                async move { ops(req.method(), req.uri().path(), &stores).await }
            },
            ServerLimits {
                max_connections: 256,
                drain_grace: Duration::from_secs(1),
                ..ServerLimits::default()
            },
            admin_stop.clone(),
        ))
    };
    let service = Service::new(stores.queue, stores.inventory, callback, config);
    let mut workers = tokio::spawn(service.run(shutdown.clone()));
    let result = tokio::select! {
        _ = shutdown.cancelled() => {
            if tokio::time::timeout(grace, workers).await.is_err() {
                tracing::warn!(
                    "batches still in hand after the shutdown grace; another instance reclaims them"
                );
            }
            Ok(())
        }
        // Workers that stop because shutdown began (they can finish before
        // this select sees the signal) stopped as asked.
        _ = &mut workers => {
            if shutdown.is_cancelled() {
                Ok(())
            } else {
                Err(RunError::WorkersStopped)
            }
        }
    };
    admin_stop.cancel();
    let _ = admin.await;
    result
}

/// The service's admin listener: `/metrics`, `/healthz`, `/readyz`.
async fn ops(method: &Method, path: &str, stores: &Stores) -> HttpResponse {
    match (method, path) {
        (&Method::GET, "/metrics") => metrics_response(),
        (&Method::GET, "/healthz") => healthz(),
        (&Method::GET, "/readyz") => readyz(stores.ready().await),
        (_, "/metrics" | "/healthz" | "/readyz") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"status":"method_not_allowed","error":"method not allowed"}"#,
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"status":"not_found","error":"no such endpoint"}"#,
        ),
    }
}
