//! The front door: `GET /` says what this node serves. Its routes (path, component, models,
//! limits), its models (backend, batching, inputs and outputs) and links to health, metrics
//! and the Open Inference Protocol, as JSON for clients, or as a small HTML page for a
//! browser (one that asks for `text/html`).

use http::header::ACCEPT;
use http::{HeaderMap, StatusCode};
use hyper::Response;
use serde_json::{Value, json};

use crate::http::protocol::models::{PublishedConfig, describe_model, residency};
use crate::http::response::{self, Body};
use crate::inference::served::ServedModel;
use crate::node::Runtime;
use crate::node::config::{HEALTH_PATH, METRICS_PATH, OIP_PREFIX};

/// Answers `GET /`: HTML if the client asks for it, else JSON.
pub fn respond(runtime: &Runtime, ready: bool, headers: &HeaderMap) -> Response<Body> {
    let index = describe(runtime, ready);
    let wants_html =
        headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
    if wants_html {
        response::text(StatusCode::OK, "text/html; charset=utf-8", html(&index))
    } else {
        response::json(StatusCode::OK, &index)
    }
}

/// The node as JSON.
fn describe(runtime: &Runtime, ready: bool) -> Value {
    let routes: Vec<Value> = runtime
        .routes()
        .iter()
        .map(|route| {
            json!({
                "name": route.name,
                "path": route.path,
                "component": route.spec.component,
                "models": route.spec.models,
                "max_concurrency": route.admission.capacity(),
                "timeout_ms": route.timeout.as_millis() as u64,
                "max_body_bytes": route.max_body_bytes,
            })
        })
        .collect();
    let models: Vec<Value> = runtime
        .models()
        .all()
        .into_iter()
        .map(|model| {
            let mut described = describe_model(model);
            let published = PublishedConfig::of(model);
            described["backend"] = json!(model.backend());
            // Items per run (a pipeline batches in its steps, not as a whole).
            let max_batch_items = match model {
                ServedModel::Single(model) => model.max_batch_items(),
                ServedModel::Pipeline(_) => 0,
            };
            described["max_batch_size"] = json!(max_batch_items);
            described["residency"] = json!(residency(model));
            described["pinned"] = json!(model.pinned());
            described["resident_bytes"] = json!(model.resident_bytes());
            described["max_padding_ratio"] = json!(published.max_padding_ratio);
            described["metadata"] = json!(format!("{OIP_PREFIX}/models/{}", model.name()));
            described["infer"] = json!(format!("{OIP_PREFIX}/models/{}/infer", model.name()));
            described
        })
        .collect();
    json!({
        "name": "edge-infer",
        "version": env!("CARGO_PKG_VERSION"),
        "ready": ready,
        "routes": routes,
        "models": models,
        "links": {
            "live": HEALTH_PATH,
            "ready": format!("{OIP_PREFIX}/health/ready"),
            "metrics": METRICS_PATH,
            "server_metadata": OIP_PREFIX,
        },
    })
}

/// The same, as a page for people.
fn html(index: &Value) -> String {
    let text = |value: &Value| escape(&value.as_str().map_or_else(|| value.to_string(), str::to_string));
    let rows = |items: &Value, cells: &dyn Fn(&Value) -> String| -> String {
        items.as_array().into_iter().flatten().map(|item| format!("<tr>{}</tr>\n", cells(item))).collect()
    };
    let routes = rows(&index["routes"], &|route| {
        let models: Vec<String> = route["models"].as_array().into_iter().flatten().map(&text).collect();
        // The component's digest, shortened as container tools do.
        let component = text(&route["component"]);
        format!(
            "<td><code>{}</code></td><td>{}</td><td title=\"{component}\">{}</td><td>{}</td><td>{}</td><td>{} ms</td>",
            text(&route["path"]),
            text(&route["name"]),
            component.get(..19).unwrap_or(&component),
            models.join(", "),
            route["max_concurrency"],
            route["timeout_ms"],
        )
    });
    let shapes = |tensors: &Value| -> String {
        let described: Vec<String> = tensors
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!("{} {} {}", text(&t["name"]), text(&t["datatype"]), t["shape"]))
            .collect();
        described.join("<br>")
    };
    let models = rows(&index["models"], &|model| {
        format!(
            "<td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            text(&model["metadata"]),
            text(&model["name"]),
            text(&model["backend"]),
            model["max_batch_size"],
            shapes(&model["inputs"]),
            shapes(&model["outputs"]),
        )
    });
    let links = &index["links"];
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>edge-infer</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}</style></head>\n\
         <body><h1>edge-infer {version}</h1>\n<p>{state} · <a href=\"{metrics}\">metrics</a> · \
         <a href=\"{ready}\">readiness</a> · <a href=\"{server}\">Open Inference Protocol</a></p>\n\
         <h2>Routes</h2>\n<table><tr><th>path</th><th>name</th><th>component</th><th>models</th><th>instances</th>\
         <th>timeout</th></tr>\n{routes}</table>\n\
         <h2>Models</h2>\n<table><tr><th>name</th><th>backend</th><th>max batch</th><th>inputs</th>\
         <th>outputs</th></tr>\n{models}</table>\n</body></html>\n",
        version = text(&index["version"]),
        state = if index["ready"] == true { "ready" } else { "not ready" },
        metrics = text(&links["metrics"]),
        ready = text(&links["ready"]),
        server = text(&links["server_metadata"]),
    )
}

/// Text made safe to put in HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_config_cannot_inject_markup() {
        assert_eq!(escape("<script>\"a&b\"</script>"), "&lt;script&gt;&quot;a&amp;b&quot;&lt;/script&gt;");
        let index = json!({
            "version": "1", "ready": true, "links": {},
            "routes": [{ "path": "/<b>", "component": "x.wasm", "models": ["<i>"] }],
            "models": [],
        });
        let page = html(&index);
        assert!(page.contains("/&lt;b&gt;") && page.contains("&lt;i&gt;"), "{page}");
        assert!(!page.contains("<b>") && !page.contains("<i>"));
    }
}
