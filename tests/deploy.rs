//! The control plane over real sockets: deploying a new version of a guest under load and
//! rolling it back with no failed request; broken versions that change nothing; `kill -9`
//! in the middle of deploys; SIGHUP; the admin token; and Triton's repository API with
//! tritonclient.
//!
//! The "new version" of the digits guest is the bundled one with its version marker (the
//! `x-guest-version` header of its answers) changed in its bytes: a different component,
//! with a different digest, answering the same labels.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{
    Admin, Answer, Load, Server, V1, V2, classify_version, client, compat_python, digits_config,
    digits_version, expect_error, guest, metric, repo_file, scrape, wait_for_log, wait_for_logged_times,
};

/// A config with `/digits` and `/hello`.
fn config() -> String {
    format!(
        "{}\n[[routes]]\npath = \"/hello\"\ncomponent = \"{}\"\n",
        digits_config(),
        guest("hello").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_and_a_rollback_under_load_fail_no_request() {
    let server = Server::start(&config());
    let admin = Admin::of(&server);
    let v2 = admin.upload(digits_version(V2)).await;
    let v1 = admin.route("digits").await["component"].as_str().unwrap().to_string();

    let load = Load::start(std::slice::from_ref(&server.base), 4);
    load.wait_for_requests(200).await;
    let response = admin.deploy_component("digits", &v2).await;
    let swapped = Instant::now();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    load.wait_for_requests(200).await;
    // Requests that start while the rollback is under way may meet either version.
    let rolling_back = Instant::now();
    let response =
        admin.request(reqwest::Method::POST, "/admin/routes/digits/rollback").send().await.unwrap();
    let rolled_back = Instant::now();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    load.wait_for_requests(200).await;
    let answers = load.stop().await;
    let failed: Vec<u16> = answers.iter().map(|a| a.status).filter(|s| *s != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), answers.len());
    let version_of = |answer: &Answer| answer.version.as_bytes().to_vec();
    for answer in &answers {
        if answer.started > rolled_back {
            assert_eq!(
                version_of(answer),
                V1,
                "every request after the rollback is answered by the old version"
            );
        } else if answer.started > swapped && answer.started < rolling_back {
            assert_eq!(version_of(answer), V2, "every request after the swap is answered by the new version");
        }
    }
    let on_v2 = answers.iter().filter(|a| version_of(a) == V2).count();
    assert!(on_v2 >= 200, "the new version served: {on_v2}");

    let route = admin.route("digits").await;
    assert_eq!(route["component"], v1.as_str());
    assert_eq!(route["previous_component"], v2.as_str(), "a second rollback goes forward again");
    assert_eq!(route["state"], "serving");
}

/// A `wasi:http/proxy` component (in the component text format, which the node compiles as
/// it does the binary one) whose core module's start function loops: instantiating it never
/// ends.
const SPINS_AT_START: &str = r#"
(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $outparam))
  (core module $spins
    (func $spin (loop $forever (br $forever)))
    (start $spin)
    (func (export "handle") (param i32 i32)))
  (core instance $running (instantiate $spins))
  (func $handle (param "request" (own $request)) (param "response-out" (own $outparam))
    (canon lift (core func $running "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_changes_nothing_and_the_answer_says_why() {
    let server = Server::start(&config());
    let admin = Admin::of(&server);
    let http = client();
    let before = admin.route("digits").await;

    // Not a component at all.
    let response = admin
        .put("digits", |settings| {
            settings.as_object_mut().unwrap().remove("component");
            settings["component_base64"] = json!("bm90IHdhc20=");
        })
        .await;
    let reason = expect_error(response, 422).await;
    assert!(reason.contains("compiling the component"), "{reason}");

    // Imports its route does not allow: the JavaScript guest imports wasi:filesystem.
    let js = std::fs::read(common::interpreted_guests().join("digits-js.wasm")).unwrap();
    let js = admin.upload(js).await;
    let response = admin
        .put("digits", |settings| {
            settings["component"] = json!(js);
            settings["strict_imports"] = json!(true);
            settings["memory_mib"] = json!(256);
        })
        .await;
    let reason = expect_error(response, 422).await;
    assert!(reason.contains("wasi:filesystem/types@"), "the refused import is named: {reason}");

    // A component whose instantiation never ends (a constructor that loops): refused at the
    // route's timeout, and the control plane goes on.
    let spinning = admin.upload(SPINS_AT_START.as_bytes().to_vec()).await;
    let started = std::time::Instant::now();
    let response = admin
        .put("digits", |settings| {
            settings["component"] = json!(spinning);
            settings["timeout_ms"] = json!(1000);
        })
        .await;
    let reason = expect_error(response, 422).await;
    assert!(reason.contains("first instance was not made within the route's timeout"), "{reason}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "bounded by the route's timeout");

    // A component nobody uploaded, and settings that are wrong.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let reason = expect_error(admin.deploy_component("digits", &unknown).await, 422).await;
    assert!(reason.contains("upload it first"), "{reason}");
    let reason = expect_error(admin.put("digits", |s| s["max_concurency"] = json!(2)).await, 400).await;
    assert!(reason.contains("max_concurency"), "{reason}");
    let reason = expect_error(admin.put("digits", |s| s["models"] = json!(["nope"])).await, 400).await;
    assert!(reason.contains("nope"), "{reason}");
    let reason = expect_error(admin.put("hello", |s| s["path"] = json!("/digits")).await, 409).await;
    assert!(reason.contains("/digits"), "{reason}");

    // A model that fails to load, and unloading a model in use.
    let load = |model: &str, body: Value| {
        admin
            .request(reqwest::Method::POST, &format!("/v2/repository/models/{model}/load"))
            .json(&body)
            .send()
    };
    let broken = json!({ "parameters": { "file:1/model.onnx": "bm90IG9ubng=" } });
    let reason = expect_error(load("digits", broken).await.unwrap(), 422).await;
    assert!(reason.contains("loading model \"digits\""), "{reason}");
    let unload =
        admin.request(reqwest::Method::POST, "/v2/repository/models/digits/unload").send().await.unwrap();
    let reason = expect_error(unload, 409).await;
    assert!(reason.contains("used by") && reason.contains("digits"), "{reason}");

    // Without the token: 401, nothing changes.
    let anonymous = http.delete(server.admin_url("/admin/routes/digits")).send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    expect_error(anonymous, 401).await;
    let wrong =
        http.delete(server.admin_url("/admin/routes/digits")).bearer_auth("0".repeat(64)).send().await;
    expect_error(wrong.unwrap(), 401).await;
    let on_main = http.post(server.url("/v2/repository/models/digits/unload")).send().await.unwrap();
    expect_error(on_main, 401).await;

    assert_eq!(admin.route("digits").await["component"], before["component"]);
    assert_eq!(classify_version(&http, &server.base).await, (200, "digits-guest-v1".into()));
    // Refused changes are counted: the component, the import, the spinning start, the model
    // name, the path, the model file, the unload.
    let metrics = scrape(&server).await;
    assert_eq!(metric(&metrics, r#"edge_infer_deploys_total{outcome="refused"}"#), 7.0);
    assert_eq!(metric(&metrics, r#"edge_infer_deploys_total{outcome="applied"}"#), 1.0, "start-up");
    let response =
        admin.request(reqwest::Method::POST, "/admin/routes/digits/rollback").send().await.unwrap();
    assert!(expect_error(response, 409).await.contains("no previous version"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deploys_leaves_the_old_or_the_new_version_serving() {
    let state = tempfile::tempdir().unwrap();
    let start = || Server::try_start_on_state(&config(), state.path(), "info", &[]).unwrap();
    let mut server = start();
    let http = client();
    let v2 = Admin::of(&server).upload(digits_version(V2)).await;
    let v1 = Admin::of(&server).route("digits").await["component"].as_str().unwrap().to_string();

    // Kill at each step of a deploy: just after it is asked for, once the new version is
    // built, once it is saved, once it serves.
    let points = [None, Some("deploy built"), Some("deploy saved"), Some("deploy serving")];
    for (round, point) in points.iter().enumerate() {
        let admin = Admin::of(&server);
        let serving = admin.route("digits").await["component"].as_str().unwrap().to_string();
        let next = if serving == v1 { v2.clone() } else { v1.clone() };
        // With no point: as soon as the deploy's PUT is on its way (right after its GET).
        let needle = point.unwrap_or("method=GET path=/admin/routes/digits");
        let seen = server.logs().matches(needle).count();
        let deploy = tokio::spawn({
            let next = next.clone();
            async move { admin.deploy_component("digits", &next).await.status() }
        });
        wait_for_logged_times(&server, needle, seen + 1).await;
        server.signal("KILL");
        let _ = deploy.await;
        drop(server);

        server = start();
        let now = Admin::of(&server).route("digits").await["component"].as_str().unwrap().to_string();
        assert!(now == serving || now == next, "round {round}: serving {now}, neither old nor new");
        if matches!(point, Some("deploy saved" | "deploy serving")) {
            assert_eq!(now, next, "round {round}: once saved, the new version is what restarts");
        }
        let expected: &[u8] = if now == v1 { V1 } else { V2 };
        let (status, version) = classify_version(&http, &server.base).await;
        assert_eq!((status, version.as_bytes()), (200, expected), "round {round}");
    }

    // Killed in the middle of an upload: the partial file is cleaned up, nothing changes.
    let before = Admin::of(&server).route("digits").await["component"].clone();
    let mut upload = std::net::TcpStream::connect(server.admin.trim_start_matches("http://")).unwrap();
    let head = format!(
        "PUT /admin/artifacts HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 1000000\r\n\r\n",
        server.admin_token()
    );
    std::io::Write::write_all(&mut upload, head.as_bytes()).unwrap();
    std::io::Write::write_all(&mut upload, &[0u8; 300_000]).unwrap();
    let partial = || {
        std::fs::read_dir(state.path().join("artifacts"))
            .unwrap()
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().starts_with("upload-"))
    };
    wait_for_log(&server, "receiving an artifact").await;
    assert!(partial(), "the upload is being written to the state folder");
    server.signal("KILL");
    drop(server);
    let server = start();
    assert!(!partial(), "the partial upload is removed at start-up");
    assert_eq!(Admin::of(&server).route("digits").await["component"], before);
    assert_eq!(classify_version(&http, &server.base).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_a_deploy_restarts_on_the_old_or_the_new_version() {
    let http = client();
    // Once the new version is saved, it is what a restart serves; before, the old one.
    for (step, new_survives) in [("built", false), ("saved", true), ("serving", true)] {
        let state = tempfile::tempdir().unwrap();
        let crash_at = [("EDGE_INFER_CRASH_AT", Path::new(step))];
        let crashing = Server::try_start_on_state(&config(), state.path(), "info", &crash_at).unwrap();
        let admin = Admin::of(&crashing);
        let old = admin.route("digits").await["component"].clone();
        let new = admin.upload(digits_version(V2)).await;
        let mut settings = admin.route("digits").await["settings"].clone();
        settings["component"] = json!(new);
        let answered =
            admin.request(reqwest::Method::PUT, "/admin/routes/digits").json(&settings).send().await;
        assert!(answered.is_err(), "{step}: the process aborted before answering");
        assert!(!crashing.wait(Duration::from_secs(30)).success(), "{step}: it crashed");

        let server = Server::try_start_on_state(&config(), state.path(), "info", &[]).unwrap();
        let serving = Admin::of(&server).route("digits").await["component"].clone();
        let (expected_component, expected_version) = if new_survives { (json!(new), V2) } else { (old, V1) };
        assert_eq!(serving, expected_component, "{step}");
        let (status, version) = classify_version(&http, &server.base).await;
        assert_eq!((status, version.as_bytes()), (200, expected_version), "{step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_what_was_deployed_and_sighup_applies_the_edited_file() {
    let state = tempfile::tempdir().unwrap();
    let server = Server::try_start_on_state(&config(), state.path(), "info", &[]).unwrap();
    let admin = Admin::of(&server);
    let http = client();
    // Through the API: a new digits version, and a second route for hello.
    let v2 = admin.upload(digits_version(V2)).await;
    assert_eq!(admin.deploy_component("digits", &v2).await.status(), 200);
    let hello = admin.route("hello").await["settings"].clone();
    let mut greeter = hello.clone();
    greeter["path"] = json!("/greet");
    let response =
        admin.request(reqwest::Method::PUT, "/admin/routes/greeter").json(&greeter).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "created");
    let deleted = admin.request(reqwest::Method::DELETE, "/admin/routes/hello").send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    server.terminate();
    server.wait(Duration::from_secs(30));

    // Restarted with the same file: what the API deployed is served.
    let server = Server::try_start_on_state(&config(), state.path(), "info", &[]).unwrap();
    assert_eq!(classify_version(&http, &server.base).await, (200, "digits-guest-v2".into()));
    assert_eq!(http.get(server.url("/greet")).send().await.unwrap().status(), 200);
    let hello = http.get(server.url("/hello")).send().await.unwrap();
    assert_eq!(hello.status(), 404, "deleted through the API, it stays deleted: the file did not change");

    // The file edited (digits' timeout, hello's cap), applied on SIGHUP.
    let edited = format!(
        "{}\n[[routes]]\npath = \"/hello\"\ncomponent = \"{}\"\nmax_concurrency = 3\n",
        digits_config().replace("models = [\"digits\"]", "models = [\"digits\"]\ntimeout_ms = 1234"),
        guest("hello").display()
    );
    std::fs::write(server.config_path(), edited).unwrap();
    server.signal("HUP");
    wait_for_log(&server, "SIGHUP: config file applied").await;
    let admin = Admin::of(&server);
    assert_eq!(admin.route("hello").await["settings"]["max_concurrency"], 3, "its entry changed: back");
    let digits = admin.route("digits").await;
    assert_eq!(digits["settings"]["timeout_ms"], 1234, "the file's new word wins over the API's");
    assert_eq!(classify_version(&http, &server.base).await, (200, "digits-guest-v1".into()));
    assert_eq!(http.get(server.url("/greet")).send().await.unwrap().status(), 200, "the API's route stays");

    // A broken file changes nothing.
    std::fs::write(server.config_path(), "[[routes]]\npath = \"nope\"").unwrap();
    server.signal("HUP");
    wait_for_log(&server, "SIGHUP: config file not applied").await;
    assert_eq!(classify_version(&http, &server.base).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_configuration_rebuilds_the_routes_that_use_it() {
    let server = Server::start(&config());
    let admin = Admin::of(&server);
    let http = client();
    let config = json!({ "max_batch_size": 4, "dynamic_batching": { "max_queue_delay_microseconds": 100 } });
    let body = json!({ "parameters": { "config": config.to_string() } });
    let response = admin
        .request(reqwest::Method::POST, "/v2/repository/models/digits/load")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "replaced");
    let published: Value =
        http.get(server.url("/v2/models/digits/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(published["max_batch_size"], 4);
    assert_eq!(published["dynamic_batching"]["max_queue_delay_microseconds"], 100);
    let models: Value =
        admin.request(reqwest::Method::GET, "/admin/models").send().await.unwrap().json().await.unwrap();
    assert_eq!(models["models"][0]["settings"]["batching"], "on");
    // The route was rebuilt on the new model, and answers.
    assert_eq!(classify_version(&http, &server.base).await, (200, "digits-guest-v1".into()));
    let unknown =
        admin.request(reqwest::Method::POST, "/v2/repository/models/nothing/load").send().await.unwrap();
    assert!(expect_error(unknown, 404).await.contains("send its file"));
}

#[test]
fn an_admin_api_beyond_this_machine_needs_a_token_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_edge-infer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin_token_file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_loads_infers_and_unloads_a_model() {
    let python = tokio::task::spawn_blocking(compat_python).await.unwrap();
    let server = Server::start(&config());
    let address = server.base.trim_start_matches("http://").to_string();
    let (token, model) = (server.admin_token(), repo_file("models/digits/digits.onnx"));
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo_file("tests/compat/tritonclient_repository.py"))
            .args([address.as_str(), token.as_str()])
            .arg(Path::new(&model))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "tritonclient failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
