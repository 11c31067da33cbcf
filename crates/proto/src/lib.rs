//! Wire types and gRPC stubs of the `seckill.v1` API (`proto/seckill/v1`).
//!
//! The gateway serves `seckill.v1.Callback`; the seckill service is its client.

/// Generated code of package `seckill.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("seckill.v1");
}
