//! The HTTP API: `/topics/{topic}` (publish, last value, delete), `/events`
//! (Server-Sent Events), `/health` and `/metrics`, with JSON errors and
//! optional bearer-token auth.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use polyhub_sdk::{AdapterContext, Envelope, PublishError, QoS, SubscribeOptions, Topic};

use crate::convert::{self, EventData, PublishOptions, RequestError};
use crate::hub_status;

/// What every handler shares.
pub struct ApiState {
    /// The adapter's link to the hub.
    pub ctx: AdapterContext,
    /// Accepted bearer tokens; empty means no auth.
    pub tokens: Vec<String>,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments.
    pub keep_alive: Duration,
    /// Queue depth of SSE streams (`None`: the hub's default).
    pub queue_depth: Option<usize>,
    /// Time a request body has to arrive in full.
    pub body_timeout: Duration,
}

pub(crate) type Shared = Arc<ApiState>;

/// A JSON error response `{"error": "…"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
    /// Why the request was refused, for `polyhub_rejected_total`; `None`
    /// for answers that refuse nothing (a topic without a value).
    reason: Option<&'static str>,
    /// Close the connection after the answer (the body was not read whole).
    close: bool,
}

/// Marks a response as a refusal: the connection loop counts it as
/// `polyhub_rejected_total{reason}` (so every route, fallback and the fast
/// path are counted in one place, without the router's state).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rejected(pub &'static str);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            allow: None,
            reason: None,
            close: false,
        }
    }

    /// A refusal counted under `reason`.
    fn rejected(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            reason: Some(reason),
            ..ApiError::new(status, message)
        }
    }

    fn method_not_allowed(method: &Method, allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..ApiError::rejected(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("method {method} not allowed here; allowed: {allow}"),
            )
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::rejected(StatusCode::BAD_REQUEST, e.reason(), e.to_string())
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Quota => ApiError::rejected(
                StatusCode::INSUFFICIENT_STORAGE,
                "quota_exceeded",
                e.to_string(),
            ),
            e => ApiError::rejected(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"polyhub\""),
            );
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(reason) = self.reason {
            resp.extensions_mut().insert(Rejected(reason));
        }
        resp
    }
}

/// The client's address as the origin's peer (`ip:port`), formatted once
/// per connection by the connection loop and attached to each request.
#[derive(Clone)]
pub(crate) struct PeerName(pub Arc<str>);

/// The application: every route, the body limit and the fallbacks.
pub fn router(state: Shared) -> Router {
    let limit = state.max_body_bytes;
    let protected = Router::new()
        .route("/topics", any(topics))
        .route("/topics/", any(topics))
        .route("/topics/{*topic}", any(topics))
        .route(
            "/events",
            get(events)
                .fallback(|m: Method| async move { ApiError::method_not_allowed(&m, "GET, HEAD") }),
        );
    // No tokens configured: no middleware on the hot path at all.
    let protected = if state.tokens.is_empty() {
        protected
    } else {
        protected.route_layer(middleware::from_fn_with_state(state.clone(), require_token))
    };
    Router::new()
        .merge(protected)
        .route(
            "/health",
            get(health)
                .fallback(|m: Method| async move { ApiError::method_not_allowed(&m, "GET, HEAD") }),
        )
        .route(
            "/metrics",
            get(metrics)
                .fallback(|m: Method| async move { ApiError::method_not_allowed(&m, "GET, HEAD") }),
        )
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::rejected(
                StatusCode::NOT_FOUND,
                "bad_path",
                format!(
                    "no such path `{}`; try /topics, /topics/{{topic}}, /events, /health or /metrics",
                    uri.path()
                ),
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Refuses requests without one of the configured bearer tokens.
async fn require_token(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.tokens.is_empty() {
        return next.run(req).await;
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    let given = match from_header {
        Some(t) => Some(t),
        // EventSource cannot set headers: /events also takes ?access_token=.
        None if req.uri().path() == "/events" => {
            convert::parse_query(req.uri().query()).ok().and_then(|q| {
                q.into_iter()
                    .find(|(k, _)| k == "access_token")
                    .map(|(_, v)| v)
            })
        }
        None => None,
    };
    match given {
        Some(t)
            if state
                .tokens
                .iter()
                .any(|ok| constant_time_eq(ok.as_bytes(), t.as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => {
            state.ctx.metrics().incr("auth_failures");
            ApiError::rejected(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid bearer token",
            )
            .into_response()
        }
        None => ApiError::rejected(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token (Authorization: Bearer …)",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/topics/{topic}`: `POST`/`PUT` publish, `GET`/`HEAD` last value,
/// `DELETE` clears it.
async fn topics(State(state): State<Shared>, req: Request) -> Result<Response, ApiError> {
    const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE";
    let method = req.method().clone();
    if !matches!(
        method,
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE
    ) {
        return Err(ApiError::method_not_allowed(&method, ALLOW));
    }
    let raw = req
        .uri()
        .path()
        .strip_prefix("/topics")
        .map(|p| p.strip_prefix('/').unwrap_or(p))
        .unwrap_or("");
    if raw.is_empty() && matches!(method, Method::GET | Method::HEAD) {
        return list_topics(&state, req.uri().query());
    }
    let topic = convert::topic_from_path(raw)?;
    match method {
        Method::GET | Method::HEAD => last_value(&state, &topic),
        Method::DELETE => {
            state.ctx.clear_last_value(&topic);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => publish(&state, topic, req).await,
    }
}

/// The hot path, taken by the connection loop without the router for
/// `POST`/`PUT /topics/{topic}` when no tokens are configured: the same
/// handling as through [`router`], minus routing and tower layers.
/// `Err(req)` hands back any other request, for the router to serve.
// Handing the request back unboxed is the point: boxing it would cost an
// allocation per request on the hot path.
#[allow(clippy::result_large_err)]
pub(crate) fn fast_publish(
    state: &Shared,
    req: Request,
) -> Result<futures::future::BoxFuture<'static, Response>, Request> {
    if !state.tokens.is_empty() || !matches!(*req.method(), Method::POST | Method::PUT) {
        return Err(req);
    }
    let Some(raw) = req.uri().path().strip_prefix("/topics/") else {
        return Err(req);
    };
    let topic = convert::topic_from_path(raw);
    let state = state.clone();
    Ok(Box::pin(async move {
        let r = match topic {
            Ok(topic) => publish(&state, topic, req).await,
            Err(e) => Err(e.into()),
        };
        r.into_response()
    }))
}

/// `GET /topics?prefix=&after=&limit=`: one page of last values in topic
/// order, `{"topics":[…],"next":"…"|null}` (pass `next` as `after`).
fn list_topics(state: &ApiState, query: Option<&str>) -> Result<Response, ApiError> {
    let query = convert::parse_query(query)?;
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let limit = match get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "limit must be an integer from 1 to 1000",
                )
            })?,
    };
    let page = state
        .ctx
        .topics_page(get("prefix").unwrap_or(""), get("after"), limit + 1);
    let next = (page.len() > limit).then(|| page[limit - 1].topic.to_string());
    let items: Vec<serde_json::Value> = page
        .iter()
        .take(limit)
        .filter_map(|e| serde_json::from_str(&EventData::of(e).to_json()).ok())
        .collect();
    Ok(Json(serde_json::json!({ "topics": items, "next": next })).into_response())
}

fn last_value(state: &ApiState, topic: &Topic) -> Result<Response, ApiError> {
    let Some(env) = state.ctx.last_value(topic) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("topic `{topic}` has no value"),
        ));
    };
    let ct = env
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut resp = (StatusCode::OK, env.payload.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, ct);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(id) = HeaderValue::from_str(&env.id.to_string()) {
        h.insert(convert::ID_HEADER, id);
    }
    Ok(resp)
}

async fn publish(state: &ApiState, topic: Topic, req: Request) -> Result<Response, ApiError> {
    let query = convert::parse_query(req.uri().query())?;
    let opts = PublishOptions::from_query(&query)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let carried = convert::carried_headers(req.headers());
    let peer = req.extensions().get::<PeerName>().map(|p| p.0.clone());
    let body = read_body(state, req.into_body()).await.inspect_err(|e| {
        if e.reason == Some("body_too_large") {
            state.ctx.metrics().incr("oversized_bodies");
        }
    })?;
    let mut origin = state.ctx.origin();
    origin.peer = peer;
    let mut env = Envelope::new(topic, body)
        .with_qos(opts.qos)
        .with_retain(opts.retain)
        .with_origin(origin);
    env.content_type = content_type;
    env.headers = carried;

    tokio::select! {
        _ = state.ctx.shutdown().cancelled() => return Err(PublishError::Closed.into()),
        r = state.ctx.publish(env) => r?,
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Reads a request body of at most `max_body_bytes` within `body_timeout`.
///
/// Memory follows what the peer sent: each chunk is copied into one buffer
/// of the body's own size and dropped at once. A chunk of hyper's is a
/// slice of the connection's read buffer and keeps all of it alive: held
/// as they are (what `to_bytes` does), a body dribbled a byte per TCP
/// segment cost ~3.8 KB per byte, and the last value of every topic POSTed
/// on a keep-alive connection pinned ~4.7 KB whatever its size (1 M topics
/// of one byte: 479 MB with the store at 100 000 topics). A body already
/// there is read without a timer.
async fn read_body(state: &ApiState, body: axum::body::Body) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody as _;
    let limit = state.max_body_bytes;
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large(limit));
    }
    let collect = std::pin::pin!(collect_body(body, limit));
    let mut collect = collect;
    if let std::task::Poll::Ready(r) = futures::poll!(collect.as_mut()) {
        return r;
    }
    match tokio::time::timeout(state.body_timeout, collect).await {
        Ok(r) => r,
        Err(_) => Err(ApiError {
            close: true,
            ..ApiError::rejected(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s",
                    state.body_timeout.as_secs()
                ),
            )
        }),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError {
        close: true,
        ..ApiError::rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body larger than {limit} bytes"),
        )
    }
}

async fn collect_body(mut body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody as _;
    use http_body_util::BodyExt;
    let mut held: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError {
            close: true,
            ..ApiError::rejected(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("cannot read the body: {e}"),
            )
        })?;
        // Trailers carry nothing the envelope keeps.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if held.len() + data.len() > limit {
            return Err(too_large(limit));
        }
        if held.is_empty() && body.is_end_stream() {
            // The whole body in one chunk: one copy of exactly its size.
            return Ok(Bytes::copy_from_slice(&data));
        }
        held.extend_from_slice(&data);
    }
    Ok(Bytes::from(held))
}

/// `/events?filter=…`: a Server-Sent Events stream of matching envelopes.
async fn events(State(state): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let query = convert::parse_query(req.uri().query())?;
    let filters = convert::filters_from_query(&query)?;
    let retained = match query.iter().find(|(k, _)| k == "retained") {
        Some((k, v)) => convert::parse_bool(k, v)?,
        None => false,
    };
    // What this adapter's own clients POST reaches its streams too.
    // SSE is at-most-once: a client that reads slowly (or not at all)
    // loses envelopes from its own queue, counted on `dropped_total`, and
    // never makes a publisher wait.
    let options = SubscribeOptions {
        depth: state.queue_depth,
        include_own: true,
        max_qos: Some(QoS::AtMostOnce),
    };
    let hub_sub = state
        .ctx
        .subscribe_with(filters.clone(), options)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut initial: Vec<Arc<Envelope>> = Vec::new();
    if retained {
        for f in &filters {
            for e in state.ctx.retained(f) {
                if !initial.iter().any(|i| i.topic == e.topic) {
                    initial.push(e);
                }
            }
        }
    }
    tracing::debug!(adapter = %state.ctx.name(), filters = ?filters, "SSE stream opened.");

    let peer = req.extensions().get::<PeerName>().map(|p| p.0.to_string());
    let info = polyhub_sdk::ClientInfo {
        peer,
        ..polyhub_sdk::ClientInfo::new("http-sse")
    };
    let client = state.ctx.client_connected(info);
    let from_hub = futures::stream::unfold((hub_sub, client), |(mut s, c)| async move {
        let e = s.recv().await?;
        c.record_out();
        Some((e, (s, c)))
    });
    let stream = futures::stream::iter(initial)
        .chain(from_hub)
        .map(|e| Ok::<Event, Infallible>(to_event(&e)))
        .take_until(state.ctx.shutdown().clone().cancelled_owned());
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.keep_alive))
        .into_response();
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

fn to_event(e: &Envelope) -> Event {
    Event::default()
        .event("message")
        .id(e.id.to_string())
        .data(EventData::of(e).to_json())
}

/// `/health`: 200 when every adapter of the hub is up, else 503.
async fn health(State(state): State<Shared>) -> Response {
    let (ok, body) = hub_status::health(&state.ctx.snapshot());
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `/metrics`: the whole hub's counters in Prometheus text format.
async fn metrics(State(state): State<Shared>) -> Response {
    let text = hub_status::prometheus(&state.ctx.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(hub_status::PROMETHEUS_CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}
