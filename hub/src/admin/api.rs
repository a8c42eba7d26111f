//! The admin routes: `/`, `/api/*`, `/metrics`, `/health`.
// Query parsers hand back the ready error response (axum's `Response`, 128
// bytes) for `?` in handlers; this is the admin API, not a hot path.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use polyhub_sdk::{AdapterContext, Envelope, HubSnapshot, Identity, QoS, Topic};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::sampler::{unix_ms, Sampler};
use crate::hub::Shared;

const DASHBOARD: &str = include_str!("dashboard.html");
/// Largest page any listing returns.
const MAX_LIMIT: usize = 1000;
/// Default page size.
const DEFAULT_LIMIT: usize = 100;
/// Payload bytes a listing shows of each value.
const PREVIEW_BYTES: usize = 4096;

/// What every admin handler shares.
pub(crate) struct AdminState {
    pub hub: Arc<Shared>,
    /// `[auth] admin_users`.
    pub admin_users: Vec<String>,
    pub ctx: AdapterContext,
    pub sampler: Arc<Sampler>,
    pub token: CancellationToken,
}

type St = State<Arc<AdminState>>;

/// Every admin route.
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/adapters", get(adapters))
        .route("/api/clients", get(clients))
        .route("/api/subscriptions", get(subscriptions))
        .route("/api/queues", get(queues))
        .route("/api/topics", get(topics))
        .route("/api/rates", get(rates))
        .route("/api/events", get(events))
        .route("/api/publish", post(publish))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(|uri: axum::http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                format!("no such path `{}`; try /, /api/adapters, /api/clients, /api/subscriptions, /api/topics, /api/publish, /metrics or /health", uri.path()),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ))
        .with_state(state)
}

/// The `WWW-Authenticate` challenge of a refused admin request.
const ADMIN_CHALLENGE: &str = "Basic realm=\"polyhub admin\", charset=\"UTF-8\"";

/// With `[auth]`, every admin route needs HTTP Basic credentials of a user
/// in the password file who is listed in `admin_users`: 401 with a Basic
/// challenge when they are missing or wrong, 403 for other users (both
/// counted on `polyhub_auth_denied_total{adapter="admin"}`). Without
/// `[auth]`, open.
async fn require_admin(
    State(s): St,
    ConnectInfo(super::PeerAddr(peer)): ConnectInfo<super::PeerAddr>,
    req: Request,
    next: Next,
) -> Response {
    if s.hub.auth.is_none() {
        return next.run(req).await;
    }
    let peer = peer.to_string();
    let unauthorized = |message: &str| {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(ADMIN_CHALLENGE),
            )],
            Json(json!({ "error": message })),
        )
            .into_response()
    };
    let Some((user, password)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| basic_credentials(v.as_bytes()))
    else {
        s.ctx.auth_denied(
            &Identity::anonymous(),
            "connect",
            "",
            Some(&peer),
            &"no Basic credentials",
        );
        return unauthorized("the admin API needs the user name and password of one of [auth] admin_users (HTTP Basic)");
    };
    let identity = match s
        .ctx
        .authenticate(Some(&user), Some(password.as_bytes()), Some(&peer))
    {
        Ok(identity) => identity,
        Err(_) => return unauthorized("wrong user name or password"),
    };
    if !s.admin_users.contains(&user) {
        s.ctx.auth_denied(
            &identity,
            "admin",
            "",
            Some(&peer),
            &"not in [auth] admin_users",
        );
        return error(
            StatusCode::FORBIDDEN,
            format!("user `{user}` is not one of [auth] admin_users"),
        );
    }
    next.run(req).await
}

/// `Basic base64(user:password)` from an `Authorization` header value.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

async fn dashboard() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// `limit` (1..=1000, default 100) from a query.
fn limit(q: &HashMap<String, String>) -> Result<usize, Response> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be an integer from 1 to {MAX_LIMIT}, not `{v}`"),
                )
            }),
    }
}

/// An id cursor (`after`) from a query.
fn after_id(q: &HashMap<String, String>) -> Result<u64, Response> {
    match q.get("after") {
        None => Ok(0),
        Some(v) if v.is_empty() => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("after must be the `next` of the previous page (an integer), not `{v}`"),
            )
        }),
    }
}

/// Adapters with state, reason, connected clients and counters.
pub(crate) fn adapters_json(snap: &HubSnapshot, clients: &BTreeMap<String, usize>) -> Value {
    snap.adapters
        .iter()
        .map(|a| {
            let m = &a.metrics;
            let events: serde_json::Map<String, Value> = m
                .named
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect();
            json!({
                "name": a.name,
                "kind": a.kind,
                "state": a.state.as_str(),
                "reason": a.reason,
                "clients": clients.get(&a.name).copied().unwrap_or(0),
                "messages_in": m.messages_in,
                "messages_out": m.messages_out,
                "dropped": m.dropped,
                "errors": m.errors,
                "reconnects": m.reconnects,
                "events": events,
                "rejected": m.rejected.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect::<serde_json::Map<String, Value>>(),
                "denied": m.denied.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect::<serde_json::Map<String, Value>>(),
            })
        })
        .collect()
}

/// The last-value store's figures.
pub(crate) fn store_json(snap: &HubSnapshot) -> Value {
    json!({
        "topics": snap.topics,
        "evictions": snap.last_value_evictions,
        "retained_quota_refusals": snap.retained_quota_refusals,
    })
}

/// One envelope as the API shows it: the payload as UTF-8 text, or base64
/// when it is not UTF-8, cut at [`PREVIEW_BYTES`].
pub(crate) fn envelope_json(e: &Envelope) -> Value {
    let size = e.payload.len();
    let shown = &e.payload[..size.min(PREVIEW_BYTES)];
    let (payload, encoding) = match std::str::from_utf8(shown) {
        Ok(s) => (s.to_owned(), "utf8"),
        // A cut in the middle of a character is still text.
        Err(err) if size > PREVIEW_BYTES && err.error_len().is_none() => (
            String::from_utf8_lossy(&shown[..err.valid_up_to()]).into_owned(),
            "utf8",
        ),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
        ),
    };
    json!({
        "topic": e.topic.as_str(),
        "payload": payload,
        "encoding": encoding,
        "size": size,
        "truncated": size > PREVIEW_BYTES,
        "content_type": e.content_type,
        "qos": u8::from(e.qos),
        "retain": e.retain,
        "timestamp": unix_ms(e.timestamp),
        "origin": {
            "adapter": &*e.origin.adapter,
            "protocol": &*e.origin.protocol,
            "peer": e.origin.peer.as_deref(),
            "user": e.origin.user.as_deref(),
        },
    })
}

async fn adapters(State(s): St) -> Response {
    let snap = s.hub.snapshot();
    let clients = s.hub.clients.count_by_adapter();
    Json(json!({
        "hub": snap.hub,
        "adapters": adapters_json(&snap, &clients),
        "store": store_json(&snap),
    }))
    .into_response()
}

async fn clients(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let (limit, after) = match (limit(&q), after_id(&q)) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let mut page = s.hub.clients.page((after > 0).then_some(after), limit + 1);
    let next = (page.len() > limit).then(|| page[limit - 1].id);
    page.truncate(limit);
    let items: Vec<Value> = page
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "adapter": c.adapter,
                "protocol": c.info.protocol,
                "client_id": c.info.client_id,
                "peer": c.info.peer,
                "user": c.info.user,
                "since": unix_ms(c.since),
                "messages_in": c.messages_in,
                "messages_out": c.messages_out,
            })
        })
        .collect();
    Json(json!({ "clients": items, "next": next, "total": s.hub.clients.len() })).into_response()
}

async fn subscriptions(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let (limit, after) = match (limit(&q), after_id(&q)) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let router = &s.hub.router;
    let mut page = router.subscriptions(after, limit + 1);
    let next = (page.len() > limit).then(|| page[limit - 1].id);
    page.truncate(limit);
    let items: Vec<Value> = page
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "adapter": r.adapter,
                "filters": r.filters,
                "include_own": r.include_own,
                "queued": r.queued,
                "depth": r.depth,
            })
        })
        .collect();
    Json(json!({ "subscriptions": items, "next": next, "total": router.subscription_count() }))
        .into_response()
}

/// Durable queues: name, waiting, in flight, whether a subscriber holds it.
async fn queues(State(s): St) -> Response {
    let items: Vec<Value> = s
        .hub
        .router
        .durable_queues()
        .into_iter()
        .map(|(name, waiting, in_flight, attached)| {
            json!({
                "name": name,
                "waiting": waiting,
                "in_flight": in_flight,
                "subscribed": attached,
            })
        })
        .collect();
    Json(json!({ "queues": items })).into_response()
}

async fn topics(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let limit = match limit(&q) {
        Ok(l) => l,
        Err(e) => return e,
    };
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    let after = q.get("after").map(String::as_str).filter(|a| !a.is_empty());
    // The store's ordered index: costs the page, not the store.
    let page = s.hub.router.store().page(prefix, after, limit + 1);
    let next = (page.len() > limit).then(|| page[limit - 1].topic.to_string());
    let items: Vec<Value> = page.iter().take(limit).map(|e| envelope_json(e)).collect();
    Json(json!({ "topics": items, "next": next, "total": s.hub.router.store().len() }))
        .into_response()
}

async fn rates(State(s): St) -> Response {
    let samples: Vec<Value> = s.sampler.history().iter().map(|x| x.to_json()).collect();
    Json(json!({ "interval_ms": 1000, "samples": samples })).into_response()
}

/// `/api/events`: one `tick` event a second (see `sampler.rs`).
async fn events(State(s): St) -> Response {
    let rx = s.sampler.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(tick) => {
                    let ev = Event::default().event("tick").data(&*tick);
                    return Some((Ok::<Event, Infallible>(ev), rx));
                }
                // A slow dashboard skips ticks rather than holding them.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::StreamExt::take_until(stream, s.token.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    content_type: Option<String>,
}

/// `POST /api/publish` `{"topic","payload","qos","retain"}`: published as
/// the internal origin `admin`; `202` once the hub took it.
async fn publish(State(s): St, body: Bytes) -> Response {
    let req: PublishBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected JSON {{\"topic\": \"…\", \"payload\": \"text\", \"qos\": 0|1|2, \"retain\": false}}: {e}"),
            )
        }
    };
    let topic = match Topic::new(&req.topic) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid topic: {e}")),
    };
    let qos = match QoS::try_from(req.qos) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut env = Envelope::new(topic, req.payload)
        .with_qos(qos)
        .with_retain(req.retain)
        .with_origin(s.ctx.origin());
    env.content_type = Some(req.content_type.unwrap_or_else(|| "text/plain".to_owned()));
    let topic = env.topic.to_string();
    match s.ctx.publish(env).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "accepted", "topic": topic })),
        )
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn health(State(s): St) -> Response {
    let (ok, body) = polyhub_sdk::status::health(&s.hub.snapshot());
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(polyhub_sdk::status::PROMETHEUS_CONTENT_TYPE),
        )],
        polyhub_sdk::status::prometheus(&s.hub.snapshot()),
    )
        .into_response()
}
