//! What a purchase attempt came to, read from the HTTP status and the JSON
//! `status` field of the answer (see the purchase table of the API). The
//! outcomes themselves are part of the report ([`crate::model::Outcome`]).

use hyper::StatusCode;
use serde::Deserialize;

use crate::model::Outcome;

/// The fields of a purchase answer the harness looks at.
#[derive(Debug, Default, Deserialize)]
pub struct AnswerBody {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub order_id: Option<String>,
    #[serde(default)]
    pub quantity: Option<u32>,
    /// Why a refusal was made (429's `no_token`, `address_limit`, ...).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A classified answer: the outcome, and for errors a short description.
#[derive(Debug)]
pub struct Classified {
    pub outcome: Outcome,
    pub body: AnswerBody,
    /// Why an answer counts as [`Outcome::Error`].
    pub error: Option<String>,
}

/// Classifies an HTTP answer. The JSON `status` decides, and must agree
/// with the HTTP code the API gives it; anything else is an error.
pub fn classify(code: StatusCode, body: &[u8]) -> Classified {
    let parsed: Option<AnswerBody> = serde_json::from_slice(body).ok();
    let Some(body) = parsed else {
        return Classified {
            outcome: Outcome::Error,
            body: AnswerBody::default(),
            error: Some(format!("HTTP {} with a non-JSON body", code.as_u16())),
        };
    };
    let status = body.status.as_deref().unwrap_or("");
    let expected = match status {
        "success" => Some((Outcome::Success, 200)),
        "sold_out" => Some((Outcome::SoldOut, 410)),
        "rate_limited" => Some((Outcome::RateLimited, 429)),
        "limit_exceeded" => Some((Outcome::LimitExceeded, 403)),
        "rejected" => Some((Outcome::Rejected, 403)),
        "overloaded" => Some((Outcome::Overloaded, 503)),
        "timeout" => Some((Outcome::Timeout, 504)),
        "pending" => Some((Outcome::Pending, 202)),
        _ => None,
    };
    match expected {
        Some((outcome, c)) if c == code.as_u16() => Classified {
            outcome,
            body,
            error: None,
        },
        _ => {
            let error = format!("HTTP {} {}", code.as_u16(), short(status));
            Classified {
                outcome: Outcome::Error,
                body,
                error: Some(error),
            }
        }
    }
}

/// Keeps error descriptions short and bounded in variety.
fn short(status: &str) -> String {
    let s: String = status.chars().take(32).collect();
    if s.is_empty() {
        "(no status)".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let c = classify(
            StatusCode::OK,
            br#"{"status":"success","request_id":"r1","order_id":"o1","quantity":1}"#,
        );
        assert_eq!(c.outcome, Outcome::Success);
        assert_eq!(c.body.order_id.as_deref(), Some("o1"));
        let c = classify(StatusCode::GONE, br#"{"status":"sold_out","error":"x"}"#);
        assert_eq!(c.outcome, Outcome::SoldOut);
        let c = classify(StatusCode::GATEWAY_TIMEOUT, br#"{"status":"timeout"}"#);
        assert_eq!(c.outcome, Outcome::Timeout);
        let c = classify(StatusCode::FORBIDDEN, br#"{"status":"limit_exceeded"}"#);
        assert_eq!(c.outcome, Outcome::LimitExceeded);
    }

    #[test]
    fn disagreements_and_garbage_are_errors() {
        let c = classify(StatusCode::OK, br#"{"status":"sold_out"}"#);
        assert_eq!(c.outcome, Outcome::Error);
        assert_eq!(c.error.as_deref(), Some("HTTP 200 sold_out"));
        let c = classify(StatusCode::NOT_FOUND, br#"{"status":"not_found"}"#);
        assert_eq!(c.outcome, Outcome::Error);
        let c = classify(StatusCode::OK, b"hello");
        assert_eq!(c.outcome, Outcome::Error);
    }
}
