//! `/healthz` (process up), `/readyz` (Redis answers PING, on the connection of durable writes
//! too when it has one of its own), `/metrics`, `/api/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let redis = state.redis()?;
    let durable_ready = match state.durable_twin() {
        Some(twin) => hermes_service::redis::is_ready(twin).await,
        None => true,
    };
    if durable_ready && hermes_service::redis::is_ready(redis).await {
        Ok(Json(json!({ "status": "ready" })))
    } else {
        state.metrics.redis_errors.inc();
        Err(ApiError::Unavailable)
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, hermes_service::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}
