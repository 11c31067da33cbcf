//! The flash-sale gateway.
//!
//! Each purchase request is validated, checked against the local copy of
//! its sale (no I/O), held to a per-user edge limit, given a token from the
//! sale's bucket or refused at once, recorded, queued, and parked until the
//! seckill service's result comes back through the callback, or its
//! deadline passes.
//!
//! [`Gateway::serve`] runs the public API, the admin API and the gRPC
//! callback server on listeners bound by the caller, on the [`Stores`] the
//! caller opened; [`run_embedded`] adds the seckill workers, for the whole
//! sale in one process, and [`run_distributed`] leaves them to
//! `seckill-service` processes that call back over gRPC.

#![forbid(unsafe_code)]

mod admin;
pub mod answer;
mod catalog;
mod client;
pub mod config;
mod grpc;
pub mod identity;
mod limiter;
mod line;
mod lockout;
mod metrics;
mod public;
mod signatures;
mod waiters;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seckill_inventory::{InventoryError, Put, SaleEvent, SaleSpec, SaleStatus};
use seckill_ops::http::{serve as serve_http, ServerLimits};
use seckill_service::{Callback, GrpcCallback, Service, ServiceConfig};
use seckill_stores::Stores;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

pub use config::{Args, GatewayConfig};
pub use metrics::describe as describe_metrics;

use catalog::Catalog;
use limiter::EdgeLimiter;
use metrics::GatewayMetrics;
use waiters::Waiters;

/// The three listeners of a gateway, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
    pub grpc: TcpListener,
}

impl Listeners {
    pub async fn bind(
        public: std::net::SocketAddr,
        admin: std::net::SocketAddr,
        grpc: std::net::SocketAddr,
    ) -> std::io::Result<Self> {
        Ok(Listeners {
            public: TcpListener::bind(public).await?,
            admin: TcpListener::bind(admin).await?,
            grpc: TcpListener::bind(grpc).await?,
        })
    }
}

/// State shared by the gateway's handlers.
pub(crate) struct Shared {
    pub config: GatewayConfig,
    pub stores: Stores,
    pub catalog: Catalog,
    pub waiters: Waiters,
    pub limiter: EdgeLimiter,
    pub metrics: GatewayMetrics,
    /// Set when shutdown began: new purchases are refused.
    pub draining: AtomicBool,
    /// Cancelled when shutdown began: ends the order feed's long polls.
    pub stopping: CancellationToken,
}

/// A gateway, ready to serve.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Loads the catalog from the inventory and creates the demo sale if
    /// configured (a demo sale that exists already is left as it is).
    pub async fn new(config: GatewayConfig, stores: Stores) -> Result<Self, InventoryError> {
        let metrics = GatewayMetrics::new();
        config.identity.announce();
        let shared = Arc::new(Shared {
            waiters: Waiters::new(config.max_waiters),
            limiter: EdgeLimiter::new(config.user_rate_per_sec, config.user_burst)
                .with_address_limit(config.ip_rate_per_sec, config.ip_burst),
            metrics,
            catalog: Catalog::new(config.max_sales),
            draining: AtomicBool::new(false),
            stopping: CancellationToken::new(),
            config,
            stores,
        });
        let gateway = Gateway { shared };
        if let Some(spec) = gateway.shared.config.demo_sale.clone() {
            if gateway
                .shared
                .stores
                .inventory
                .sale(&spec.sale_id)
                .await?
                .is_none()
            {
                gateway.put_sale(spec).await?;
            }
        }
        sync_all(&gateway.shared).await?;
        Ok(gateway)
    }

    /// Creates or replaces a sale, and makes it live on this gateway at once.
    pub async fn put_sale(&self, spec: SaleSpec) -> Result<Put, InventoryError> {
        put_sale(&self.shared, spec).await
    }

    /// The in-process callback, for a seckill service in the same process.
    pub fn local_callback(&self) -> Arc<dyn Callback> {
        Arc::new(grpc::LocalCallback(self.shared.clone()))
    }

    /// Requests waiting for their result now.
    pub fn waiting(&self) -> usize {
        self.shared.waiters.len()
    }

    /// Serves until `shutdown` fires, then drains: the public listener stops
    /// accepting, waiting requests are answered (the callback server stays
    /// up meanwhile), and connections close, within the shutdown grace.
    pub async fn serve(self, listeners: Listeners, shutdown: CancellationToken) {
        let shared = self.shared;
        let cfg = &shared.config;
        let limits = ServerLimits {
            max_connections: cfg.max_connections,
            max_connections_per_ip: cfg.max_connections_per_ip,
            header_read_timeout: cfg.header_read_timeout,
            max_buf_size: 16 * 1024,
            // Long enough for every parked request to reach its deadline.
            drain_grace: cfg
                .shutdown_grace
                .max(cfg.request_timeout + cfg.reply_grace + Duration::from_secs(1)),
        };
        let grpc_stop = CancellationToken::new();
        let grpc = tokio::spawn(grpc::serve(
            shared.clone(),
            listeners.grpc,
            grpc_stop.clone(),
        ));
        let sync = tokio::spawn(sync_loop(shared.clone(), grpc_stop.clone()));
        let admin = {
            let s = shared.clone();
            tokio::spawn(serve_http(
                listeners.admin,
                move |req| admin::handle(s.clone(), req),
                ServerLimits {
                    max_connections: 256,
                    ..limits
                },
                shutdown.clone(),
            ))
        };
        let public = {
            let s = shared.clone();
            serve_http(
                listeners.public,
                move |req| public::handle(s.clone(), req),
                limits,
                shutdown.clone(),
            )
        };
        let draining = {
            let s = shared.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                s.draining.store(true, Ordering::Release);
                s.stopping.cancel();
                tracing::info!(waiting = s.waiters.len(), "draining");
            }
        };
        tokio::join!(public, draining);
        grpc_stop.cancel();
        let _ = tokio::join!(admin, grpc, sync);
    }
}

/// Creates or replaces a sale in the inventory and installs it locally.
pub(crate) async fn put_sale(shared: &Shared, spec: SaleSpec) -> Result<Put, InventoryError> {
    // A new sale takes room under --max-sales: checked and taken in one
    // step, so concurrent creations cannot overshoot together.
    let _creating = shared.catalog.creating.lock().await;
    if shared.catalog.is_lost(&spec.sale_id) {
        return Err(InventoryError::Conflict(format!(
            "the store lost sale {}: restore the store from its backup, or acknowledge the loss \
             with DELETE /admin/v1/sales/{} before creating it again",
            spec.sale_id, spec.sale_id
        )));
    }
    if !shared.catalog.has_room_for(&spec.sale_id) {
        return Err(InventoryError::Conflict(format!(
            "this gateway serves at most {} live sales (--max-sales); remove one first",
            shared.catalog.max_sales()
        )));
    }
    let put = shared.stores.inventory.put_sale(spec.clone()).await?;
    sync_one(shared, &spec.sale_id).await?;
    // Full from this moment for every gateway, not after the generator's
    // first ticks (which would fill it too, so a failure only delays it).
    if let Some(sale) = shared.catalog.get(&spec.sale_id) {
        if let Err(e) = sale.bucket.open().await {
            tracing::warn!(sale = %spec.sale_id, error = %e, "cannot open the token bucket");
        }
    }
    Ok(put)
}

/// Changes a live sale in the inventory and installs the change locally.
pub(crate) async fn update_sale(
    shared: &Shared,
    spec: SaleSpec,
) -> Result<SaleStatus, InventoryError> {
    let status = shared.stores.inventory.update_sale(spec).await?;
    sync_one(shared, &status.spec.sale_id).await?;
    Ok(status)
}

/// Refreshes one sale from the inventory (installing, replacing or removing it).
async fn sync_one(shared: &Shared, sale_id: &str) -> Result<(), InventoryError> {
    match shared.stores.inventory.sale(sale_id).await? {
        Some(status) => install(shared, &status).await,
        None => gone_from_store(shared, sale_id).await,
    }
    Ok(())
}

/// Installs or updates one sale in the catalog from the store's status.
pub(crate) async fn install(shared: &Shared, status: &SaleStatus) {
    if shared.catalog.upsert(status, &*shared.stores.buckets) {
        open_queue(shared, &status.spec).await;
    }
}

/// A local sale the store no longer lists: removed by an operator (its
/// removal is recorded), or lost with the store's data (Redis came back
/// empty, keys evicted). A lost sale is refused, never created anew by
/// accident: its units may have been sold already.
async fn gone_from_store(shared: &Shared, sale_id: &str) {
    if !shared.catalog.contains(sale_id) {
        return;
    }
    match shared.stores.inventory.removed(sale_id).await {
        Ok(true) => remove_local(shared, sale_id).await,
        Ok(false) => {
            if shared.catalog.mark_lost(sale_id) {
                tracing::error!(
                    sale = %sale_id,
                    "the store lost this sale's data; refusing it until the store is restored \
                     or the loss acknowledged"
                );
                let _ = shared.stores.queue.close(sale_id).await;
            }
        }
        // The store cannot say now: the next resynchronisation asks again.
        Err(e) => tracing::debug!(sale = %sale_id, error = %e, "cannot tell a removal from a loss"),
    }
}

/// Brings the whole catalog in line with the inventory: one listing, and
/// per sale only what changed (a new or changed definition, the stock
/// gauge when the stock moved). Queue depths need nothing here: the queues
/// publish their own.
/// Units of a sale came back: read it now (after the release) and sell
/// again if units are left.
async fn released(shared: &Shared, sale_id: &str) -> Result<(), InventoryError> {
    if let (Some(entry), Some(status)) = (
        shared.catalog.get(sale_id),
        shared.stores.inventory.sale(sale_id).await?,
    ) {
        if status.remaining() > 0 && entry.spec == status.spec {
            entry.mark_available(status.remaining());
        }
    }
    Ok(())
}

async fn sync_all(shared: &Shared) -> Result<(), InventoryError> {
    let sales = shared.stores.inventory.sales().await?;
    let mut refused = 0usize;
    for status in &sales {
        if !shared.catalog.has_room_for(&status.spec.sale_id) {
            refused += 1;
            continue;
        }
        if shared.catalog.upsert(status, &*shared.stores.buckets) {
            open_queue(shared, &status.spec).await;
        }
    }
    if refused > 0 {
        tracing::warn!(
            refused,
            max_sales = shared.catalog.max_sales(),
            "more live sales than --max-sales; those beyond it are not served here"
        );
    }
    let live: HashSet<&str> = sales.iter().map(|s| s.spec.sale_id.as_str()).collect();
    for id in shared.catalog.ids() {
        if !live.contains(id.as_str()) {
            gone_from_store(shared, &id).await;
        }
    }
    Ok(())
}

async fn open_queue(shared: &Shared, spec: &SaleSpec) {
    if let Err(e) = shared
        .stores
        .queue
        .open(&spec.sale_id, spec.queue_capacity)
        .await
    {
        tracing::warn!(sale = %spec.sale_id, error = %e, "cannot open the request queue");
    }
}

async fn remove_local(shared: &Shared, sale_id: &str) {
    if shared.catalog.remove(sale_id) {
        // Its series leave /metrics with it (see metrics.rs).
        let _ = shared.stores.queue.close(sale_id).await;
    }
}

/// Sales the periodic resynchronisation reads from the store per second,
/// on average: a catalog of up to this many resyncs every second, a larger
/// one proportionally less often, so the store sees a bounded load however
/// many sales there are. Changes arrive as events in the meantime.
const RESYNC_SALES_PER_SEC: usize = 1000;

/// Time until the next full resynchronisation of a catalog of `sales`.
fn resync_period(sales: usize) -> Duration {
    Duration::from_secs(1).max(Duration::from_millis(
        (sales as u64).saturating_mul(1000) / RESYNC_SALES_PER_SEC as u64,
    ))
}

/// Follows the inventory's sale events (each handled alone), sweeps the
/// edge limiter every second, and resynchronises the whole catalog at the
/// pace of [`resync_period`] to cover missed events.
async fn sync_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut events = shared.stores.inventory.events();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_resync = tokio::time::Instant::now() + resync_period(shared.catalog.len());
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                // Sweeping the edge limiter walks every recent user: off the
                // runtime's threads, so no connection waits behind it.
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || s.limiter.sweep()).await;
                if tokio::time::Instant::now() >= next_resync {
                    let result = sync_all(&shared).await;
                    next_resync =
                        tokio::time::Instant::now() + resync_period(shared.catalog.len());
                    result
                } else {
                    Ok(())
                }
            }
            ev = events.recv() => match ev {
                Ok(SaleEvent::SoldOut(id)) => {
                    if let Some(e) = shared.catalog.get(&id) {
                        e.mark_sold_out();
                    }
                    Ok(())
                }
                Ok(SaleEvent::Changed(id) | SaleEvent::Removed(id)) => sync_one(&shared, &id).await,
                Ok(SaleEvent::Released(id)) => released(&shared, &id).await,
                Err(RecvError::Lagged(_)) => sync_all(&shared).await,
                Err(RecvError::Closed) => {
                    events = shared.stores.inventory.events();
                    Ok(())
                }
            },
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "catalog sync failed; retrying");
        }
    }
}

/// The distributed mode: this gateway on the shared stores in Redis, until
/// `shutdown` fires and it drained; the seckill services run as processes
/// of their own and call back over gRPC.
pub async fn run_distributed(
    listeners: Listeners,
    config: GatewayConfig,
    stores: Stores,
    shutdown: CancellationToken,
) -> Result<(), InventoryError> {
    let gateway = Gateway::new(config, stores).await?;
    gateway.serve(listeners, shutdown).await;
    Ok(())
}

/// Options of the embedded mode that tests and drills change.
#[derive(Clone, Debug, Default)]
pub struct EmbeddedOptions {
    /// Send results over real gRPC to this gateway's own callback server
    /// instead of in-process (exercises the distributed path in one process).
    pub callback_over_grpc: bool,
}

/// The embedded mode: this gateway and the seckill workers in one process,
/// on `stores`, until `shutdown` fires and everything drained.
pub async fn run_embedded(
    listeners: Listeners,
    config: GatewayConfig,
    stores: Stores,
    service: ServiceConfig,
    options: EmbeddedOptions,
    shutdown: CancellationToken,
) -> Result<(), InventoryError> {
    let mut config = config;
    // Over gRPC the gateway calls back to itself: with the configured
    // token, or one of its own that nothing outside this process knows.
    let grpc_token = options.callback_over_grpc.then(|| {
        config.callback_token.clone().unwrap_or_else(|| {
            seckill_service::callback::CallbackToken::new(config::random_token())
                .expect("32 hex digits are a valid token")
        })
    });
    config.callback_token = grpc_token.clone();
    let gateway = Gateway::new(config, stores.clone()).await?;
    let callback: Arc<dyn Callback> = match &grpc_token {
        Some(token) => Arc::new(GrpcCallback::new(Duration::from_secs(2), token)),
        None => gateway.local_callback(),
    };
    let workers = CancellationToken::new();
    let service = Service::new(stores.queue, stores.inventory, callback, service);
    let service = tokio::spawn(service.run(workers.clone()));
    // The workers outlive the gateway's drain, so every parked request
    // gets its real result before the process goes.
    gateway.serve(listeners, shutdown).await;
    workers.cancel();
    let _ = service.await;
    Ok(())
}
