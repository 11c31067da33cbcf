//! `loadtest`: proves a flash sale works before the real one.
//!
//! It drives a gateway with an open-model load ([`profile`]): buyers arrive
//! at their scheduled times whatever the gateway does, so the latency it
//! reports from the intended send time is honest about queueing (no
//! coordinated omission). Each answer is classified by outcome
//! ([`outcome`]) into HDR histograms ([`record`]). After the run the sale
//! is audited ([`audit`]): no oversell, every request answered, per-user
//! limits held, and the gateway's order feed agreeing with what buyers
//! were told. The report's data ([`model`]) comes as text ([`summary`]),
//! versioned JSON and a self-contained HTML page ([`html`]); [`assertion`]s
//! on it set the exit code.
//!
//! [`calibrate`] and [`throughput`] serve the benchmarks: a bare hyper
//! server as the yardstick, and a closed-loop maximum-throughput client.

#![forbid(unsafe_code)]

pub mod assertion;
pub mod audit;
pub mod calibrate;
pub mod cli;
pub mod compare;
pub mod connections;
pub mod feed;
pub mod html;
pub mod http;
pub mod jwt;
pub mod model;
pub mod outcome;
pub mod profile;
pub mod progress;
pub mod record;
pub mod run;
pub mod summary;
pub mod throughput;

pub use assertion::Assertion;
pub use model::{AssertionResult, Audit, Outcome, Report};
pub use profile::Profile;
pub use run::{run, RunConfig};
