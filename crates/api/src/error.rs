//! The one error type of hermes-api and its one mapping to HTTP.
//!
//! 4xx answers say what was wrong in [`ErrorBody`] (`{"error":{"code","message"}}`); 5xx say
//! only that the service is unavailable or failed, never why (the cause goes to the log, and
//! log lines never hold tokens or codes).

use axum::Json;
use axum::response::{IntoResponse, Response};
use hermes_proto::api::ErrorBody;
use http::{HeaderValue, StatusCode, header};

/// Seconds a client should wait before retrying while Redis is unreachable.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON for this endpoint: {0}")]
    InvalidJson(String),
    #[error("send the body as Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    InvalidCode(String),
    #[error("callId: {0}")]
    InvalidCallId(String),
    #[error("send the join token as `Authorization: Bearer <token>`")]
    MissingToken,
    #[error("the join token is not valid")]
    InvalidToken,
    #[error("the join token has expired")]
    TokenExpired,
    #[error("this token belongs to another call")]
    WrongCall,
    #[error("no such code, or it was already used or has expired")]
    CodeNotFound,
    #[error("no such call, or it has expired")]
    CallNotFound,
    #[error("this call has ended")]
    CallEnded,
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// Redis unreachable or too slow; the cause is logged where it happened.
    #[error("service temporarily unavailable")]
    Unavailable,
    /// A bug or an impossible state; the cause is logged where it happened.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidCode(_) | ApiError::InvalidCallId(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MissingToken | ApiError::InvalidToken | ApiError::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::WrongCall => StatusCode::FORBIDDEN,
            ApiError::CodeNotFound | ApiError::CallNotFound | ApiError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            ApiError::CallEnded => StatusCode::GONE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Machine-readable code in the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid-json",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::InvalidCode(_) => "invalid-code",
            ApiError::InvalidCallId(_) => "invalid-call-id",
            ApiError::MissingToken => "missing-token",
            ApiError::InvalidToken => "invalid-token",
            ApiError::TokenExpired => "token-expired",
            ApiError::WrongCall => "wrong-call",
            ApiError::CodeNotFound => "code-not-found",
            ApiError::CallNotFound => "call-not-found",
            ApiError::CallEnded => "call-ended",
            ApiError::NoRoute => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::RateLimited { .. } => "rate-limited",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// A Redis failure: counted and logged here (Redis errors never contain our values'
    /// secrets: keys hold codes only for `otc:*`, and fred's messages do not echo arguments).
    pub fn redis(e: &fred::error::Error, metrics: &crate::metrics::Metrics) -> Self {
        metrics.redis_errors.inc();
        tracing::warn!(kind = ?e.kind(), "Redis command failed");
        ApiError::Unavailable
    }
}

impl From<hermes_proto::ProtoError> for ApiError {
    fn from(e: hermes_proto::ProtoError) -> Self {
        use hermes_proto::ProtoError as P;
        match e {
            P::TokenExpired => ApiError::TokenExpired,
            P::BadCode { .. } => ApiError::InvalidCode(e.to_string()),
            P::BadId(m) => ApiError::InvalidCallId(m),
            _ => ApiError::InvalidToken,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody::new(self.code(), self.to_string());
        let mut resp = (status, Json(body)).into_response();
        let retry = match &self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            ApiError::Unavailable => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            // Not exact per route, but every route takes one of these.
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_hundreds_hide_details_and_429_has_retry_after() {
        let r = ApiError::Internal.into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = ApiError::RateLimited {
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("7"))
        );
        let r = ApiError::Unavailable.into_response();
        assert_eq!(
            r.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("2"))
        );
    }

    #[test]
    fn proto_errors_map_to_client_errors() {
        let e: ApiError = hermes_proto::OneTimeCode::parse("nope")
            .expect_err("invalid")
            .into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e: ApiError = hermes_proto::ProtoError::TokenExpired.into();
        assert_eq!(e.code(), "token-expired");
        let e: ApiError = hermes_proto::ProtoError::BadToken("sig").into();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }
}
