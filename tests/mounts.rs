//! Mount points: third-party applications with their own routers (an axum app built for
//! `wasm32-wasip2` and a componentize-py app, nothing of edge-infer in either) served
//! unmodified at the root route `/` and under a prefix with `strip_mount`, told their mount in
//! headers a client cannot forge; a route that keeps the full path; and the host's own paths,
//! which no route takes, answered first.

mod common;

use common::{Server, build_plain_python_app, client, guest, interpreted_guests, post_json};
use serde_json::{Value, json};

fn config() -> String {
    let app = guest("axum-app");
    format!(
        "{}\n[[routes]]\npath = \"/\"\ncomponent = \"{app}\"\n\n[[routes]]\npath = \"/app\"\ncomponent = \"{app}\"\nstrip_mount = true\n\n[[routes]]\npath = \"/full\"\ncomponent = \"{app}\"\n",
        common::digits_config(),
        app = app.display(),
    )
}

async fn start() -> Server {
    tokio::task::spawn_blocking(|| Server::start(&config())).await.unwrap()
}

async fn get(server: &Server, path: &str) -> (u16, String) {
    let response = client().get(server.url(path)).header("x-edge-mount", "/forged").send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_app_serves_its_own_routes_at_the_root_and_under_a_prefix() {
    let server = start().await;
    for mount in ["", "/app"] {
        assert_eq!(get(&server, &format!("{mount}/")).await, (200, "hello from axum".into()), "{mount}");
        assert_eq!(get(&server, &format!("{mount}/echo/hi?times=2")).await, (200, "hi hi".into()));
        let (status, sum) =
            post_json(&client(), &server.url(&format!("{mount}/sum")), &json!({ "numbers": [1, 2, 3.5] }))
                .await;
        assert_eq!((status, sum), (200, json!({ "sum": 6.5 })), "{mount}");
        let (status, seen) = get(&server, &format!("{mount}/seen?x=1")).await;
        let seen: Value = serde_json::from_str(&seen).unwrap();
        let expected_mount = if mount.is_empty() { "/" } else { mount };
        assert_eq!(
            (status, seen),
            (200, json!({ "path": "/seen", "query": "x=1", "mount": expected_mount, "path_info": "/seen" })),
            "the app sees its own path, and the mount the host set (not the client's)"
        );
        // A path the app has no route for is the app's own 404, not the host's.
        let (status, body) = get(&server, &format!("{mount}/nothing-here")).await;
        assert_eq!(status, 404);
        assert!(!body.contains("no route"), "{body}");
    }
    // The mount itself is the app's `/`.
    assert_eq!(get(&server, "/app").await, (200, "hello from axum".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_path_route_hands_the_guest_its_mount_too_and_host_paths_come_first() {
    let server = start().await;
    // Without strip_mount the app is handed `/full/echo/hi`, which its router does not know.
    let (status, body) = get(&server, "/full/echo/hi").await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("no route"), "the app's 404: {body}");
    // The longest mount wins over the root route.
    let (status, label) =
        post_json(&client(), &server.url("/digits"), &json!({ "pixels": vec![0; 64] })).await;
    assert_eq!(status, 200, "{label}");
    assert!(label["label"].is_u64(), "{label}");
    // Health, metrics and the Open Inference Protocol are the host's, root route or not.
    assert_eq!(get(&server, "/healthz").await, (200, json!({ "live": true }).to_string()));
    let (status, metrics) = get(&server, "/metrics").await;
    assert!(status == 200 && metrics.contains("edge_infer_"), "{status}");
    let (status, model) = get(&server, "/v2/models/digits").await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(serde_json::from_str::<Value>(&model).unwrap()["name"], "digits");
    let (status, unknown) = get(&server, "/v2/no-such-endpoint").await;
    assert_eq!(status, 404);
    assert!(
        serde_json::from_str::<Value>(&unknown).unwrap()["error"].is_string(),
        "the host's JSON 404: {unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_componentize_py_app_serves_its_own_routes_at_the_root_and_under_a_prefix() {
    interpreted_guests(); // installs the pinned componentize-py
    let built = tempfile::tempdir().unwrap();
    let app = built.path().join("router-py.wasm");
    build_plain_python_app("guest/router-py", &app);
    let config = format!(
        "[[routes]]\npath = \"/\"\ncomponent = \"{app}\"\nmemory_mib = 256\n\n[[routes]]\npath = \"/py\"\ncomponent = \"{app}\"\nmemory_mib = 256\nstrip_mount = true\n",
        app = app.display()
    );
    let server = tokio::task::spawn_blocking(move || Server::in_process(&config)).await.unwrap();
    for mount in ["", "/py"] {
        assert_eq!(get(&server, &format!("{mount}/")).await, (200, "hello from python".into()), "{mount}");
        let (status, item) = get(&server, &format!("{mount}/items/7?colour=red")).await;
        assert_eq!(status, 200, "{mount}: {item}");
        assert_eq!(
            serde_json::from_str::<Value>(&item).unwrap(),
            json!({ "item": "7", "query": "colour=red" })
        );
        assert_eq!(
            get(&server, &format!("{mount}/elsewhere")).await,
            (404, "not found by the app: /elsewhere".into()),
            "{mount}: the app's own 404, for the path below the mount"
        );
    }
}
