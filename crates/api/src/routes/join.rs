//! `POST /api/join`: what a participant needs to connect: signaling URL, our own STUN/TURN
//! servers with short-lived TURN REST credentials, and the ICE transport policy.

use axum::Json;
use axum::extract::State;
use hermes_proto::api::{IceServer, JoinResponse};
use hermes_proto::{CallEvent, TurnCredentials};
use hermes_service::unix_now;

use crate::config::Settings;
use crate::error::ApiError;
use crate::extract::{Bearer, ClientIp};
use crate::state::AppState;

const ROUTE: &str = "/api/join";

/// `host` as it goes into a URL (IPv6 literals in brackets).
fn url_host(host: &str) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Our STUN server, then our TURN server (UDP, TCP, and TLS when configured) with credentials.
/// Nothing external: no public STUN server is ever listed.
pub fn ice_servers(settings: &Settings, credentials: TurnCredentials) -> Vec<IceServer> {
    let host = url_host(&settings.turn_host);
    let port = settings.turn_port;
    let mut turn = vec![
        format!("turn:{host}:{port}?transport=udp"),
        format!("turn:{host}:{port}?transport=tcp"),
    ];
    if settings.turn_tls {
        turn.push(format!(
            "turns:{host}:{}?transport=tcp",
            settings.turns_port
        ));
    }
    vec![
        IceServer {
            urls: vec![format!("stun:{host}:{port}")],
            credentials: None,
        },
        IceServer {
            urls: turn,
            credentials: Some(credentials),
        },
    ]
}

pub async fn join(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    bearer: Result<Bearer, ApiError>,
) -> Result<Json<JoinResponse>, ApiError> {
    let limits = [state.request_limit(&ip)];
    let claims = match bearer {
        Ok(Bearer(claims)) => claims,
        Err(e) => {
            // Refused requests count against the per-IP limit too.
            state
                .limiter
                .check(state.redis_raw(), &limits, &state.metrics)
                .await
                .map_err(|r| state.rate_limited(r, ROUTE))?;
            return Err(e);
        }
    };
    let status = state
        .calls
        .join_status(state.guard(), &limits, &claims.cid)
        .await
        .map_err(|e| state.store_err(e, ROUTE))?;
    match status.as_deref() {
        None => return Err(ApiError::CallNotFound),
        Some("ended") => return Err(ApiError::CallEnded),
        Some(_) => {}
    }
    let settings = &state.settings;
    let now = unix_now();
    let credentials = TurnCredentials::mint(
        settings.turn_secret.expose(),
        claims.pid.as_str(),
        now,
        settings.turn_ttl_secs,
    );
    tracing::info!(call = %claims.cid.short(), participant = %claims.pid.short(), role = %claims.role, "participant joined");
    state.events.publish(
        Some(&claims.cid),
        CallEvent::CallJoined {
            participant_id: claims.pid.clone(),
            role: claims.role,
        },
    );
    Ok(Json(JoinResponse {
        call_id: claims.cid,
        participant_id: claims.pid,
        role: claims.role,
        signal_url: settings.signal_url.clone(),
        ice_servers: ice_servers(settings, credentials),
        ice_transport_policy: settings.ice_policy,
    }))
}
