//! What a purchase attempt came to, read from the HTTP status and the JSON
//! `status` field of the answer (see the purchase table of the API).

use std::fmt;

use hyper::StatusCode;
use serde::Deserialize;

/// The outcome of one request, as the client saw it. The order ranks
/// them for a buyer with several clicks: the smallest is the best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// 200 `success`: a unit was reserved.
    Success,
    /// 410 `sold_out`.
    SoldOut,
    /// 429 `rate_limited`: no token, or the per-user edge limit.
    RateLimited,
    /// 403 `limit_exceeded`: the user already holds the per-user limit.
    LimitExceeded,
    /// 403 `rejected`: refused by risk control.
    Rejected,
    /// 503 `overloaded`: queue full or store unreachable.
    Overloaded,
    /// 504 `timeout`: no result before the deadline.
    Timeout,
    /// 202 `pending`: a repeat of an idempotency key still in flight.
    Pending,
    /// An HTTP answer outside the contract (wrong code, unknown status,
    /// unparsable body, 400, 404, 409, 500...).
    Error,
    /// No HTTP answer at all: connection refused or dropped, or the
    /// client's own timeout. Every one of these fails the audit.
    NoAnswer,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Success,
        Outcome::SoldOut,
        Outcome::RateLimited,
        Outcome::LimitExceeded,
        Outcome::Rejected,
        Outcome::Overloaded,
        Outcome::Timeout,
        Outcome::Pending,
        Outcome::Error,
        Outcome::NoAnswer,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The name used in reports and assertions (the API's `status` value
    /// where there is one).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::SoldOut => "sold_out",
            Outcome::RateLimited => "rate_limited",
            Outcome::LimitExceeded => "limit_exceeded",
            Outcome::Rejected => "rejected",
            Outcome::Overloaded => "overloaded",
            Outcome::Timeout => "timeout",
            Outcome::Pending => "pending",
            Outcome::Error => "error",
            Outcome::NoAnswer => "no_answer",
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Position in [`Outcome::ALL`], for per-outcome arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Answers a client may retry after a backoff.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Outcome::RateLimited | Outcome::Timeout | Outcome::Overloaded
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

    #[test]
    fn names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.name()), Some(o));
            assert_eq!(Outcome::ALL[o.index()], o);
        }
    }
}
