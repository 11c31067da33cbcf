//! Wire types and gRPC stubs of the `seckill.v1` API (`seckill/v1/*.proto`
//! beside this crate).
//!
//! The gateway serves `seckill.v1.Callback`; the seckill service is its
//! client. This crate holds generated code only: each side converts between
//! the wire types and the project's own types where the bytes cross the
//! process (the gRPC client in `seckill-service`, the server in `gateway`).

#![forbid(unsafe_code)]

/// Generated code of package `seckill.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("seckill.v1");
}
