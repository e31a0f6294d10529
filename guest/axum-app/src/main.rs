//! A small axum application as its authors would write it for any `wasi:http` 0.2 host: its
//! own router from `/`, no knowledge of edge-infer. The tests serve it unmodified at `/` and
//! under `/app` (with the route's `strip_mount`).
//!
//! - `GET /`: a greeting;
//! - `GET /echo/{word}?times=n`: the word, n times;
//! - `POST /sum`: `{"numbers": [...]}` answered with `{"sum": s}`;
//! - `GET /seen`: the path and query the application was handed, and the mount headers.

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

#[wstd_axum::http_server]
fn main() -> Router {
    Router::new()
        .route("/", get(|| async { "hello from axum" }))
        .route("/echo/{word}", get(echo))
        .route("/sum", post(sum))
        .route("/seen", get(seen))
}

#[derive(Deserialize)]
struct Times {
    times: Option<usize>,
}

async fn echo(Path(word): Path<String>, Query(Times { times }): Query<Times>) -> String {
    vec![word; times.unwrap_or(1)].join(" ")
}

#[derive(Deserialize)]
struct Numbers {
    numbers: Vec<f64>,
}

async fn sum(Json(Numbers { numbers }): Json<Numbers>) -> Json<Value> {
    Json(json!({ "sum": numbers.iter().sum::<f64>() }))
}

async fn seen(uri: Uri, headers: HeaderMap) -> Json<Value> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
    Json(json!({
        "path": uri.path(),
        "query": uri.query(),
        "mount": header("x-edge-mount"),
        "path_info": header("x-edge-path-info"),
    }))
}
