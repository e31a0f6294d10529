//! Tenants: credentials name them (API keys over REST and gRPC, client certificates over
//! mTLS with curl), each is held to its own limits (429 with `Retry-After`), a node can
//! require credentials (401), and a guest sees its request's tenant, never the key.
//! How tenants share the model queues is in `tests/scheduler.rs`.

mod common;

use std::path::Path;
use std::process::Command;

use common::raw::{grpc_call, grpc_frame};
use common::{Server, client, guest, metric, scrape, wait_for_metric};
use serde_json::Value;

/// The hex SHA-256 digest of `bytes`, as the config names credentials.
fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn config(server: &str, tenants: &str) -> String {
    format!(
        r#"
[server]
{server}

[[routes]]
path = "/hello"
component = "{hello}"

[[routes]]
path = "/test"
component = "{testing}"
timeout_ms = 20000

[tenants.acme]
api_key_sha256 = ["{acme}"]
{tenants}
"#,
        hello = guest("hello").display(),
        testing = guest("testing").display(),
        acme = digest(b"acme-key"),
    )
}

async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_credentials_are_required_requests_without_them_get_401() {
    let server = Server::start(&config("require_credentials = true", ""));
    for headers in [&[][..], &[("x-api-key", "wrong")][..], &[("authorization", "Bearer wrong")][..]] {
        let response = get(&server, "/hello", headers).await;
        assert_eq!(response.status(), 401, "{headers:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains("credentials"), "{error}");
    }
    assert_eq!(get(&server, "/hello", &[("x-api-key", "acme-key")]).await.status(), 200);
    assert_eq!(get(&server, "/hello", &[("authorization", "Bearer acme-key")]).await.status(), 200);
    assert_eq!(get(&server, "/v2/models/none", &[]).await.status(), 401, "the protocol too");
    assert_eq!(get(&server, "/healthz", &[]).await.status(), 200, "health is for anyone");
    let (status, _) = grpc_call(&server.grpc, "ServerMetadata", grpc_frame(&[]), &[]).await;
    assert_eq!(status, 16, "gRPC without credentials: UNAUTHENTICATED");
    let with_key = [("x-api-key", "acme-key")];
    let (status, message) = grpc_call(&server.grpc, "ServerMetadata", grpc_frame(&[]), &with_key).await;
    assert_eq!(status, 0, "{message}");
    let (status, message) = grpc_call(&server.grpc, "ServerLive", grpc_frame(&[]), &[]).await;
    assert_eq!(status, 0, "gRPC health is for anyone: {message}");
    let text = scrape(&server).await;
    assert_eq!(metric(&text, "edge_infer_unauthenticated_requests_total"), 5.0);
    assert_eq!(metric(&text, r#"edge_infer_tenant_requests_total{tenant="acme"}"#), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_own_limits_gets_429_and_the_others_go_on() {
    let tenants = format!(
        "max_concurrency = 1\n\n[tenants.metered]\napi_key_sha256 = [\"{}\"]\nrequests_per_second = 0.5\nburst = 2\n",
        digest(b"metered-key")
    );
    let server = Server::start(&config("", &tenants));
    // acme may have one request in flight: a second while it sleeps is refused.
    let held = tokio::spawn({
        let url = server.url("/test/sleep/5000");
        async move { client().get(url).header("x-api-key", "acme-key").send().await.unwrap().status() }
    });
    wait_for_metric(&server, r#"edge_infer_tenant_requests_in_flight{tenant="acme"}"#, 1.0).await;
    let refused = get(&server, "/hello", &[("x-api-key", "acme-key")]).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = refused.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("max_concurrency"), "{error}");
    let (status, message) =
        grpc_call(&server.grpc, "ServerMetadata", grpc_frame(&[]), &[("x-api-key", "acme-key")]).await;
    assert_eq!(status, 8, "over gRPC: RESOURCE_EXHAUSTED ({message})");
    // Others are not held to acme's limits.
    assert_eq!(get(&server, "/hello", &[]).await.status(), 200);
    // metered may send two at once, then one every two seconds.
    for _ in 0..2 {
        assert_eq!(get(&server, "/hello", &[("x-api-key", "metered-key")]).await.status(), 200);
    }
    let refused = get(&server, "/hello", &[("x-api-key", "metered-key")]).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "retry after {wait} s");
    assert_eq!(held.await.unwrap(), 200);
    let text = scrape(&server).await;
    assert_eq!(metric(&text, r#"edge_infer_tenant_refusals_total{reason="concurrency",tenant="acme"}"#), 2.0);
    assert_eq!(metric(&text, r#"edge_infer_tenant_refusals_total{reason="rate",tenant="metered"}"#), 1.0);
    assert_eq!(metric(&text, r#"edge_infer_requests_total{outcome="rejected",route="/hello"}"#), 2.0);
}

#[tokio::test]
async fn a_guest_sees_its_requests_tenant_and_never_the_key_that_named_it() {
    let server = Server::start(&config("", ""));
    let credentials = |response: reqwest::Response| async move { response.json::<Value>().await.unwrap() };
    let named =
        get(&server, "/test/credentials", &[("x-api-key", "acme-key"), ("x-edge-tenant", "root")]).await;
    let seen = credentials(named).await;
    assert_eq!((&seen["tenant"], &seen["api_key"]), (&"acme".into(), &Value::Null), "{seen}");
    // A bearer token that names no tenant is not a credential: the guest may have its own use
    // for it, and the request is anonymous.
    let unknown = get(&server, "/test/credentials", &[("authorization", "Bearer the-guests-own")]).await;
    let seen = credentials(unknown).await;
    assert_eq!(
        (&seen["tenant"], &seen["authorization"]),
        (&"anonymous".into(), &"Bearer the-guests-own".into())
    );
}

/// Runs the openssl command line in `folder`.
fn openssl(folder: &Path, args: &[&str]) {
    let output = Command::new("openssl").current_dir(folder).args(args).output().expect("openssl");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// New EC keys, made on the spot, for `openssl req`.
const NEW_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// In `folder`: the server's certificate for 127.0.0.1 (`cert.pem`, `key.pem`), a client CA
/// (`ca.pem`) and a client certificate it signed (`client.pem`, `client.key`). Returns the
/// client certificate's DER digest.
fn certificates(folder: &Path) -> String {
    fn request<'a>(rest: &[&'a str]) -> Vec<&'a str> {
        [&["req"][..], &NEW_KEY, rest].concat()
    }
    openssl(
        folder,
        &request(&["-x509", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1"])
            .into_iter()
            .chain(["-subj", "/CN=edge-infer test", "-addext", "subjectAltName=IP:127.0.0.1"])
            .collect::<Vec<_>>(),
    );
    openssl(
        folder,
        &request(&["-x509", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA"]),
    );
    openssl(folder, &request(&["-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=device-7"]));
    // A version 3 certificate for client authentication, as WebPKI verifiers require.
    let extensions = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";
    std::fs::write(folder.join("client.ext"), extensions).unwrap();
    openssl(
        folder,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "1",
            "-extfile",
            "client.ext",
        ],
    );
    openssl(folder, &["x509", "-in", "client.pem", "-outform", "der", "-out", "client.der"]);
    digest(&std::fs::read(folder.join("client.der")).unwrap())
}

#[test]
fn a_client_certificate_names_its_tenant_over_mtls() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let device = certificates(dir);
    let server_settings = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        dir.join("ca.pem").display()
    );
    let tenants = format!("\n[tenants.device]\nclient_cert_sha256 = [\"{device}\"]\n");
    let server = Server::start(&config(&server_settings, &tenants));
    let curl = |extra: &[&str]| {
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--cacert"])
            .arg(dir.join("cert.pem"))
            .args(extra)
            .arg(server.url("/test/credentials"))
            .output()
            .unwrap();
        assert!(output.status.success(), "curl: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    let with_certificate = curl(&["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert_eq!(with_certificate["tenant"], "device", "{with_certificate}");
    assert_eq!(curl(&[])["tenant"], "anonymous", "no certificate: still served, as anonymous");
}
