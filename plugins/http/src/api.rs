//! The HTTP API: `/topics/{topic}` (publish, last value, delete), `/events`
//! (Server-Sent Events), `/health` and `/metrics`, with JSON errors. Who
//! the caller is (HTTP Basic against `[auth]`'s password file, a bearer
//! token of `tokens`, or anonymous) is decided once per request by the
//! [`identify`] layer; each handler then asks `[auth]`'s ACL for what it
//! does to a topic: `POST`/`PUT`/`DELETE` write, `GET` reads, `/events`
//! subscribes and reads each delivered message.

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
use polyhub_sdk::{
    Action, AdapterContext, Envelope, Identity, PublishError, QoS, SubscribeOptions, Topic,
};

use crate::convert::{self, EventData, PublishOptions, RequestError};
use crate::hub_status;

/// What every handler shares.
pub struct ApiState {
    /// The adapter's link to the hub.
    pub ctx: AdapterContext,
    /// Accepted bearer tokens, each with the user it stands for (`None`:
    /// a token that gets what an anonymous client gets).
    pub tokens: Vec<(String, Option<String>)>,
    /// Whether callers are identified at all: the hub has `[auth]`, or
    /// `tokens` is not empty. Otherwise no layer runs and everything is
    /// allowed (the publish fast path is taken).
    pub guarded: bool,
    /// Whether `/metrics` and `/health` require credentials.
    pub metrics_auth: bool,
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
    /// On a `401`, offer `Basic` besides `Bearer` (the hub has `[auth]`).
    basic: bool,
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
            basic: false,
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
            let h = resp.headers_mut();
            if self.basic {
                h.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"polyhub\", charset=\"UTF-8\""),
                );
            }
            h.append(
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

/// Who made a request, as the [`identify`] layer found out; requests that
/// went through no layer (no `[auth]`, no `tokens`) are anonymous.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The user, or anonymous.
    pub identity: Identity,
    /// The client id of `%c` ACL patterns: HTTP has none, so the client's
    /// address (`ip:port`) stands for it.
    pub client_id: Arc<str>,
    /// Whether the request carried valid credentials (Basic or a token).
    pub credentials: bool,
}

impl Caller {
    fn of(req: &Request) -> Caller {
        if let Some(c) = req.extensions().get::<Caller>() {
            return c.clone();
        }
        Caller {
            identity: Identity::anonymous(),
            client_id: peer_of(req).unwrap_or_else(|| Arc::from("")),
            credentials: false,
        }
    }
}

fn peer_of(req: &Request) -> Option<Arc<str>> {
    req.extensions().get::<PeerName>().map(|p| p.0.clone())
}

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
    // Nobody to identify: no middleware on the hot path at all.
    let protected = if state.guarded {
        protected.route_layer(middleware::from_fn_with_state(state.clone(), identify))
    } else {
        protected
    };
    let status = Router::new()
        .route(
            "/health",
            get(health)
                .fallback(|m: Method| async move { ApiError::method_not_allowed(&m, "GET, HEAD") }),
        )
        .route(
            "/metrics",
            get(metrics)
                .fallback(|m: Method| async move { ApiError::method_not_allowed(&m, "GET, HEAD") }),
        );
    let status = if state.metrics_auth {
        status.route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_credentials,
        ))
    } else {
        status
    };
    Router::new()
        .merge(protected)
        .merge(status)
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

/// Finds out who the caller is and attaches it to the request as a
/// [`Caller`], or answers `401` (credentials wrong, or missing while
/// anonymous access is off).
async fn identify(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    match caller_of(&state, &req) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// `metrics_auth`: `/metrics` and `/health` for callers with valid
/// credentials only (any user, or any token).
async fn require_credentials(State(state): State<Shared>, req: Request, next: Next) -> Response {
    match caller_of(&state, &req) {
        Ok(caller) if caller.credentials => next.run(req).await,
        Ok(_) => unauthorized(
            &state,
            "credentials required (Authorization: Basic or Bearer)",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

fn unauthorized(state: &ApiState, message: &str) -> ApiError {
    ApiError {
        basic: state.ctx.auth_enabled(),
        ..ApiError::rejected(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

/// Who sent `req`: `Authorization: Basic` (checked against the password
/// file), `Authorization: Bearer` or, on `/events` only, `?access_token=`
/// (one of `tokens`), or nobody (anonymous, when `[auth]` allows it; without
/// `[auth]`, `tokens` are required).
fn caller_of(state: &ApiState, req: &Request) -> Result<Caller, ApiError> {
    let peer = peer_of(req);
    let client_id = peer.clone().unwrap_or_else(|| Arc::from(""));
    let ctx = &state.ctx;
    let caller = |identity: Identity, credentials: bool| Caller {
        identity,
        client_id: client_id.clone(),
        credentials,
    };
    let given = match req.headers().get(header::AUTHORIZATION) {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| unauthorized(state, "malformed Authorization header"))?;
            let (scheme, value) = v.split_once(' ').unwrap_or((v, ""));
            Some((scheme.to_ascii_lowercase(), value.trim().to_owned()))
        }
        // EventSource cannot set headers: /events also takes ?access_token=.
        None if req.uri().path() == "/events" => convert::parse_query(req.uri().query())
            .ok()
            .and_then(|q| q.into_iter().find(|(k, _)| k == "access_token"))
            .map(|(_, v)| ("bearer".to_owned(), v)),
        None => None,
    };
    match given {
        Some((scheme, value)) if scheme == "basic" => {
            if !ctx.auth_enabled() {
                return Err(unauthorized(
                    state,
                    "this hub has no [auth] to check a password against; use a bearer token",
                ));
            }
            let (user, password) = decode_basic(&value)
                .ok_or_else(|| unauthorized(state, "malformed Basic credentials"))?;
            match ctx.authenticate(Some(&user), Some(password.as_bytes()), peer.as_deref()) {
                Ok(identity) => Ok(caller(identity, true)),
                Err(_) => Err(unauthorized(state, "wrong user name or password")),
            }
        }
        Some((scheme, token)) if scheme == "bearer" => {
            let found = state
                .tokens
                .iter()
                .find(|(ok, _)| constant_time_eq(ok.as_bytes(), token.as_bytes()));
            match found {
                Some((_, Some(user))) => Ok(caller(Identity::user(user), true)),
                Some((_, None)) => Ok(caller(Identity::anonymous(), true)),
                None => {
                    ctx.metrics().incr("auth_failures");
                    ctx.auth_denied(
                        &Identity::anonymous(),
                        "connect",
                        "",
                        peer.as_deref(),
                        &"unknown bearer token",
                    );
                    Err(unauthorized(state, "invalid bearer token"))
                }
            }
        }
        Some((scheme, _)) => Err(unauthorized(
            state,
            &format!("unsupported authorization scheme `{scheme}`; use Basic or Bearer"),
        )),
        None if ctx.auth_enabled() => match ctx.authenticate(None, None, peer.as_deref()) {
            Ok(identity) => Ok(caller(identity, false)),
            Err(_) => Err(unauthorized(
                state,
                "credentials required (Authorization: Basic or Bearer)",
            )),
        },
        None => Err(unauthorized(
            state,
            "missing bearer token (Authorization: Bearer …)",
        )),
    }
}

/// `user:password` from a Basic credential (base64 of UTF-8).
fn decode_basic(value: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Asks `[auth]`'s ACL whether `caller` may do `action` on `topic`; `403`
/// if not (counted and logged by the context).
fn check(state: &ApiState, caller: &Caller, topic: &str, action: Action) -> Result<(), ApiError> {
    if state
        .ctx
        .authorize(&caller.identity, &caller.client_id, topic, action)
    {
        return Ok(());
    }
    let verb = match action {
        Action::Write => "publish to",
        Action::Read => "read",
        Action::Subscribe => "subscribe to",
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!("{} may not {verb} `{topic}`", caller.identity),
    ))
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
    let caller = Caller::of(&req);
    if raw.is_empty() && matches!(method, Method::GET | Method::HEAD) {
        return list_topics(&state, &caller, req.uri().query());
    }
    let topic = convert::topic_from_path(raw)?;
    match method {
        Method::GET | Method::HEAD => {
            check(&state, &caller, topic.as_str(), Action::Read)?;
            last_value(&state, &topic)
        }
        Method::DELETE => {
            check(&state, &caller, topic.as_str(), Action::Write)?;
            state.ctx.clear_last_value(&topic);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => {
            check(&state, &caller, topic.as_str(), Action::Write)?;
            publish(&state, topic, req).await
        }
    }
}

/// The hot path, taken by the connection loop without the router for
/// `POST`/`PUT /topics/{topic}` when nobody is identified (no `[auth]`, no
/// `tokens`): the same
/// handling as through [`router`], minus routing and tower layers.
/// `Err(req)` hands back any other request, for the router to serve.
// Handing the request back unboxed is the point: boxing it would cost an
// allocation per request on the hot path.
#[allow(clippy::result_large_err)]
pub(crate) fn fast_publish(
    state: &Shared,
    req: Request,
) -> Result<futures::future::BoxFuture<'static, Response>, Request> {
    if state.guarded || !matches!(*req.method(), Method::POST | Method::PUT) {
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
/// Topics the caller may not read are left out of the page.
fn list_topics(
    state: &ApiState,
    caller: &Caller,
    query: Option<&str>,
) -> Result<Response, ApiError> {
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
        .filter(|e| {
            state.ctx.authorize(
                &caller.identity,
                &caller.client_id,
                e.topic.as_str(),
                Action::Read,
            )
        })
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
    let caller = Caller::of(&req);
    for f in &filters {
        check(&state, &caller, f.as_str(), Action::Subscribe)?;
    }
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
                let readable = || {
                    state.ctx.authorize(
                        &caller.identity,
                        &caller.client_id,
                        e.topic.as_str(),
                        Action::Read,
                    )
                };
                if !initial.iter().any(|i| i.topic == e.topic) && readable() {
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
    // Each message is checked again with `read` on its own topic (a
    // subscription to `a/#` may hold topics the caller may not read).
    let reader = (state.ctx.clone(), caller);
    let from_hub = futures::stream::unfold(
        (hub_sub, client, reader),
        |(mut s, c, (ctx, caller))| async move {
            loop {
                let e = s.recv().await?;
                if ctx.authorize(
                    &caller.identity,
                    &caller.client_id,
                    e.topic.as_str(),
                    Action::Read,
                ) {
                    c.record_out();
                    return Some((e, (s, c, (ctx, caller))));
                }
            }
        },
    );
    // A first comment sends the response head at once: the client learns
    // that it is subscribed (`200`) before any message comes.
    let opened = futures::stream::once(async { Event::default().comment("subscribed") });
    let stream = opened
        .chain(futures::stream::iter(initial).map(|e| to_event(&e)))
        .chain(from_hub.map(|e| to_event(&e)))
        .map(Ok::<Event, Infallible>)
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
