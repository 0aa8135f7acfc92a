//! `POST /api/call/create`, `POST /api/call/resolve`, `GET /api/call/{callId}`,
//! `POST /api/call/end`, `POST /api/call/code` (a participant's fresh code for its own call).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use fred::prelude::*;
use hermes_proto::api::{
    CallStatus, CallStatusResponse, CreateCallResponse, NewCodeResponse, ResolveRequest,
    ResolveResponse,
};
use hermes_proto::signal::CallControl;
use hermes_proto::{CallEvent, CallId, JoinClaims, OneTimeCode, ParticipantId, Role, keys};
use hermes_service::unix_now;
use http::StatusCode;

use crate::error::ApiError;
use crate::extract::{Bearer, ClientIp, JsonBody};
use crate::state::{AppState, Inner};

/// Fresh codes tried before giving up. With 2^30 codes a collision needs millions of live
/// codes; five misses in a row means something else is wrong.
const MAX_CODE_ATTEMPTS: usize = 5;

const ROUTE_CREATE: &str = "/api/call/create";
const ROUTE_RESOLVE: &str = "/api/call/resolve";
const ROUTE_NEW_CODE: &str = "/api/call/code";

/// Suffix of an `otc:{code}` value whose code hands out the offerer's seat (see
/// [`hermes_proto::keys`]); a bare call id hands out the answerer's.
const OFFERER_SEAT: &str = "|offerer";

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
    let code_ttl_ms = state.settings.code_ttl.as_millis().to_string();
    let call_ttl = state.settings.call_ttl.as_secs().max(1).to_string();
    // The request counts once, on the first attempt, in the same script that claims the code.
    let args = [call.to_string(), code_ttl_ms, now.to_string(), call_ttl];
    let limits = vec![state.request_limit(&ip)];
    let (code, reply) = claim_code(
        &state,
        &state.scripts.create,
        limits,
        &call,
        &args,
        ROUTE_CREATE,
    )
    .await?;
    if reply != Some(1) {
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
        .limiter
        .guarded(
            state.redis_raw(),
            &state.scripts.resolve,
            &limits,
            vec![keys::otc(&code)],
            vec![state.call_prefix.clone()],
            &state.metrics,
        )
        .await
        .map_err(|e| state.guard_err(e, ROUTE_RESOLVE))?;
    let found: Vec<String> = found.iter().filter_map(Value::as_string).collect();
    let [call_id, status, seat] = found.as_slice() else {
        tracing::info!("resolve of an unknown or used code");
        state.events.publish(None, CallEvent::CodeNotFound {});
        return Err(ApiError::CodeNotFound);
    };
    let call = CallId::parse(call_id).map_err(|_| {
        tracing::error!("otc entry holds a malformed call id");
        ApiError::Internal
    })?;
    match status.as_str() {
        "" => return Err(ApiError::CallNotFound),
        "ended" => return Err(ApiError::CallEnded),
        _ => {}
    }
    let role = if format!("|{seat}") == OFFERER_SEAT {
        Role::Offerer
    } else {
        Role::Answerer
    };
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

/// Read `call:{id}` and count its media participants and observers apart.
async fn load_status(state: &Inner, call: &CallId) -> Result<CallStatusResponse, ApiError> {
    let redis = state.redis()?;
    let pipeline = redis.pipeline();
    let _: () = pipeline
        .hgetall(keys::call(call))
        .await
        .map_err(|e| state.redis_err(e))?;
    let _: () = pipeline
        .hvals(keys::call_peers(call))
        .await
        .map_err(|e| state.redis_err(e))?;
    let (fields, peers): (HashMap<String, String>, Vec<String>) =
        pipeline.all().await.map_err(|e| state.redis_err(e))?;
    if fields.is_empty() {
        return Err(ApiError::CallNotFound);
    }
    let status = match fields.get("status").map(String::as_str) {
        Some("created") => CallStatus::Created,
        Some("active") => CallStatus::Active,
        Some("ended") => CallStatus::Ended,
        _ => {
            tracing::error!(call = %call.short(), "call record without a known status");
            return Err(ApiError::Internal);
        }
    };
    let num = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    let (mut media, mut observers) = (0u32, 0u32);
    if status != CallStatus::Ended {
        for role in peers.iter().filter_map(|v| keys::peer_entry_role(v)) {
            if role.is_media() {
                media = media.saturating_add(1);
            } else {
                observers = observers.saturating_add(1);
            }
        }
    }
    Ok(CallStatusResponse {
        call_id: call.clone(),
        status,
        created_at: num("createdAt").unwrap_or(0),
        ended_at: num("endedAt"),
        participants: media,
        observers,
    })
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
    let redis = state.redis()?;
    let notice = CallControl::EndCall {
        reason: "api".to_owned(),
    }
    .to_json();
    let ended: i64 = state
        .scripts
        .end
        .run(
            redis,
            vec![keys::call(&call), keys::call_channel(&call)],
            vec![unix_now().to_string(), notice],
        )
        .await
        .map_err(|e| state.redis_err(e))?;
    match ended {
        -1 => return Err(ApiError::CallNotFound),
        1 => {
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
        _ => {}
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
        Role::Offerer => String::new(),
        Role::Answerer => OFFERER_SEAT.to_owned(),
        // Observers watch; they do not hand out seats.
        Role::Observer => return Err(ApiError::WrongCall),
    };
    let value = format!("{call}{seat}");
    let code_ttl_ms = state.settings.code_ttl.as_millis().to_string();
    let limits = vec![
        state.request_limit(&ip),
        (
            keys::rl_call(&call, "newcode"),
            state.settings.new_code_limit,
        ),
    ];
    let args = [value, code_ttl_ms];
    let (code, reply) = claim_code(
        &state,
        &state.scripts.new_code,
        limits,
        &call,
        &args,
        ROUTE_NEW_CODE,
    )
    .await?;
    match reply {
        Some(1) => {}
        Some(-2) => return Err(ApiError::CallEnded),
        Some(-1) => return Err(ApiError::CallNotFound),
        _ => {
            tracing::error!("unexpected reply from the new-code script");
            return Err(ApiError::Internal);
        }
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

/// Stores a fresh random one-time code with `script` (KEYS: `otc:{code}`, the call; ARGV:
/// `args` after the limits), drawing another while the script answers 0 (the code is taken).
/// The limits count once, on the first attempt. Returns the code and the script's answer.
async fn claim_code(
    state: &Inner,
    script: &hermes_service::redis::Script,
    mut limits: Vec<(String, crate::ratelimit::Limit)>,
    call: &CallId,
    args: &[String],
    route: &'static str,
) -> Result<(OneTimeCode, Option<i64>), ApiError> {
    for _ in 0..MAX_CODE_ATTEMPTS {
        let code = OneTimeCode::random(&mut rand::rng());
        let reply = state
            .limiter
            .guarded(
                state.redis_raw(),
                script,
                &limits,
                vec![keys::otc(&code), keys::call(call)],
                args.to_vec(),
                &state.metrics,
            )
            .await
            .map_err(|e| state.guard_err(e, route))?;
        limits.clear();
        match reply.first().and_then(Value::as_i64) {
            Some(0) => tracing::debug!("one-time code collision, drawing another"),
            answer => return Ok((code, answer)),
        }
    }
    tracing::error!("no free one-time code after {MAX_CODE_ATTEMPTS} attempts");
    Err(ApiError::Internal)
}
