//! Shared by the integration tests: start a real node on ephemeral ports with a config written
//! for the test (the `edge-infer` binary as a child process, or the library's node inside the
//! test's process where no process boundary is under test), talk to it over real HTTP, and
//! stop it.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

pub mod in_process;
pub mod ocr;
pub mod registry;

/// How long a server may take to load its models and components.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running node, stopped when dropped: `edge-infer serve` in a child process (killed), or a
/// node in this process ([`Server::in_process`]).
pub struct Server {
    host: Host,
    /// Everything the server wrote to stderr so far (drained by a thread, so the server
    /// never blocks on a full pipe).
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Notified each time the draining thread appends to `stderr`.
    logged: Arc<Condvar>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The admin API's `http://127.0.0.1:PORT`.
    pub admin: String,
    /// The gRPC listener's `127.0.0.1:PORT`.
    pub grpc: String,
    /// The state folder it was started with.
    pub state_dir: PathBuf,
    _config_dir: tempfile::TempDir,
}

/// Where a [`Server`] runs.
enum Host {
    Process(Child),
    InProcess(in_process::InProcessNode),
}

impl Server {
    /// Starts a node with `config` (TOML) inside this process through the library, and waits
    /// until it is ready. Its log, metrics and memory are the test process's: tests of those
    /// use [`Server::start`].
    pub fn in_process(config: &str) -> Server {
        Self::try_in_process(config)
            .unwrap_or_else(|error| panic!("the in-process node did not start: {error}"))
    }

    /// Starts a node with `config` inside this process; on failure returns the library's
    /// error, as [`Server::try_start`] returns what the process wrote.
    pub fn try_in_process(config: &str) -> Result<Server, String> {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let (node, addresses) = in_process::start(config, dir.path(), &state_dir, START_TIMEOUT)?;
        Ok(Self::of_node(node, addresses, dir, state_dir))
    }

    /// Starts the bundled examples inside this process, as [`Server::in_process`] does.
    pub fn in_process_bundled() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let (node, addresses) = in_process::start_bundled(&state_dir, START_TIMEOUT)
            .unwrap_or_else(|error| panic!("the in-process node did not start: {error}"));
        Self::of_node(node, addresses, dir, state_dir)
    }

    fn of_node(
        node: in_process::InProcessNode,
        addresses: edge_infer::serving::Addresses,
        config_dir: tempfile::TempDir,
        state_dir: PathBuf,
    ) -> Server {
        let scheme = if addresses.tls { "https" } else { "http" };
        Server {
            host: Host::InProcess(node),
            stderr: Arc::default(),
            logged: Arc::default(),
            base: format!("{scheme}://{}", addresses.public),
            admin: format!("{scheme}://{}", addresses.admin),
            grpc: addresses.grpc.to_string(),
            state_dir,
            _config_dir: config_dir,
        }
    }

    /// The server's process id.
    fn pid(&self) -> u32 {
        match &self.host {
            Host::Process(child) => child.id(),
            Host::InProcess(_) => {
                panic!("an in-process node shares the test's process: start it with Server::start")
            }
        }
    }

    /// Starts the server with `config` (TOML) and waits until it listens.
    pub fn start(config: &str) -> Server {
        Self::try_start(config).unwrap_or_else(|stderr| panic!("the server did not start:\n{stderr}"))
    }

    /// Starts the server with no config: the bundled examples.
    pub fn start_bundled() -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn(&[], "warn", &[], dir, None)
            .unwrap_or_else(|stderr| panic!("the server did not start:\n{stderr}"))
    }

    /// Starts the server with no config (the bundled examples) on the state folder
    /// `state_dir`, which outlives it, logging at `level`.
    pub fn start_bundled_on_state(state_dir: &Path, level: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn(&[], level, &[], dir, Some(state_dir))
            .unwrap_or_else(|stderr| panic!("the server did not start:\n{stderr}"))
    }

    /// Starts the server with `config`; on failure returns what it wrote to stderr.
    pub fn try_start(config: &str) -> Result<Server, String> {
        Self::try_start_logging(config, "warn", "text")
    }

    /// Starts the server with `config`, logging at `level` in `format` (text or json).
    pub fn start_logging(config: &str, level: &str, format: &str) -> Server {
        Self::try_start_logging(config, level, format)
            .unwrap_or_else(|stderr| panic!("did not start:\n{stderr}"))
    }

    fn try_start_logging(config: &str, level: &str, format: &str) -> Result<Server, String> {
        Self::try_start_with_env(config, level, format, &[])
    }

    /// Starts the server with `config` and extra environment variables, logging at `level`
    /// in `format`; on failure returns what it wrote to stderr.
    pub fn try_start_with_env(
        config: &str,
        level: &str,
        format: &str,
        env: &[(&str, &std::path::Path)],
    ) -> Result<Server, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge-infer.toml");
        std::fs::write(&path, config).unwrap();
        let args = ["--config".as_ref(), path.as_os_str(), "--log-format".as_ref(), format.as_ref()];
        Self::spawn(&args, level, env, dir, None)
    }

    /// Starts the server with `config` (logging at `level`) on the state folder `state_dir`,
    /// which outlives it: a later server started on it serves what this one deployed.
    /// With `env`, extra environment variables.
    pub fn try_start_on_state(
        config: &str,
        state_dir: &Path,
        level: &str,
        env: &[(&str, &std::path::Path)],
    ) -> Result<Server, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge-infer.toml");
        std::fs::write(&path, config).unwrap();
        Self::spawn(&["--config".as_ref(), path.as_os_str()], level, env, dir, Some(state_dir))
    }

    /// Starts `binary` (another build of edge-infer, for comparisons) with `config`.
    pub fn start_from(binary: &Path, config: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge-infer.toml");
        std::fs::write(&path, config).unwrap();
        Self::spawn_binary(binary, &["--config".as_ref(), path.as_os_str()], "warn", &[], dir, None)
            .unwrap_or_else(|stderr| panic!("{} did not start:\n{stderr}", binary.display()))
    }

    /// Starts `binary` (another build of edge-infer, for comparisons) with the bundled examples.
    pub fn start_bundled_from(binary: &Path) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn_binary(binary, &[], "warn", &[], dir, None)
            .unwrap_or_else(|stderr| panic!("{} did not start:\n{stderr}", binary.display()))
    }

    fn spawn(
        args: &[&std::ffi::OsStr],
        level: &str,
        env: &[(&str, &std::path::Path)],
        config_dir: tempfile::TempDir,
        state_dir: Option<&Path>,
    ) -> Result<Server, String> {
        Self::spawn_binary(&binary(), args, level, env, config_dir, state_dir)
    }

    fn spawn_binary(
        binary: &Path,
        args: &[&std::ffi::OsStr],
        level: &str,
        env: &[(&str, &std::path::Path)],
        config_dir: tempfile::TempDir,
        state_dir: Option<&Path>,
    ) -> Result<Server, String> {
        let state_dir = state_dir.map_or_else(|| config_dir.path().join("state"), Path::to_path_buf);
        let mut child = Command::new(binary)
            .arg("serve")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
            ])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(args)
            .envs(env.iter().map(|(name, value)| (*name, *value)))
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting edge-infer");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut stderr_pipe = child.stderr.take().unwrap();
        let logged = Arc::new(Condvar::new());
        let (stderr_sink, logged_signal) = (stderr.clone(), logged.clone());
        let drained = std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut buffer) {
                stderr_sink.lock().unwrap().extend_from_slice(&buffer[..n]);
                logged_signal.notify_all();
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            // Three lines once ready: the main listener's address, the admin API's, gRPC's.
            let mut reader = BufReader::new(stdout);
            let (mut line, mut admin, mut grpc) = (String::new(), String::new(), String::new());
            let _ = reader.read_line(&mut line);
            let _ = reader.read_line(&mut admin);
            let _ = reader.read_line(&mut grpc);
            let _ = sender.send((line, admin, grpc));
            // Keep reading, so the server never writes to a closed pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let last_word = |line: &str| line.trim().rsplit(' ').next().unwrap().to_string();
        match receiver.recv_timeout(START_TIMEOUT) {
            Ok((line, admin, grpc)) if line.contains("listening on ") && grpc.contains("gRPC on ") => {
                let (base, admin) = (last_word(&line), last_word(&admin));
                let grpc =
                    last_word(&grpc).trim_start_matches("grpc://").trim_start_matches("grpcs://").to_string();
                let host = Host::Process(child);
                Ok(Server { host, stderr, logged, base, admin, grpc, state_dir, _config_dir: config_dir })
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                // The process is gone: the draining thread ends at the end of its stderr.
                let _ = drained.join();
                Err(String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned())
            }
        }
    }

    /// What the server has logged so far (a process's stderr).
    pub fn logs(&self) -> String {
        self.pid();
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Kibibytes of one `/proc/PID/status` line of the server, e.g. `VmRSS` or `VmHWM` (peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Runs `work`; returns what it gave, and by how much the server's resident memory
    /// peaked meanwhile above what it held when `work` began, in MiB (the kernel's peak is
    /// reset first).
    pub async fn memory_growth_mib<T>(&self, work: impl std::future::Future<Output = T>) -> (T, f64) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
        let before_kib = self.memory_kib("VmRSS");
        let output = work.await;
        (output, self.memory_kib("VmHWM").saturating_sub(before_kib) as f64 / 1024.0)
    }

    /// The config file it was started with (rewrite it, then send SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self._config_dir.path().join("edge-infer.toml")
    }

    /// The admin API's URL for `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// The admin token the server made in its state folder.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("admin-token")).unwrap()
    }

    /// Sends `signal` (a name for kill(1): TERM, HUP, KILL).
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        let Host::Process(child) = &mut self.host else { panic!("an in-process node is not a process") };
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the server did not exit in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Host::Process(child) = &mut self.host {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `edge-infer` binary, to run one of its commands.
pub fn edge_infer() -> Command {
    Command::new(binary())
}

/// The `edge-infer` binary: this build's, or `EDGE_INFER_BIN` where a compiled benchmark runs
/// on another machine (benches/gpu.sh).
fn binary() -> PathBuf {
    std::env::var_os("EDGE_INFER_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_edge-infer")), PathBuf::from)
}

/// A built guest component: from this build, or from `EDGE_INFER_GUEST_DIR` if set at run time.
pub fn guest(name: &str) -> PathBuf {
    let folder = std::env::var_os("EDGE_INFER_GUEST_DIR")
        .map_or_else(|| PathBuf::from(env!("EDGE_INFER_GUEST_DIR")), PathBuf::from);
    folder.join(format!("{name}.wasm"))
}

/// Builds the Python and JavaScript guests with guest/build-py-js.sh, once per test binary
/// (the script skips what is up to date), and returns the folder they are in.
pub fn interpreted_guests() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let folder = guest("digits").parent().unwrap().to_path_buf();
            let status = Command::new(repo_file("guest/build-py-js.sh")).arg(&folder).status().unwrap();
            assert!(
                status.success(),
                "guest/build-py-js.sh failed: it needs python3 with venv and pip, node and npm, and \
                 access to PyPI and npm (see guest/README.md)"
            );
            folder
        })
        .clone()
}

/// The pinned componentize-py that guest/build-py-js.sh installs (call
/// [`interpreted_guests`] first).
pub fn componentize_py() -> PathBuf {
    Path::new(&std::env::var("HOME").unwrap()).join(".cache/edge-infer-guest-tools/bin/componentize-py")
}

/// Builds the Python guest `app.py` in `folder` into `out` as the guide does: the pinned
/// componentize-py, the repo's WIT and its Python SDK (call [`interpreted_guests`] first).
pub fn build_python_guest(folder: &Path, out: &Path) {
    run_tool(
        Command::new(componentize_py()).current_dir(folder).args([
            "-d",
            &repo_file("wit").display().to_string(),
            "-w",
            "edge-infer:guest/inference",
            "componentize",
            "-p",
            ".",
            "-p",
            &repo_file("guest/sdk-py").display().to_string(),
            "app",
            "-o",
            &out.display().to_string(),
        ]),
        "componentize-py",
    );
}

/// Builds `app.py` in `folder` into `out` as a plain `wasi:http/proxy` component, without the
/// edge-infer helper, as any componentize-py user would (call [`interpreted_guests`] first).
pub fn build_plain_python_app(folder: &str, out: &Path) {
    run_tool(
        Command::new(componentize_py())
            .args([
                "-d",
                &repo_file("wit").display().to_string(),
                "-w",
                "wasi:http/proxy@0.2.12",
                "componentize",
            ])
            .args(["-p", &repo_file(folder).display().to_string(), "app", "-o"])
            .arg(out),
        "componentize-py",
    );
}

/// Runs a build tool, failing the test with its output if it fails.
pub fn run_tool(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let log =
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed:\n{log}");
}

/// A Python with tests/compat/requirements.txt installed: EDGE_INFER_PYTHON if set (.ci/run
/// sets it), else the virtual environment ~/.cache/edge-infer-venv, made and filled from PyPI
/// on first use. If that fails, the test fails saying how to install by hand.
pub fn compat_python() -> String {
    if let Ok(python) = std::env::var("EDGE_INFER_PYTHON") {
        return python;
    }
    let venv = std::path::Path::new(&std::env::var("HOME").unwrap()).join(".cache/edge-infer-venv");
    let python = venv.join("bin/python").display().to_string();
    let ready = || {
        Command::new(&python)
            .args(["-c", "import tritonclient.http, tritonclient.grpc, numpy, onnxruntime, kubernetes_validate, bcrypt"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let requirements = repo_file("tests/compat/requirements.txt");
        let made =
            Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
                && Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "-r"])
                    .arg(&requirements)
                    .status()
                    .is_ok_and(|s| s.success());
        assert!(
            made && ready(),
            "cannot set up Python with tests/compat/requirements.txt in {}: install it by hand with\n  \
             python3 -m venv {0} && {0}/bin/pip install -r {}\nor point EDGE_INFER_PYTHON at a Python that has it",
            venv.display(),
            requirements.display()
        );
    }
    python
}

/// The ONNX Runtime shared library of the compat Python's `onnxruntime` wheel.
pub fn onnxruntime_library() -> PathBuf {
    let python = compat_python();
    let script = "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))";
    let output = Command::new(python).args(["-c", script]).output().unwrap();
    let folder = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("libonnxruntime.so"))
        .unwrap_or_else(|| panic!("no libonnxruntime.so in {}", folder.display()))
}

/// A file of the repo.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub const V1: &[u8] = b"digits-guest-v1";
pub const V2: &[u8] = b"digits-guest-v2";

/// The digits guest with its version marker replaced by `marker`.
pub fn digits_version(marker: &[u8]) -> Vec<u8> {
    let mut bytes = std::fs::read(guest("digits")).unwrap();
    let at: Vec<usize> =
        bytes.windows(V1.len()).enumerate().filter(|(_, w)| *w == V1).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 1, "the marker appears once in the guest");
    bytes[at[0]..at[0] + marker.len()].copy_from_slice(marker);
    bytes
}

/// The digits model and the Rust `/digits` route, as a config fragment.
pub fn digits_config() -> String {
    format!(
        "[models.digits]\nfile = \"{}\"\n\n[[routes]]\npath = \"/digits\"\ncomponent = \"{}\"\nmodels = [\"digits\"]\n",
        repo_file("models/digits/digits.onnx").display(),
        guest("digits").display()
    )
}

/// The config most tests use: the digits model, the example guests and the test guest.
pub fn test_config() -> String {
    format!(
        r#"
[models.digits]
file = "{digits}"
executors = 2

[models.digits-ungranted]
file = "{digits}"
executors = 1

[[routes]]
path = "/digits"
component = "{digits_guest}"
models = ["digits"]
max_body_bytes = 65536

[[routes]]
path = "/hello"
component = "{hello}"

[[routes]]
path = "/test"
component = "{testing}"
models = ["digits"]
timeout_ms = 1000
memory_mib = 16
"#,
        digits = repo_file("models/digits/digits.onnx").display(),
        digits_guest = guest("digits").display(),
        hello = guest("hello").display(),
        testing = guest("testing").display(),
    )
}

/// The held-out split the digits model was never trained on: images and labels.
pub fn digits_test_split() -> (Vec<Vec<u8>>, Vec<usize>) {
    let text = std::fs::read_to_string(repo_file("models/digits/test_split.json")).unwrap();
    let split: Value = serde_json::from_str(&text).unwrap();
    let pixels = serde_json::from_value(split["pixels"].clone()).unwrap();
    let labels = serde_json::from_value(split["labels"].clone()).unwrap();
    (pixels, labels)
}

/// An HTTP/1.1 client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// POSTs a JSON body and returns the status and the parsed JSON answer.
pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client.post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Classifies one image through `/digits` and returns the label.
pub async fn classify(client: &reqwest::Client, server: &Server, image: &[u8]) -> usize {
    let (status, body) =
        post_json(client, &server.url("/digits"), &serde_json::json!({ "pixels": image })).await;
    assert_eq!(status, 200, "{body}");
    body["label"].as_u64().unwrap() as usize
}

/// Classifies one image on `/digits`: the status and the guest version that answered.
pub async fn classify_version(http: &reqwest::Client, base: &str) -> (u16, String) {
    let image = serde_json::json!({ "pixels": [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0] });
    match http.post(format!("{base}/digits")).json(&image).send().await {
        Ok(response) => {
            let version = response
                .headers()
                .get("x-guest-version")
                .map_or_else(String::new, |v| v.to_str().unwrap().to_string());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            // A 200 without a label is no answer either.
            (if status == 200 && !body["label"].is_u64() { 0 } else { status }, version)
        }
        Err(_) => (0, String::new()),
    }
}

/// The admin API, with the server's token.
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    pub fn of(server: &Server) -> Admin {
        Self::with_token(server, server.admin_token())
    }

    /// The server's admin API, with `token` (for a server given a token file).
    pub fn with_token(server: &Server, token: String) -> Admin {
        Admin { http: client(), base: server.admin.clone(), token }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let response =
            self.request(reqwest::Method::PUT, "/admin/artifacts").body(bytes).send().await.unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["digest"].as_str().unwrap().to_string()
    }

    pub async fn route(&self, name: &str) -> Value {
        let response =
            self.request(reqwest::Method::GET, &format!("/admin/routes/{name}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// PUTs the route `name` with its current settings changed by `change`.
    pub async fn put(&self, name: &str, change: impl FnOnce(&mut Value)) -> reqwest::Response {
        let mut settings = self.route(name).await["settings"].clone();
        change(&mut settings);
        self.request(reqwest::Method::PUT, &format!("/admin/routes/{name}"))
            .json(&settings)
            .send()
            .await
            .unwrap()
    }

    pub async fn deploy_component(&self, name: &str, digest: &str) -> reqwest::Response {
        self.put(name, |settings| settings["component"] = serde_json::json!(digest)).await
    }
}

/// One request a load client made: when it started, its status, its guest version.
pub struct Answer {
    pub started: std::time::Instant,
    pub base: String,
    pub status: u16,
    pub version: String,
}

/// Load on `/digits`: clients each sending one request after another until stopped.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// How many requests have been answered.
    answered: tokio::sync::watch::Receiver<usize>,
    clients: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Load {
    /// Starts `per_server` clients on each server of `bases`.
    pub fn start(bases: &[String], per_server: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, answered) = tokio::sync::watch::channel(0usize);
        let done = Arc::new(done);
        let clients = bases
            .iter()
            .flat_map(|base| std::iter::repeat_n(base.clone(), per_server))
            .map(|base| {
                let (stop, done) = (stop.clone(), done.clone());
                tokio::spawn(async move {
                    let http = client();
                    let mut answers = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = std::time::Instant::now();
                        let (status, version) = classify_version(&http, &base).await;
                        answers.push(Answer { started, base: base.clone(), status, version });
                        done.send_modify(|count| *count += 1);
                    }
                    answers
                })
            })
            .collect();
        Load { stop, answered, clients }
    }

    /// Waits until `count` more requests have been answered.
    pub async fn wait_for_requests(&self, count: usize) {
        let mut answered = self.answered.clone();
        let target = *answered.borrow() + count;
        answered.wait_for(|done| *done >= target).await.unwrap();
    }

    /// Stops the clients and returns every answer.
    pub async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut answers = Vec::new();
        for client in self.clients {
            answers.extend(client.await.unwrap());
        }
        answers
    }
}

/// Asserts that a response is a JSON error with `status` and returns its message.
pub async fn expect_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}")).to_string()
}

/// An Open Inference Protocol request for MiniLM (`input_ids`, `attention_mask`,
/// `token_type_ids`) of one eight-token text, asking for `last_hidden_state`.
pub fn minilm_eight_tokens() -> Value {
    let input = |name: &str, data: Vec<i64>| serde_json::json!({ "name": name, "shape": [1, 8], "datatype": "INT64", "data": data });
    serde_json::json!({
        "inputs": [
            input("input_ids", vec![101, 2023, 2003, 1037, 3231, 6251, 1012, 102]),
            input("attention_mask", vec![1; 8]),
            input("token_type_ids", vec![0; 8]),
        ],
        "outputs": [{ "name": "last_hidden_state" }],
    })
}

/// The cosine similarity of two vectors (embeddings against their reference).
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The server's `/metrics` text.
pub async fn scrape(server: &Server) -> String {
    client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of one series in a `/metrics` text, e.g.
/// `edge_infer_model_inferences_total{model="slow"}`; 0 if it is absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Waits until the server has logged a line containing `needle`, for at most 20 s: woken by
/// each write the server makes to its log.
pub async fn wait_for_log(server: &Server, needle: &str) {
    wait_for_logged_times(server, needle, 1).await;
}

/// Waits until the server has logged lines containing `needle` at least `times` times in all,
/// for at most 60 s, woken each time it logs.
pub async fn wait_for_logged_times(server: &Server, needle: &str, times: usize) {
    server.pid();
    let (stderr, logged, needle) = (server.stderr.clone(), server.logged.clone(), needle.to_string());
    let found = tokio::task::spawn_blocking(move || {
        let short = |log: &mut Vec<u8>| String::from_utf8_lossy(log).matches(needle.as_str()).count() < times;
        let (_log, waited) =
            logged.wait_timeout_while(stderr.lock().unwrap(), Duration::from_secs(60), short).unwrap();
        !waited.timed_out()
    });
    assert!(found.await.unwrap(), "never logged the line {times} times:\n{}", server.logs());
}

/// Polls `/metrics` until `series` reaches `value`, for at most 20 s.
pub async fn wait_for_metric(server: &Server, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(server).await;
        if metric(&text, series) == value {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{series} never reached {value}:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub mod raw {
    //! Clients that speak the protocols by hand, to do what well-behaved clients never do.

    use std::net::IpAddr;

    use bytes::Bytes;
    use tokio::net::{TcpSocket, TcpStream};

    /// A connection to `address` from the local address `from` (any loopback address reaches a
    /// node listening on 127.0.0.1, so one machine can be several clients), or from the
    /// default one.
    pub async fn connect(address: &str, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
        let Some(from) = from else { return TcpStream::connect(address).await };
        let target: std::net::SocketAddr = address.parse().expect("an IP address and a port");
        let socket = if from.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind((from, 0).into())?;
        socket.connect(target).await
    }

    /// One gRPC message, framed: a flag byte and the big-endian length, then the message.
    pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(message.len() + 5);
        frame.push(0);
        frame.extend((message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    /// The status [`grpc_call`] gives when the call got no answer: its connection broke.
    pub const NO_ANSWER: i32 = -1;

    /// Calls `method` of the inference service at `address` (`HOST:PORT`) with `body` (framed
    /// messages) and `metadata`, over a fresh HTTP/2 connection; returns the `grpc-status`
    /// and `grpc-message` of the answer (from its headers or its trailers), or [`NO_ANSWER`]
    /// and the error if the connection broke first.
    pub async fn grpc_call(
        address: &str,
        method: &str,
        body: impl Into<Bytes>,
        metadata: &[(&str, &str)],
    ) -> (i32, String) {
        grpc_call_from(None, address, method, body, metadata).await
    }

    /// [`grpc_call`] from the local address `from` (see [`connect`]).
    pub async fn grpc_call_from(
        from: Option<IpAddr>,
        address: &str,
        method: &str,
        body: impl Into<Bytes>,
        metadata: &[(&str, &str)],
    ) -> (i32, String) {
        let connected = match connect(address, from).await {
            Ok(tcp) => h2::client::handshake(tcp).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let (client, connection) = match connected {
            Ok(connected) => connected,
            Err(error) => return (NO_ANSWER, error),
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let Ok(mut client) = client.ready().await else { return (NO_ANSWER, "the connection closed".into()) };
        let mut request =
            http::Request::post(format!("http://{address}/inference.GRPCInferenceService/{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        for (name, value) in metadata {
            request = request.header(*name, *value);
        }
        let Ok((response, mut sending)) = client.send_request(request.body(()).unwrap(), false) else {
            return (NO_ANSWER, "the connection closed".into());
        };
        // The server may refuse before it has read all of it: a failed send is expected then.
        let _ = sending.send_data(body.into(), true);
        let response = match response.await {
            Ok(response) => response,
            Err(error) => return (NO_ANSWER, error.to_string()),
        };
        let status_of = |headers: &http::HeaderMap| {
            let status = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
            let message = headers.get("grpc-message").map_or(&b""[..], |m| m.as_bytes());
            Some((status, percent_decoded(message)))
        };
        if let Some(answer) = status_of(response.headers()) {
            return answer;
        }
        let mut body = response.into_body();
        while let Some(data) = body.data().await {
            let Ok(data) = data else { return (NO_ANSWER, "the answer was cut".into()) };
            let _ = body.flow_control().release_capacity(data.len());
        }
        match body.trailers().await {
            Ok(Some(trailers)) => status_of(&trailers).expect("the trailers carry grpc-status"),
            _ => (NO_ANSWER, "no trailers".into()),
        }
    }

    /// A `grpc-message` as text: gRPC percent-encodes it.
    fn percent_decoded(text: &[u8]) -> String {
        let mut bytes = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some((&first, tail)) = rest.split_first() {
            let hex =
                tail.get(..2).and_then(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok());
            match (first, hex) {
                (b'%', Some(byte)) => {
                    bytes.push(byte);
                    rest = &tail[2..];
                }
                _ => {
                    bytes.push(first);
                    rest = tail;
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// An HTTP/2 client that asks for `path` and then never opens its receive window: the
    /// answer's head arrives, its body never can. Held open until dropped.
    pub struct ZeroWindowClient {
        _client: h2::client::SendRequest<Bytes>,
        _response: http::Response<h2::RecvStream>,
        closed: tokio::task::JoinHandle<()>,
    }

    impl ZeroWindowClient {
        pub async fn open(address: &str, path: &str) -> ZeroWindowClient {
            Self::try_open(None, address, path).await.expect("the server answers the head")
        }

        /// As [`Self::open`], from the local address `from` (see [`connect`]); `None` if the
        /// server does not take the connection.
        pub async fn try_open(from: Option<IpAddr>, address: &str, path: &str) -> Option<ZeroWindowClient> {
            let tcp = connect(address, from).await.ok()?;
            let (client, connection) =
                h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(tcp).await.ok()?;
            let closed = tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut client = client.ready().await.ok()?;
            let request = http::Request::get(format!("http://{address}{path}")).body(()).unwrap();
            let (response, _) = client.send_request(request, true).ok()?;
            let response = response.await.ok()?;
            assert_eq!(response.status(), 200, "the head is not flow-controlled");
            Some(ZeroWindowClient { _client: client, _response: response, closed })
        }

        /// Waits until the server has closed the connection.
        pub async fn closed_by_server(self) {
            self.closed.await.unwrap();
        }
    }
}
