//! HTTPS: with `server.tls_cert` and `server.tls_key`, the node serves over TLS, HTTP/2 and
//! HTTP/1.1 chosen by ALPN, to a real client (curl) that checks the certificate; a plain
//! HTTP request to it gets no answer; a bad key file stops start-up with a clear error.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Server, guest};

/// A self-signed certificate for 127.0.0.1 and its key, made with the openssl command line.
fn self_signed(folder: &Path) {
    let status = Command::new("openssl")
        .current_dir(folder)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=edge-infer test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .output()
        .expect("the openssl command line");
    assert!(status.status.success(), "openssl: {}", String::from_utf8_lossy(&status.stderr));
}

fn config(folder: &Path, key: &str) -> String {
    format!(
        "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n[[routes]]\npath = \"/hello\"\ncomponent = \"{}\"\n",
        folder.join("cert.pem").display(),
        folder.join(key).display(),
        guest("hello").display()
    )
}

/// curl's answer body and HTTP version, checking the server's certificate against `cert`.
fn curl(url: &str, cert: &Path, version: &str) -> (String, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", version, "--cacert"])
        .arg(cert)
        .args(["--write-out", "\n%{http_version}", url])
        .output()
        .expect("curl");
    assert!(output.status.success(), "curl {version}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, version) = text.rsplit_once('\n').unwrap();
    (body.to_string(), version.to_string())
}

#[test]
fn serves_https_over_http2_and_http1_by_alpn() {
    let folder = tempfile::tempdir().unwrap();
    self_signed(folder.path());
    let server = Server::in_process(&config(folder.path(), "key.pem"));
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let cert = folder.path().join("cert.pem");
    let url = server.url("/hello");
    assert_eq!(curl(&url, &cert, "--http2"), (r#"{"served":1}"#.to_string(), "2".to_string()));
    assert_eq!(curl(&url, &cert, "--http1.1"), (r#"{"served":1}"#.to_string(), "1.1".to_string()));

    // Cleartext HTTP to the TLS port is not served.
    let plain = url.replacen("https://", "http://", 1);
    let output = Command::new("curl").args(["--silent", "--max-time", "20", &plain]).output().unwrap();
    assert!(!output.status.success(), "plain HTTP was answered: {}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn a_bad_key_stops_start_up_naming_the_file() {
    let folder = tempfile::tempdir().unwrap();
    self_signed(folder.path());
    std::fs::write(folder.path().join("bad.pem"), "not a key").unwrap();
    let stderr =
        Server::try_in_process(&config(folder.path(), "bad.pem")).err().expect("a bad key must fail");
    assert!(stderr.contains("TLS private key") && stderr.contains("bad.pem"), "{stderr}");
}
