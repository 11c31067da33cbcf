//! The behavioural suites of the bucket, queue and inventory traits, run
//! against every implementation: memory, the durable embedded store, a
//! single Redis and a three-master Redis Cluster. One test binary, so the suites build and link once.
//!
//! Each single-Redis test starts its own `redis-server`; cluster tests share
//! one cluster while any of them runs, each with its own sale ids.

mod suites {
    pub mod bucket;
    pub mod failure;
    pub mod harness;
    pub mod inventory;
    pub mod queue;
}
