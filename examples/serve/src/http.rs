//! The HTTP API: routes, typed requests, errors, the bearer check and the time limits.
//!
//! | route | | |
//! | --- | --- | --- |
//! | `GET /healthz` | public | `ok` |
//! | `GET /metrics` | public | Prometheus text |
//! | `GET /v1/status` | public | sparsity, epoch, components and versions |
//! | `POST /v1/generate` | public | `{"prompt": "...", "max_new_tokens": 16}` |
//! | `POST /v1/admin/reprune` | bearer token | a [`RepruneRequest`] |
//! | `POST /v1/admin/undo` | bearer token | |
//! | `POST /v1/admin/plugins/reload` | bearer token | rescans the live plugin folder |

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, MatchedPath, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use crossbeam::channel::Sender;
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::{
    engine::{CancelOnDrop, Engine, GenError},
    pruning::{ask, Job, RepruneRequest},
    Limits,
};

/// An error answer: a status and a message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, m)
    }
    /// 409: the server's state does not allow it.
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, m)
    }
    /// 422: well formed, but it cannot be done (a plan failed).
    pub fn unprocessable(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m)
    }
    /// 500.
    pub fn internal(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    /// 503.
    pub fn unavailable(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("a header"),
            );
        }
        r
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    /// The model.
    pub engine: Arc<Engine>,
    /// Jobs for the pruning thread.
    pub jobs: Sender<Job>,
    /// The admin token (`None`: admin endpoints disabled).
    pub token: Option<Arc<str>>,
    /// The limits.
    pub limits: Limits,
    /// Generations that may run at once.
    pub generations: Arc<Semaphore>,
    /// Components and versions, for `/v1/status`.
    pub components: Arc<Mutex<Value>>,
}

/// `POST /v1/generate`. Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The text to continue.
    pub prompt: String,
    /// Tokens to generate at most (default 16; at most the server's `--max-new-tokens`).
    #[serde(default)]
    pub max_new_tokens: Option<u32>,
}

/// A typed JSON body: a malformed one, a field of the wrong type or an unknown field is a 400
/// naming the field; a body over the limit a 413.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            "not JSON"
        } else {
            "invalid request"
        };
        ApiError::bad_request(if path == "." {
            format!("{what}: {inner}")
        } else {
            format!("{what}: {path}: {inner}")
        })
    })
}

/// The router, with its limits.
pub fn router(app: App) -> Router {
    let admin = Router::new()
        .route("/v1/admin/reprune", post(reprune))
        .route("/v1/admin/undo", post(undo))
        .route("/v1/admin/plugins/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token))
        .route_layer(middleware::from_fn_with_state(
            app.limits.admin_time,
            time_limit,
        ));
    let public = Router::new()
        .route("/v1/generate", post(generate))
        .route("/v1/status", get(status))
        .route_layer(middleware::from_fn_with_state(
            app.limits.request_time,
            time_limit,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(public)
        .merge(admin)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .layer(DefaultBodyLimit::max(app.limits.max_body_bytes))
        .with_state(app)
}

async fn count(State(app): State<App>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let r = next.run(req).await;
    app.engine.metrics.answered(&route, r.status().as_u16());
    r
}

/// The request's time limit, body reading included. A generation whose time runs out stops at
/// its next token step.
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} s", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

/// The bearer check of the admin routes, in constant time.
async fn require_token(
    State(app): State<App>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &app.token else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled: no admin token is configured (set BIRDBONE_SERVE_TOKEN or --admin-token-file)",
        )
        .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the admin token: Authorization: Bearer <token>",
        )
        .into_response();
    }
    next.run(req).await
}

async fn generate(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: GenerateRequest = parse(body)?;
    let max = app.limits.max_new_tokens;
    let max_new = req.max_new_tokens.unwrap_or(16.min(max));
    if max_new > max {
        return Err(ApiError::bad_request(format!(
            "max_new_tokens {max_new} is over this server's limit of {max}"
        )));
    }
    let permit = app
        .generations
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("shutting down"))?;
    let cancel = CancelOnDrop(Default::default());
    let flag = cancel.0.clone();
    let engine = app.engine.clone();
    let metrics = engine.metrics.clone();
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        metrics.generations_in_flight.fetch_add(1, Ordering::SeqCst);
        let r = engine.generate_text(&req.prompt, max_new as usize, &flag);
        metrics.generations_in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    });
    let g = match task.await {
        Ok(Ok(g)) => g,
        Ok(Err(GenError::Failed(m))) => return Err(ApiError::bad_request(m)),
        Ok(Err(GenError::Cancelled)) => return Err(ApiError::unavailable("cancelled")),
        Err(e) => return Err(ApiError::internal(format!("the generation panicked: {e}"))),
    };
    drop(cancel);
    Ok(Json(json!({
        "text": g.text,
        "tokens": g.ids.len(),
        "epoch": g.epoch,
        "restarts": g.restarts,
        "recorded": g.recorded,
    })))
}

async fn status(State(app): State<App>) -> Json<Value> {
    let m = &app.engine.metrics;
    Json(json!({
        "sparsity": m.sparsity.get(),
        "epoch": m.epoch.load(Ordering::Relaxed),
        "components": app.components.lock().clone(),
        "record_activations": app.engine.records_traffic(),
        "admin": app.token.is_some(),
    }))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.engine.metrics.render(),
    )
}

async fn reprune(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: RepruneRequest = parse(body)?;
    req.recipe()?;
    ask(&app.jobs, |r| Job::Reprune(Box::new(req), r))
        .await
        .map(Json)
}

/// The admin routes without a body take none: anything sent must be empty or `{}`.
fn no_body(body: Result<Bytes, BytesRejection>) -> Result<(), ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}
    parse::<Empty>(Ok(body)).map(drop)
}

async fn undo(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    no_body(body)?;
    ask(&app.jobs, Job::Undo).await.map(Json)
}

async fn reload(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    no_body(body)?;
    ask(&app.jobs, Job::Reload).await.map(Json)
}
