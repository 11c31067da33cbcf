//! Wire types and gRPC stubs of the `seckill.v1` API (`proto/seckill/v1`).
//!
//! The gateway serves `seckill.v1.Callback`; the seckill service is its
//! client. The conversions between the wire results and the inventory's
//! outcomes live here, once, for both sides.

#![forbid(unsafe_code)]

use seckill_inventory::{Outcome, Purchase};

/// Generated code of package `seckill.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("seckill.v1");
}

/// The wire form of a request's final outcome.
pub fn result_of(p: &Purchase, outcome: &Outcome) -> pb::RequestResult {
    let (code, order_id, reason) = match outcome {
        Outcome::Success { order_id } => (pb::Outcome::Success, order_id.clone(), String::new()),
        Outcome::SoldOut => (pb::Outcome::SoldOut, String::new(), String::new()),
        Outcome::LimitExceeded => (pb::Outcome::LimitExceeded, String::new(), String::new()),
        Outcome::Rejected { reason } => (pb::Outcome::Rejected, String::new(), reason.clone()),
        Outcome::Expired => (pb::Outcome::Expired, String::new(), String::new()),
    };
    pb::RequestResult {
        request_id: p.request_id.clone(),
        sale_id: p.sale_id.clone(),
        user_id: p.user_id.clone(),
        outcome: code as i32,
        order_id,
        quantity: p.quantity,
        reason,
    }
}

/// The outcome a wire result carries; `None` for an unknown outcome code.
pub fn outcome_of(r: &pb::RequestResult) -> Option<Outcome> {
    Some(match pb::Outcome::try_from(r.outcome).ok()? {
        pb::Outcome::Success => Outcome::Success {
            order_id: r.order_id.clone(),
        },
        pb::Outcome::SoldOut => Outcome::SoldOut,
        pb::Outcome::LimitExceeded => Outcome::LimitExceeded,
        pb::Outcome::Rejected => Outcome::Rejected {
            reason: r.reason.clone(),
        },
        pb::Outcome::Expired => Outcome::Expired,
        pb::Outcome::Unspecified => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        let p = Purchase {
            request_id: "s.1".into(),
            sale_id: "s".into(),
            user_id: "u".into(),
            quantity: 2,
            idempotency_key: None,
            deadline_ms: 0,
        };
        for o in [
            Outcome::Success {
                order_id: "o-1".into(),
            },
            Outcome::SoldOut,
            Outcome::LimitExceeded,
            Outcome::Rejected {
                reason: "blacklisted".into(),
            },
            Outcome::Expired,
        ] {
            let r = result_of(&p, &o);
            assert_eq!(r.quantity, 2);
            assert_eq!(outcome_of(&r), Some(o));
        }
        let mut r = result_of(&p, &Outcome::SoldOut);
        r.outcome = 99;
        assert_eq!(outcome_of(&r), None);
    }
}
