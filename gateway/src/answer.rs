//! The answers of the purchase API: each `status` of `docs/API.md` with its HTTP
//! code, and the JSON bodies.

use std::sync::LazyLock;

use bytes::Bytes;
use hyper::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::StatusCode;
use seckill_inventory::Outcome;
use seckill_ops::http::{json, HttpResponse};
use serde::Serialize;

/// The `status` of a purchase answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    Pending,
    BadRequest,
    LimitExceeded,
    Rejected,
    NotFound,
    NotStarted,
    Ended,
    Paused,
    SoldOut,
    TooLarge,
    RateLimited,
    Overloaded,
    Timeout,
    Unauthorized,
    Forbidden,
}

impl Status {
    /// In declaration order: `status as usize` indexes it.
    pub const ALL: [Status; 16] = [
        Status::Success,
        Status::Pending,
        Status::BadRequest,
        Status::LimitExceeded,
        Status::Rejected,
        Status::NotFound,
        Status::NotStarted,
        Status::Ended,
        Status::Paused,
        Status::SoldOut,
        Status::TooLarge,
        Status::RateLimited,
        Status::Overloaded,
        Status::Timeout,
        Status::Unauthorized,
        Status::Forbidden,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Pending => "pending",
            Status::BadRequest => "bad_request",
            Status::LimitExceeded => "limit_exceeded",
            Status::Rejected => "rejected",
            Status::NotFound => "not_found",
            Status::NotStarted => "not_started",
            Status::Ended => "ended",
            Status::Paused => "paused",
            Status::SoldOut => "sold_out",
            Status::TooLarge => "too_large",
            Status::RateLimited => "rate_limited",
            Status::Overloaded => "overloaded",
            Status::Timeout => "timeout",
            Status::Unauthorized => "unauthorized",
            Status::Forbidden => "forbidden",
        }
    }

    pub fn code(self) -> StatusCode {
        match self {
            Status::Success => StatusCode::OK,
            Status::Pending => StatusCode::ACCEPTED,
            Status::BadRequest => StatusCode::BAD_REQUEST,
            Status::LimitExceeded | Status::Rejected | Status::Forbidden => StatusCode::FORBIDDEN,
            Status::Unauthorized => StatusCode::UNAUTHORIZED,
            Status::NotFound => StatusCode::NOT_FOUND,
            Status::NotStarted | Status::Ended | Status::Paused => StatusCode::CONFLICT,
            Status::SoldOut => StatusCode::GONE,
            Status::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Status::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Status::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Status::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The status a final outcome is answered with.
    pub fn of(outcome: &Outcome) -> Status {
        match outcome {
            Outcome::Success { .. } => Status::Success,
            Outcome::SoldOut => Status::SoldOut,
            Outcome::LimitExceeded => Status::LimitExceeded,
            Outcome::Rejected { .. } => Status::Rejected,
            // The service dropped it at its deadline: to the client that is
            // a timeout, and no stock was taken.
            Outcome::Expired => Status::Timeout,
        }
    }

    fn message(self) -> Option<&'static str> {
        Some(match self {
            Status::Success | Status::Pending => return None,
            Status::BadRequest => "bad request",
            Status::LimitExceeded => "this user already holds the per-user limit for this sale",
            Status::Rejected => "refused by risk control",
            Status::NotFound => "no such sale",
            Status::NotStarted => "the sale has not started",
            Status::Ended => "the sale has ended",
            Status::Paused => "the sale is paused; try again later",
            Status::SoldOut => "sold out",
            Status::TooLarge => "request body over 4 KiB",
            Status::RateLimited => "too many requests; try again later",
            Status::Overloaded => "overloaded; try again later",
            Status::Timeout => {
                "no result before the deadline; poll GET /api/v1/requests/{request_id}"
            }
            Status::Unauthorized => "the buyer's identity is missing or invalid",
            Status::Forbidden => "user_id is not the authenticated buyer",
        })
    }
}

/// The JSON body of a purchase answer.
#[derive(Serialize, Default)]
pub struct Answer<'a> {
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sale_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// `fifo`: the buyer's place in line (1 = the next token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// `fifo`: the estimated wait for that place's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
    /// `fifo`: how long the buyer waited in line for its token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// `Retry-After` in seconds, when it is not the default 1.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl<'a> Answer<'a> {
    /// An answer with `status`'s name and standard message.
    pub fn of(status: Status) -> Self {
        Answer {
            status: status.name(),
            error: status.message(),
            ..Default::default()
        }
    }

    /// The answer for a request's final outcome.
    pub fn outcome(outcome: &'a Outcome, request_id: &'a str) -> Self {
        let mut a = Answer::of(Status::of(outcome));
        a.request_id = Some(request_id);
        match outcome {
            Outcome::Success { order_id } => a.order_id = Some(order_id),
            Outcome::Rejected { reason } => a.reason = Some(reason),
            _ => {}
        }
        a
    }

    pub fn error(mut self, message: &'a str) -> Self {
        self.error = Some(message);
        self
    }

    pub fn request_id(mut self, request_id: &'a str) -> Self {
        self.request_id = Some(request_id);
        self
    }

    /// Which of a status's causes it was (`docs/API.md` names them).
    pub fn reason(mut self, reason: &'a str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// A `fifo` refusal's place in line and its estimated wait; the
    /// client is told to come back when that wait would be over.
    pub fn estimate(mut self, position: u64, eta_ms: u64) -> Self {
        self.position = Some(position);
        self.eta_ms = Some(eta_ms);
        // Whole seconds, rounded to the nearest (at least 1).
        self.retry_after = Some(((eta_ms + 500) / 1000).max(1));
        self
    }

    /// The HTTP response: JSON body, `Retry-After` where the client should
    /// come back, and a `WWW-Authenticate` challenge on a 401.
    pub fn into_response(self, status: Status) -> HttpResponse {
        let body = serde_json::to_vec(&self).expect("answers serialize");
        respond(status, Bytes::from(body), self.retry_after)
    }

    /// The answer of `status` with its standard message and nothing else
    /// (`Answer::of(status).into_response(status)`), its body serialized
    /// once per process: the refusals a sale answers most cost no
    /// serialization and no allocation for their body.
    pub fn fixed(status: Status) -> HttpResponse {
        static BODIES: LazyLock<Vec<Bytes>> = LazyLock::new(|| {
            Status::ALL
                .iter()
                .map(|&s| {
                    Bytes::from(serde_json::to_vec(&Answer::of(s)).expect("answers serialize"))
                })
                .collect()
        });
        respond(status, BODIES[status as usize].clone(), None)
    }

    /// `429` `no_token`, the most common answer of a sale, as
    /// [`Answer::fixed`] makes the others.
    pub fn no_token() -> HttpResponse {
        static BODY: LazyLock<Bytes> = LazyLock::new(|| {
            let answer = Answer::of(Status::RateLimited).reason("no_token");
            Bytes::from(serde_json::to_vec(&answer).expect("answers serialize"))
        });
        respond(Status::RateLimited, BODY.clone(), None)
    }
}

fn respond(status: Status, body: Bytes, retry_after: Option<u64>) -> HttpResponse {
    let mut resp = json(status.code(), body);
    if matches!(status, Status::RateLimited | Status::Overloaded) {
        let value = match retry_after {
            Some(secs) => HeaderValue::from(secs),
            None => HeaderValue::from_static("1"),
        };
        resp.headers_mut().insert(RETRY_AFTER, value);
    }
    if status == Status::Unauthorized {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// A JSON error body for the non-purchase endpoints.
pub fn error(code: StatusCode, status: &str, message: &str) -> HttpResponse {
    let body = serde_json::to_vec(&Answer {
        status,
        error: Some(message),
        ..Default::default()
    })
    .expect("answers serialize");
    json(code, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn parts(resp: HttpResponse) -> (StatusCode, Vec<(String, String)>, Bytes) {
        let status = resp.status();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    /// The prebuilt answers are byte for byte the ones built per request.
    #[tokio::test]
    async fn fixed_answers_are_the_answers() {
        for status in Status::ALL {
            assert_eq!(
                parts(Answer::fixed(status)).await,
                parts(Answer::of(status).into_response(status)).await,
                "{status:?}"
            );
        }
        let s = Status::RateLimited;
        let (code, headers, body) = parts(Answer::no_token()).await;
        assert_eq!(
            (code, headers, body),
            parts(Answer::of(s).reason("no_token").into_response(s)).await
        );
    }
}
