//! What every binary of the project needs to run as a service, beside its
//! own work: the HTTP/1.1 serve loop with its limits ([`http`]), the
//! operational endpoints `/metrics`, `/healthz` and `/readyz`, the
//! process-wide Prometheus recorder ([`metrics`]), logging, the exit status
//! of a bad option, and the shutdown signal ([`process`]), and distributed
//! traces over OTLP ([`trace`]).
//!
//! Libraries of the project only emit metrics; a binary installs the
//! recorder with [`metrics::install`] before it builds anything that
//! resolves a metric handle.

#![forbid(unsafe_code)]

pub mod http;
pub mod metrics;
pub mod process;
pub mod trace;
