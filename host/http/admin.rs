//! The admin API, on its own listener (`server.admin_listen`): every call needs
//! `Authorization: Bearer <token>` (401 and nothing changes without it).
//!
//! | call | what it does |
//! | --- | --- |
//! | `PUT /admin/artifacts` | stores the body (a component or a model) by its sha256 digest |
//! | `GET /admin/routes` | every route: component digest, settings, state, requests in flight |
//! | `GET /admin/routes/{name}` | one route |
//! | `GET /admin/node` | the node's version, and its main listener's scheme and port |
//! | `PUT /admin/routes/{name}` | deploys the route (JSON settings; component and models' files by digest or `oci://`) |
//! | `DELETE /admin/routes/{name}` | stops serving it; requests in flight finish |
//! | `POST /admin/routes/{name}/rollback` | serves its previous version again |
//! | `GET /admin/models` | every model and its settings |
//! | `PUT /admin/models/{name}` | loads or replaces the model (JSON settings; file by digest or `oci://`) |
//! | `DELETE /admin/models/{name}` | unloads it, unless a route uses it |
//! | `POST /v2/repository/...` | the model repository API, as on the main listener |
//!
//! A change answers once the new version serves (or, if it failed, with why and nothing
//! changed): 400 malformed settings, 404 no such route or model, 409 a conflict with what is
//! deployed, 413 too large, 422 the version did not load, 502 its registry failed.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::http::body;
use crate::http::credentials;
use crate::http::oip::Endpoint;
use crate::http::protocol::{Failure, FailureKind};
use crate::http::repository::{self, Action};
use crate::http::response::{self, Body};
use crate::node::Node;
use crate::node::config::{ModelConfig, RouteConfig, Source};
use crate::node::control::{DeployError, Outcome};
use crate::request::memory::Charge;

/// Largest route settings accepted, beside an inline component.
const MAX_SETTINGS_BYTES: usize = 1 << 20;

/// Largest JSON body accepted: settings with a file in base64 (4 characters per 3 bytes).
fn inline_limit(node: &Node) -> usize {
    let encoded = node.control().max_artifact_bytes().saturating_mul(4) / 3;
    usize::try_from(encoded).unwrap_or(usize::MAX).saturating_add(MAX_SETTINGS_BYTES)
}

/// Answers one admin request.
pub async fn dispatch(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = match credentials::require_admin_token(&node, request.headers()) {
        Err(refusal) => response::failure(refusal),
        Ok(()) => route(&node, request).await,
    };
    info!(%method, %path, status = response.status().as_u16(), "admin");
    response
}

async fn route(node: &Node, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::PUT | &Method::POST, ["admin", "artifacts"]) => upload(node, request.into_body()).await,
        (&Method::GET, ["admin", "node"]) => describe_node(node),
        (&Method::GET, ["admin", "routes"]) => list_routes(node, None),
        (&Method::GET, ["admin", "routes", name]) => list_routes(node, Some(name)),
        (&Method::PUT, ["admin", "routes", name]) => match read(node, request, inline_limit(node)).await {
            Ok((body, _charge)) => put_route(node, name, &body).await,
            Err(refusal) => refusal,
        },
        (&Method::DELETE, ["admin", "routes", name]) => answer("route", name, node.delete_route(name).await),
        (&Method::POST, ["admin", "routes", name, "rollback"]) => {
            answer("route", name, node.rollback_route(name).await)
        }
        (&Method::GET, ["admin", "models"]) => list_models(node),
        (&Method::PUT, ["admin", "models", name]) => match read(node, request, MAX_SETTINGS_BYTES).await {
            Ok((body, _charge)) => put_model(node, name, &body).await,
            Err(refusal) => refusal,
        },
        (&Method::DELETE, ["admin", "models", name]) => answer("model", name, node.unload_model(name).await),
        _ => match Endpoint::parse(&path) {
            Some(Endpoint::RepositoryLoad(model)) => {
                change_repository(node, Action::Load, model, request).await
            }
            Some(Endpoint::RepositoryUnload(model)) => {
                change_repository(node, Action::Unload, model, request).await
            }
            _ => response::failure(Failure::new(
                FailureKind::NotFound,
                format!("no admin call {method} {path}"),
            )),
        },
    }
}

/// A repository load or unload of `model`: POST, with the admin token.
pub async fn change_repository(
    node: &Node,
    action: Action,
    model: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    if request.method() != Method::POST {
        return response::failure(Failure::new(FailureKind::MethodNotAllowed, "repository calls take POST"));
    }
    if let Err(refusal) = credentials::require_admin_token(node, request.headers()) {
        return response::failure(refusal);
    }
    match read(node, request, inline_limit(node)).await {
        Ok((body, _charge)) => answer("model", model, repository::change(node, action, model, &body).await),
        Err(refusal) => refusal,
    }
}

/// Reads a JSON body of at most `limit` bytes, charged to the node's memory budget while it
/// is held (a file inline in base64 is held whole: large ones go through `PUT
/// /admin/artifacts`, which streams to disk).
async fn read(
    node: &Node,
    request: Request<Incoming>,
    limit: usize,
) -> Result<(Bytes, Charge), Response<Body>> {
    let (parts, body) = request.into_parts();
    body::read_charged(&parts.headers, body, limit, None, node.memory(), "admin")
        .await
        .map_err(|refusal| response::failure(refusal.into()))
}

/// Streams the body into the state folder as an artifact.
async fn upload(node: &Node, mut body: Incoming) -> Response<Body> {
    let state = node.control().state();
    let stored = async {
        let mut upload = state.upload(node.control().max_artifact_bytes())?;
        info!("receiving an artifact");
        while let Some(frame) = body.frame().await {
            // The client stopped sending: a bad request, nothing stored.
            let frame =
                frame.map_err(|e| DeployError::Invalid(anyhow::anyhow!("the upload did not finish: {e}")))?;
            if let Ok(data) = frame.into_data() {
                upload.write(&data)?;
            }
        }
        Ok::<_, DeployError>(tokio::task::block_in_place(|| upload.finish())?)
    };
    match stored.await {
        Ok(digest) => response::json(StatusCode::CREATED, &json!({ "digest": digest })),
        Err(error) => change_failed(error),
    }
}

/// Deploys a route from its JSON settings: `component` names an uploaded component by digest
/// or one in a registry (`oci://…`), or `component_base64` carries it inline;
/// `model_settings` maps names to the settings of models deployed in the same change.
async fn put_route(node: &Node, name: &str, body: &[u8]) -> Response<Body> {
    let bad = |message: String| response::failure(Failure::new(FailureKind::BadRequest, message));
    let mut settings: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(settings)) => Value::Object(settings),
        Ok(_) => return bad("the route's settings must be a JSON object".into()),
        Err(e) => return bad(format!("malformed JSON: {e}")),
    };
    if let Some(inline) = settings.as_object_mut().and_then(|s| s.remove("component_base64")) {
        let Some(bytes) =
            inline.as_str().and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
        else {
            return bad("`component_base64` must be the component in base64".into());
        };
        match node.control().state().store(&bytes) {
            Ok(digest) => settings["component"] = json!(digest),
            Err(error) => return change_failed(error.into()),
        }
    }
    let models = settings.as_object_mut().and_then(|s| s.remove("model_settings")).unwrap_or(json!({}));
    let models: std::collections::BTreeMap<String, ModelConfig> =
        match settings_from(models, "model_settings.") {
            Ok(models) => models,
            Err(message) => return bad(message),
        };
    let route: RouteConfig = match settings_from(settings, "") {
        Ok(route) => route,
        Err(message) => return bad(message),
    };
    // Folders on the node are its config file's business: a deploy may only restate those
    // the route has (as a roll-back does).
    if !route.settings.read_only_dirs.is_empty()
        && !node.control().read_only_dirs_of(name).contains(&route.settings.read_only_dirs)
    {
        return bad("`read_only_dirs` name folders on the node: set them in the node's config file".into());
    }
    let files = std::iter::once(&route.component).chain(models.values().map(|model| &model.file));
    if let Some(refusal) = refuse_node_paths(files) {
        return refusal;
    }
    answer("route", name, node.put_route(name, route, models).await)
}

/// Loads or replaces a model from its JSON settings, `file` by digest or `oci://`.
async fn put_model(node: &Node, name: &str, body: &[u8]) -> Response<Body> {
    let parsed = serde_json::from_slice::<Value>(body)
        .map_err(|e| format!("malformed JSON: {e}"))
        .and_then(|settings| settings_from::<ModelConfig>(settings, ""));
    let settings = match parsed {
        Ok(settings) => settings,
        Err(message) => return response::failure(Failure::new(FailureKind::BadRequest, message)),
    };
    if let Some(refusal) = refuse_node_paths([&settings.file]) {
        return refusal;
    }
    answer("model", name, node.put_model(name, settings).await)
}

/// Settings read from JSON; a mistake names the field (under `prefix`).
fn settings_from<T: serde::de::DeserializeOwned>(settings: Value, prefix: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(settings)
        .map_err(|e| format!("field `{prefix}{}`: {}", e.path().clone(), e.into_inner()))
}

/// The 400 for a file given as a path on the node: over the network, files arrive by upload
/// or from a registry; the node's own files are the config file's business.
fn refuse_node_paths<'a>(files: impl IntoIterator<Item = &'a Source>) -> Option<Response<Body>> {
    files.into_iter().find_map(|source| match source {
        Source::File(path) => Some(response::failure(Failure::new(
            FailureKind::BadRequest,
            format!(
                "{} is not a digest or an oci:// reference: upload files first (PUT /admin/artifacts)",
                path.display()
            ),
        ))),
        _ => None,
    })
}

/// What fleet tools need to know of the node.
fn describe_node(node: &Node) -> Response<Body> {
    let (scheme, port) = node.control().public_listener();
    response::json(
        StatusCode::OK,
        &json!({ "version": env!("CARGO_PKG_VERSION"), "scheme": scheme, "port": port }),
    )
}

/// The answer to a change of the route or the model (`kind`) `name`.
fn answer(kind: &str, name: &str, outcome: Result<Outcome, DeployError>) -> Response<Body> {
    match outcome {
        Ok(outcome) => response::json(StatusCode::OK, &json!({ kind: name, "outcome": outcome })),
        Err(error) => change_failed(error),
    }
}

fn list_routes(node: &Node, name: Option<&str>) -> Response<Body> {
    let Some(runtime) = node.runtime() else {
        return response::failure(Failure::new(FailureKind::Unavailable, "the node is still loading"));
    };
    let statuses = node.control().route_statuses(&runtime);
    match name {
        None => response::json(StatusCode::OK, &json!({ "routes": statuses })),
        Some(name) => {
            match statuses.into_iter().find(|status| status.name == name && status.state == "serving") {
                Some(status) => response::json(StatusCode::OK, &json!(status)),
                None => {
                    response::failure(Failure::new(FailureKind::NotFound, format!("no route named {name:?}")))
                }
            }
        }
    }
}

fn list_models(node: &Node) -> Response<Body> {
    let Some(runtime) = node.runtime() else {
        return response::failure(Failure::new(FailureKind::Unavailable, "the node is still loading"));
    };
    let models: Vec<Value> = runtime
        .models()
        .all()
        .iter()
        .map(|model| {
            let settings = runtime.models().loaded(model.name()).map(|loaded| json!(loaded.spec));
            json!({ "name": model.name(), "backend": model.backend(), "settings": settings })
        })
        .collect();
    response::json(StatusCode::OK, &json!({ "models": models }))
}

/// The answer for a change that was not made; one the node is to blame for is logged.
fn change_failed(error: DeployError) -> Response<Body> {
    let failure = Failure::from(error);
    if failure.is_the_nodes() {
        warn!("change failed: {}", failure.message);
    }
    response::failure(failure)
}
