//! hermes-api: the REST API of Hermes (calls, one-time codes, join tokens, TURN credentials),
//! with all state in Redis so any number of replicas can run behind the proxy.
//!
//! Map: [`config`] (flags/env → [`config::Settings`]), [`state`] (shared state), [`store`] (the typed call store and its Lua scripts),
//! [`routes`] (thin handlers), [`extract`] (JSON body, bearer token, client IP),
//! [`error`] (the one error type and its HTTP mapping), [`ratelimit`] (pure window rule, Redis
//! script, in-process fallback), [`client_ip`] (trusted-proxy rule), [`metrics`], [`openapi`].
//!
//! Invariant: tokens, codes and TURN passwords never reach a log line or log event.

pub mod client_ip;
pub mod config;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod state;
pub mod store;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hermes_service::shutdown::CancellationToken;
use http::{HeaderValue, Method, header};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::{Config, Settings};
use error::ApiError;
use extract::ClientIp;
pub use state::AppState;

/// How long `run` waits for the first Redis connection before serving anyway (requests then
/// get 503 until Redis is reachable).
const REDIS_FIRST_CONNECT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("Redis configuration: {0}")]
    Redis(#[from] fred::error::Error),
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/call/create", post(routes::call::create))
        .route("/api/call/resolve", post(routes::call::resolve))
        .route("/api/join", post(routes::join::join))
        .route("/api/call/end", post(routes::call::end))
        .route("/api/call/code", post(routes::call::new_code))
        .route("/api/call/{callId}", get(routes::call::status))
        .route("/api/openapi.json", get(routes::health::openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), api_guard));
    let origins: Vec<HeaderValue> = state
        .settings
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .allow_credentials(false)
        .max_age(Duration::from_secs(600));
    Router::new()
        .merge(api)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(cors)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Count and time every request by route template and status.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| metrics::route_index(p.as_str()))
        .unwrap_or(metrics::ROUTES.len() - 1);
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .record(route, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// On every /api route: refuse oversized bodies early, work out the client IP, apply the
/// per-IP request limit.
async fn api_guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let max = state.settings.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return ApiError::PayloadTooLarge(max).into_response();
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(Ipv4Addr::UNSPECIFIED.into());
    let ip = client_ip::client_ip(
        peer,
        req.headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok()),
        &state.settings.trusted_proxies,
    );
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    // These routes apply the per-IP limit themselves, in the same Redis round trip as
    // their state operation.
    let deferred = matches!(
        route.as_str(),
        "/api/call/create" | "/api/call/resolve" | "/api/join" | "/api/call/code"
    );
    if !deferred
        && let Err(rejected) = state
            .limiter
            .check(
                state.redis_raw(),
                &[state.request_limit(&ip)],
                &state.metrics,
            )
            .await
    {
        return state.rate_limited(rejected, &route).into_response();
    }
    req.extensions_mut().insert(ClientIp(ip));
    next.run(req).await
}

/// Serve on an already bound listener until `shutdown` fires, then drain.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr}");
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    tracing::info!("drained, exiting");
    Ok(())
}

/// Connect to Redis, bind `settings.listen`, serve until `shutdown`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    let redis = hermes_service::redis::connect(&settings.redis_url, REDIS_FIRST_CONNECT).await?;
    let listener = TcpListener::bind(settings.listen).await?;
    let state = state::Inner::new(settings, redis);
    serve(listener, state, shutdown).await
}
