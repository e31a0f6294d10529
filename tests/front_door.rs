//! `GET /`: what the node serves, as JSON for clients and as a page for browsers.

mod common;

use common::{Server, client, test_config};
use serde_json::Value;

#[tokio::test]
async fn the_front_door_lists_routes_models_and_links() {
    let server = Server::start(&test_config());
    let response = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let index: Value = response.json().await.unwrap();
    assert_eq!(index["ready"], true);
    let paths: Vec<&str> =
        index["routes"].as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/digits", "/hello", "/test"]);
    let digits_route = &index["routes"][0];
    assert_eq!(
        (&digits_route["name"], &digits_route["models"]),
        (&serde_json::json!("digits"), &serde_json::json!(["digits"]))
    );
    let component = digits_route["component"].as_str().unwrap();
    assert!(
        component.starts_with("sha256:") && component.len() == 71,
        "the component by digest: {component}"
    );
    let names: Vec<&str> =
        index["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["digits", "digits-ungranted"]);
    let digits = &index["models"][0];
    assert_eq!(digits["backend"], "tract");
    assert_eq!(digits["inputs"][0]["name"], "pixels");
    assert_eq!(digits["metadata"], "/v2/models/digits");
    // Every link works.
    for link in index["links"].as_object().unwrap().values().chain([&digits["metadata"]]) {
        let status = client().get(server.url(link.as_str().unwrap())).send().await.unwrap().status();
        assert_eq!(status, 200, "{link}");
    }
}

#[tokio::test]
async fn a_browser_gets_a_page() {
    let server = Server::start(&test_config());
    let response =
        client().get(server.url("/")).header("accept", "text/html,*/*;q=0.8").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("<code>/digits</code></td><td>digits</td>"), "{page}");
    assert!(page.contains(">sha256:"), "the component, by digest: {page}");
    assert!(page.contains(r#"<a href="/v2/models/digits">digits</a>"#), "{page}");
    assert!(page.contains(r#"<a href="/metrics">metrics</a>"#), "{page}");
}
