//! `POST /api/call/create`, `POST /api/call/resolve`, `GET /api/call/{callId}`,
//! `POST /api/call/end`, `POST /api/call/code` (a participant's fresh code for its own call).

use axum::Json;
use axum::extract::{Path, State};
use hermes_proto::api::{
    CallStatusResponse, CreateCallResponse, NewCodeResponse, ResolveRequest, ResolveResponse,
};
use hermes_proto::{CallEvent, CallId, JoinClaims, OneTimeCode, ParticipantId, Role, keys};
use hermes_service::unix_now;
use http::StatusCode;

use crate::error::ApiError;
use crate::extract::{Bearer, ClientIp, JsonBody};
use crate::state::{AppState, Inner};
use crate::store::{Claimed, CodeFor, Ended, Resolved};

const ROUTE_CREATE: &str = "/api/call/create";
const ROUTE_RESOLVE: &str = "/api/call/resolve";
const ROUTE_NEW_CODE: &str = "/api/call/code";
const ROUTE_STATUS: &str = "/api/call/{callId}";
const ROUTE_END: &str = "/api/call/end";

fn sign(state: &Inner, call: &CallId, participant: ParticipantId, role: Role, now: u64) -> String {
    let claims = JoinClaims::new(
        call.clone(),
        participant,
        role,
        now,
        state.settings.token_ttl_secs,
        &mut rand::rng(),
    );
    state.tokens.sign(&claims)
}

pub async fn create(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
) -> Result<(StatusCode, Json<CreateCallResponse>), ApiError> {
    let now = unix_now();
    let call = CallId::random(&mut rand::rng());
    // The request counts once, on the first attempt, in the same script that claims the code.
    let limits = [state.request_limit(&ip)];
    let what = CodeFor::NewCall {
        call: &call,
        now,
        code_ttl: state.settings.code_ttl,
        call_ttl: state.settings.call_ttl,
    };
    let (code, claimed) = state
        .calls
        .claim_code(state.guard(), &limits, what)
        .await
        .map_err(|e| state.store_err(e, ROUTE_CREATE))?;
    if claimed != Claimed::Stored {
        tracing::error!("unexpected reply from the create script");
        return Err(ApiError::Internal);
    }
    let offerer = ParticipantId::random(&mut rand::rng());
    tracing::info!(call = %call.short(), participant = %offerer.short(), "call created");
    state.events.publish(
        Some(&call),
        CallEvent::CallCreated {
            participant_id: offerer.clone(),
            role: Role::Offerer,
        },
    );
    let token = sign(&state, &call, offerer, Role::Offerer, now);
    Ok((
        StatusCode::CREATED,
        Json(CreateCallResponse {
            call_id: call,
            code: code.as_str().to_owned(),
            token,
            code_expires_at: now + state.settings.code_ttl.as_secs(),
        }),
    ))
}

pub async fn resolve(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    body: Result<JsonBody<ResolveRequest>, ApiError>,
) -> Result<Json<ResolveResponse>, ApiError> {
    // Every attempt counts against the per-IP limits, malformed or not; the per-code limit
    // needs a code. Limits and the code's consumption share one Redis round trip.
    let code = body
        .as_ref()
        .ok()
        .and_then(|JsonBody(req)| OneTimeCode::parse(&req.code).ok());
    let settings = &state.settings;
    let mut limits = vec![
        state.request_limit(&ip),
        (keys::rl_ip(&ip, "resolve"), settings.resolve_ip_limit),
    ];
    let Some(code) = code else {
        state
            .limiter
            .check(state.redis_raw(), &limits, &state.metrics)
            .await
            .map_err(|r| state.rate_limited(r, ROUTE_RESOLVE))?;
        let JsonBody(req) = body?;
        return Err(OneTimeCode::parse(&req.code)
            .err()
            .map_or(ApiError::Internal, ApiError::from));
    };
    limits.push((
        keys::rl_code(&code.keyed_hash(&state.code_hash_key)),
        settings.resolve_code_limit,
    ));
    let found = state
        .calls
        .resolve(state.guard(), &limits, &code)
        .await
        .map_err(|e| state.store_err(e, ROUTE_RESOLVE))?;
    let Some(Resolved { call, status, role }) = found else {
        tracing::info!("resolve of an unknown or used code");
        state.events.publish(None, CallEvent::CodeNotFound {});
        return Err(ApiError::CodeNotFound);
    };
    match status.as_deref() {
        None => return Err(ApiError::CallNotFound),
        Some("ended") => return Err(ApiError::CallEnded),
        _ => {}
    }
    let now = unix_now();
    let joiner = ParticipantId::random(&mut rand::rng());
    tracing::info!(call = %call.short(), participant = %joiner.short(), "code resolved");
    state.events.publish(
        Some(&call),
        CallEvent::CallResolved {
            participant_id: joiner.clone(),
            role,
        },
    );
    let token = sign(&state, &call, joiner, role, now);
    Ok(Json(ResolveResponse {
        call_id: call,
        token,
    }))
}

/// The call's status, or 404 when its record is gone.
async fn load_status(state: &Inner, call: &CallId) -> Result<CallStatusResponse, ApiError> {
    state
        .calls
        .load(state.redis()?, call)
        .await
        .map_err(|e| state.store_err(e, ROUTE_STATUS))?
        .ok_or(ApiError::CallNotFound)
}

pub async fn status(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    Path(call_id): Path<String>,
) -> Result<Json<CallStatusResponse>, ApiError> {
    let call = CallId::parse(&call_id)?;
    if call != claims.cid {
        return Err(ApiError::WrongCall);
    }
    load_status(&state, &call).await.map(Json)
}

pub async fn end(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
) -> Result<Json<CallStatusResponse>, ApiError> {
    let call = claims.cid;
    let ended = state
        .calls
        .end(state.redis()?, &call, unix_now(), "api")
        .await
        .map_err(|e| state.store_err(e, ROUTE_END))?;
    match ended {
        Ended::NoSuchCall => return Err(ApiError::CallNotFound),
        Ended::Now => {
            tracing::info!(call = %call.short(), by = %claims.pid.short(), "call ended");
            state.events.publish(
                Some(&call),
                CallEvent::CallEnded {
                    participant_id: Some(claims.pid.clone()),
                    role: Some(claims.role),
                    reason: "api".to_owned(),
                },
            );
        }
        Ended::Already => {}
    }
    load_status(&state, &call).await.map(Json)
}

/// A fresh one-time code for the caller's own live call, so a participant can invite again
/// (the first code expired, or the other person closed their tab for good). The code admits
/// the role the caller does not have. Limited per call (`newcode`) and per IP (`req`), in the
/// same round trip that stores the code.
pub async fn new_code(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Bearer(claims): Bearer,
) -> Result<(StatusCode, Json<NewCodeResponse>), ApiError> {
    let call = claims.cid;
    let seat = match claims.role {
        Role::Offerer => Role::Answerer,
        Role::Answerer => Role::Offerer,
        // Observers watch; they do not hand out seats.
        Role::Observer => return Err(ApiError::WrongCall),
    };
    let limits = [
        state.request_limit(&ip),
        (
            keys::rl_call(&call, "newcode"),
            state.settings.new_code_limit,
        ),
    ];
    let what = CodeFor::Invite {
        call: &call,
        seat,
        code_ttl: state.settings.code_ttl,
    };
    let (code, claimed) = state
        .calls
        .claim_code(state.guard(), &limits, what)
        .await
        .map_err(|e| state.store_err(e, ROUTE_NEW_CODE))?;
    match claimed {
        Claimed::Stored => {}
        Claimed::CallEnded => return Err(ApiError::CallEnded),
        Claimed::CallNotFound => return Err(ApiError::CallNotFound),
    }
    tracing::info!(call = %call.short(), by = %claims.pid.short(), "new code");
    state.events.publish(
        Some(&call),
        CallEvent::CodeMinted {
            participant_id: claims.pid.clone(),
            role: claims.role,
        },
    );
    Ok((
        StatusCode::CREATED,
        Json(NewCodeResponse {
            call_id: call,
            code: code.as_str().to_owned(),
            code_expires_at: unix_now() + state.settings.code_ttl.as_secs(),
        }),
    ))
}
