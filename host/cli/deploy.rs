//! `edge-infer deploy`: rolls one route, and the models it brings, out to many nodes through
//! their admin APIs. The first node is the canary: changed, then checked (ready, and a smoke
//! request answered 2xx); then every other node (`--parallel` at a time), each checked the
//! same way. If any node fails, every node that changed, or may have (a call lost in
//! transit), is put back as it was, and the exit status is 1.
//! A report says what happened on each node: a table, or JSON with `--json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use edge_infer::node::config::{Config, Source};

#[derive(Args)]
pub struct DeployArgs {
    /// The route and its models, in the config file's format (TOML). Files are given as paths
    /// (uploaded to each node) or `oci://` references (each node pulls them).
    file: PathBuf,
    /// Which of the file's routes to roll out [default: its only one].
    #[arg(long)]
    route: Option<String>,
    /// A node: its admin API URL, optionally followed by `,` and the URL it serves on
    /// [default: the admin URL's host, with the scheme and port the node reports].
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// A file of nodes, one per line as for --node; `#` starts a comment.
    #[arg(long)]
    nodes_file: Option<PathBuf>,
    /// A file holding the admin token, the same on every node [default:
    /// $EDGE_INFER_ADMIN_TOKEN].
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The smoke request's body, POSTed to the route's path (without one: a GET).
    #[arg(long)]
    smoke_body: Option<PathBuf>,
    /// The smoke request's content type.
    #[arg(long, default_value = "application/json")]
    smoke_content_type: String,
    /// The smoke request's path [default: the route's path].
    #[arg(long)]
    smoke_path: Option<String>,
    /// How long one node may take to change, or to answer a check, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Nodes changed at once after the canary.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What happened on one node.
#[derive(Debug, Default, Serialize)]
struct NodeReport {
    node: String,
    /// `canary` or `rollout`.
    phase: &'static str,
    /// What the change did (`created`, `replaced`, `unchanged`), or `failed`, or `not tried`.
    outcome: String,
    /// The component now serving on the node, by digest.
    component: Option<String>,
    /// The smoke request's status and time.
    smoke_status: Option<u16>,
    smoke_ms: Option<u64>,
    /// Why the node failed.
    error: Option<String>,
    /// Whether the node was put back as it was (after a node failed).
    rolled_back: bool,
}

/// The whole roll-out's report.
#[derive(Serialize)]
struct Report {
    route: String,
    ok: bool,
    /// Nodes that should have been put back but could not be (see their `error`).
    not_rolled_back: usize,
    nodes: Vec<NodeReport>,
}

/// One node: where its admin API and its routes are, and what it served before.
struct Node {
    admin: String,
    serve: String,
    /// The route's settings before, if it was there.
    route_before: Option<Value>,
    /// The settings before of each model the roll-out brings that was there.
    models_before: BTreeMap<String, Value>,
}

/// What is rolled out, shared by every node.
struct Rollout {
    http: reqwest::Client,
    token: String,
    route_name: String,
    /// The route's settings, with `component` a path or an oci:// reference.
    route: Value,
    /// The models' settings, by name, `file` likewise.
    models: BTreeMap<String, Value>,
    /// The local files to upload (by the path the settings give), read once.
    uploads: BTreeMap<String, Bytes>,
    smoke_path: String,
    smoke_body: Option<(Bytes, String)>,
}

/// Runs the roll-out; the exit status says whether it succeeded.
pub fn run(args: DeployArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let json_report = args.json;
    let report = runtime.block_on(roll_out(args))?;
    if json_report {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if report.not_rolled_back > 0 {
        bail!(
            "the roll-out of route {:?} failed, and {} node(s) could not be put back: see the report",
            report.route,
            report.not_rolled_back
        );
    }
    if !report.ok {
        bail!("the roll-out of route {:?} failed; the nodes changed were put back", report.route);
    }
    Ok(())
}

async fn roll_out(args: DeployArgs) -> anyhow::Result<Report> {
    let rollout = Arc::new(prepare(&args)?);
    let nodes = node_list(&args)?;
    // Before changing anything: every node answers, and what it serves now is noted.
    let mut found = Vec::with_capacity(nodes.len());
    for (admin, serve) in nodes {
        let node = rollout.inspect(admin.clone(), serve).await.with_context(|| format!("node {admin}"))?;
        found.push(node);
    }
    let mut reports: Vec<NodeReport> = found
        .iter()
        .enumerate()
        .map(|(i, node)| NodeReport {
            node: node.admin.clone(),
            phase: if i == 0 { "canary" } else { "rollout" },
            outcome: "not tried".into(),
            ..NodeReport::default()
        })
        .collect();
    let nodes: Vec<Arc<Node>> = found.into_iter().map(Arc::new).collect();
    let mut steps: Vec<Option<Step>> = nodes.iter().map(|_| None).collect();

    let canary = rollout.change_and_check(&nodes[0], &mut reports[0]).await;
    let mut ok = canary.succeeded();
    steps[0] = Some(canary);
    if ok {
        let parallel = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
        let mut rest = tokio::task::JoinSet::new();
        for (i, node) in nodes.iter().enumerate().skip(1) {
            // Until its task answers, a node may have changed.
            steps[i] = Some(Step::Unknown);
            let (rollout, node, parallel) = (rollout.clone(), node.clone(), parallel.clone());
            rest.spawn(async move {
                let _turn = parallel.acquire().await;
                let mut report = NodeReport::default();
                let step = rollout.change_and_check(&node, &mut report).await;
                (i, step, report)
            });
        }
        while let Some(done) = rest.join_next().await {
            let Ok((i, step, report)) = done else {
                // A task that panicked: its node may have changed; every node is put back.
                ok = false;
                continue;
            };
            ok &= step.succeeded();
            steps[i] = Some(step);
            reports[i] = NodeReport { node: reports[i].node.clone(), phase: reports[i].phase, ..report };
        }
    }
    let mut not_rolled_back = 0;
    if !ok {
        // Nodes never tried (after a failed canary) are left alone.
        let parallel = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
        let mut restores = tokio::task::JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            if steps[i].as_ref().is_some_and(Step::may_have_changed) {
                let (rollout, node, parallel) = (rollout.clone(), node.clone(), parallel.clone());
                restores.spawn(async move {
                    let _turn = parallel.acquire().await;
                    (i, rollout.restore(&node).await)
                });
            }
        }
        while let Some(done) = restores.join_next().await {
            let Ok((i, failures)) = done else {
                // A restore task that panicked: its node is not known to be put back.
                not_rolled_back += 1;
                continue;
            };
            if failures.is_empty() {
                reports[i].rolled_back = true;
            } else {
                not_rolled_back += 1;
                let before = reports[i].error.take().map_or(String::new(), |e| format!("{e}; "));
                reports[i].error = Some(format!("{before}roll-back failed: {}", failures.join("; ")));
            }
        }
    }
    Ok(Report { route: rollout.route_name.clone(), ok, not_rolled_back, nodes: reports })
}

/// How far a node's change went.
enum Step {
    /// The node refused the change (it answered an error): nothing changed on it.
    Refused,
    /// The call was lost in transit: the node may have made the change, or not.
    Unknown,
    /// The node changed, and its checks passed (`true`) or failed.
    Changed(bool),
    /// The node answered that nothing needed changing, and its checks passed or failed.
    Unchanged(bool),
}

impl Step {
    /// Whether the node must be put back if the roll-out fails.
    fn may_have_changed(&self) -> bool {
        matches!(self, Step::Changed(_) | Step::Unknown)
    }

    /// Whether the node serves the new version and passed its checks.
    fn succeeded(&self) -> bool {
        matches!(self, Step::Changed(true) | Step::Unchanged(true))
    }
}

/// Reads the deploy file and the smoke request.
fn prepare(args: &DeployArgs) -> anyhow::Result<Rollout> {
    let config = Config::from_file(&args.file)?;
    let route = match (&args.route, config.routes.as_slice()) {
        (None, [route]) => route.clone(),
        (None, routes) => {
            bail!("{} has {} routes: choose one with --route", args.file.display(), routes.len())
        }
        (Some(name), routes) => routes
            .iter()
            .find(|route| route.name() == *name)
            .cloned()
            .with_context(|| format!("{} has no route named {name:?}", args.file.display()))?,
    };
    let mut uploads = BTreeMap::new();
    let mut note_upload = |source: &Source| -> anyhow::Result<()> {
        if let Source::File(path) = source {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            uploads.insert(path.display().to_string(), Bytes::from(bytes));
        }
        Ok(())
    };
    if !route.settings.read_only_dirs.is_empty() {
        bail!(
            "route {:?}: `read_only_dirs` are folders on a node: set them in its config file",
            route.name()
        );
    }
    note_upload(&route.component)?;
    let mut models = BTreeMap::new();
    for name in &route.models {
        let model = &config.models[name];
        note_upload(&model.file)?;
        models.insert(name.clone(), serde_json::to_value(model)?);
    }
    let token = match &args.token_file {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        None => std::env::var("EDGE_INFER_ADMIN_TOKEN")
            .context("no admin token: give --token-file, or set EDGE_INFER_ADMIN_TOKEN")?,
    };
    let smoke_body = match &args.smoke_body {
        Some(file) => Some((
            Bytes::from(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?),
            args.smoke_content_type.clone(),
        )),
        None => None,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_s))
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    Ok(Rollout {
        http,
        token: token.trim().to_string(),
        route_name: route.name(),
        smoke_path: args.smoke_path.clone().unwrap_or_else(|| route.path.clone()),
        route: serde_json::to_value(&route)?,
        models,
        uploads,
        smoke_body,
    })
}

/// The nodes from --node and --nodes-file: each an admin URL and, if given, a serving URL.
fn node_list(args: &DeployArgs) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let mut lines: Vec<String> = args.nodes.clone();
    if let Some(file) = &args.nodes_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        lines.extend(text.lines().map(|line| line.split('#').next().unwrap_or("").trim().to_string()));
    }
    let nodes: Vec<(String, Option<String>)> = lines
        .iter()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut parts = line.split([',', ' ', '\t']).filter(|part| !part.is_empty());
            let admin = parts.next().unwrap_or_default().trim_end_matches('/').to_string();
            (admin, parts.next().map(|serve| serve.trim_end_matches('/').to_string()))
        })
        .collect();
    if nodes.is_empty() {
        bail!("no nodes: give --node or --nodes-file");
    }
    Ok(nodes)
}

impl Rollout {
    fn admin(&self, method: Method, node: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{node}{path}")).bearer_auth(&self.token)
    }

    /// Sends an admin call and returns its JSON answer, or an error with the node's reason.
    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(StatusCode, Value)> {
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn expect_ok(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        match self.call(request).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, body) => Err(refusal(status, &body)),
        }
    }

    /// Finds where the node serves and what it serves now.
    async fn inspect(&self, admin: String, serve: Option<String>) -> anyhow::Result<Node> {
        let serve = match serve {
            Some(serve) => serve,
            None => {
                let about = self.expect_ok(self.admin(Method::GET, &admin, "/admin/node")).await?;
                let url = reqwest::Url::parse(&admin)?;
                let host = url.host_str().context("the admin URL has no host")?;
                let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
                format!("{}://{host}:{}", about["scheme"].as_str().unwrap_or("http"), about["port"])
            }
        };
        let route_before = match self
            .call(self.admin(Method::GET, &admin, &format!("/admin/routes/{}", self.route_name)))
            .await?
        {
            (StatusCode::NOT_FOUND, _) => None,
            (status, body) if status.is_success() => Some(body["settings"].clone()),
            (status, body) => return Err(refusal(status, &body)),
        };
        let models = self.expect_ok(self.admin(Method::GET, &admin, "/admin/models")).await?;
        let models_before = models["models"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|model| model["name"].as_str().is_some_and(|name| self.models.contains_key(name)))
            .filter_map(|model| Some((model["name"].as_str()?.to_string(), model["settings"].clone())))
            .collect();
        Ok(Node { admin, serve, route_before, models_before })
    }

    /// Changes one node, then checks it; fills `report`.
    async fn change_and_check(&self, node: &Node, report: &mut NodeReport) -> Step {
        let outcome = match self.change(node).await {
            Ok(outcome) => outcome,
            Err((step, e)) => {
                report.outcome = "failed".into();
                report.error = Some(format!("{e:#}"));
                return step;
            }
        };
        report.outcome = outcome.clone();
        let checked = self.check(node, report).await;
        if let Err(e) = &checked {
            report.error = Some(format!("{e:#}"));
        }
        if outcome == "unchanged" { Step::Unchanged(checked.is_ok()) } else { Step::Changed(checked.is_ok()) }
    }

    /// Uploads the local files, then deploys the route with its models in one change. On
    /// failure, whether the node may have changed (`Unknown`) or not (`Refused`).
    async fn change(&self, node: &Node) -> Result<String, (Step, anyhow::Error)> {
        let mut digests = BTreeMap::new();
        for (path, bytes) in &self.uploads {
            let upload = self.admin(Method::PUT, &node.admin, "/admin/artifacts").body(bytes.clone());
            // An artifact stored is not yet served: nothing changed.
            let stored = self.expect_ok(upload).await.with_context(|| format!("uploading {path}"));
            digests.insert(path.clone(), stored.map_err(|e| (Step::Refused, e))?["digest"].clone());
        }
        let named = |settings: &Value, field: &str| {
            let mut settings = settings.clone();
            if let Some(digest) = settings[field].as_str().and_then(|path| digests.get(path)) {
                settings[field] = digest.clone();
            }
            settings
        };
        let mut settings = named(&self.route, "component");
        settings["model_settings"] =
            self.models.iter().map(|(name, model)| (name.clone(), named(model, "file"))).collect();
        let put = self.admin(Method::PUT, &node.admin, &format!("/admin/routes/{}", self.route_name));
        match self.call(put.json(&settings)).await {
            Ok((status, answer)) if status.is_success() => {
                Ok(answer["outcome"].as_str().unwrap_or("changed").to_string())
            }
            // A server error without the node's JSON reason may come from a proxy in front of
            // a node that made the change.
            Ok((status, answer)) if status.is_server_error() && answer["error"].is_null() => {
                let error = refusal(status, &answer).context("deploying; the node may have made the change");
                Err((Step::Unknown, error))
            }
            // The node answered why: a refused change changes nothing.
            Ok((status, answer)) => Err((Step::Refused, refusal(status, &answer).context("deploying"))),
            Err(e) => Err((Step::Unknown, e.context("deploying; the node may have made the change"))),
        }
    }

    /// Checks a changed node: ready, serving the route, and the smoke request answered 2xx.
    async fn check(&self, node: &Node, report: &mut NodeReport) -> anyhow::Result<()> {
        let status = self.expect_ok(self.admin(
            Method::GET,
            &node.admin,
            &format!("/admin/routes/{}", self.route_name),
        ));
        report.component = status.await?["component"].as_str().map(str::to_string);
        let ready = self.http.get(format!("{}/v2/health/ready", node.serve)).send().await?;
        if !ready.status().is_success() {
            bail!("not ready: /v2/health/ready answered {}", ready.status());
        }
        let url = format!("{}{}", node.serve, self.smoke_path);
        let request = match &self.smoke_body {
            Some((body, content_type)) => {
                self.http.post(url).header("content-type", content_type).body(body.clone())
            }
            None => self.http.get(url),
        };
        let started = Instant::now();
        let response = request.send().await.context("smoke request")?;
        report.smoke_ms = Some(started.elapsed().as_millis() as u64);
        report.smoke_status = Some(response.status().as_u16());
        if !response.status().is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("smoke request answered {}: {}", report.smoke_status.unwrap_or(0), body.trim());
        }
        Ok(())
    }

    /// Puts a node back as it was: the route's and its models' settings before (their files
    /// are still on the node), and what was not there deleted. Every step is tried; returns
    /// the failures. Each step is idempotent, so a node that did not change is left as it is.
    async fn restore(&self, node: &Node) -> Vec<String> {
        let mut failures = Vec::new();
        let mut step = |what: String, result: anyhow::Result<(StatusCode, Value)>| match result {
            Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {}
            Ok((status, answer)) => failures.push(format!("{what}: {:#}", refusal(status, &answer))),
            Err(e) => failures.push(format!("{what}: {e:#}")),
        };
        let route = format!("/admin/routes/{}", self.route_name);
        match &node.route_before {
            Some(before) => {
                // The route and the models it had, in one change.
                let mut settings = before.clone();
                settings["model_settings"] = node.models_before.clone().into_iter().collect();
                step(
                    route.clone(),
                    self.call(self.admin(Method::PUT, &node.admin, &route).json(&settings)).await,
                );
            }
            None => {
                // The models first: the roll-out released their files, and a change (the
                // route's deletion) collects released files older than an hour.
                for (model, before) in &node.models_before {
                    let path = format!("/admin/models/{model}");
                    step(
                        path.clone(),
                        self.call(self.admin(Method::PUT, &node.admin, &path).json(before)).await,
                    );
                }
                step(route.clone(), self.call(self.admin(Method::DELETE, &node.admin, &route)).await);
            }
        }
        for model in self.models.keys().filter(|model| !node.models_before.contains_key(*model)) {
            let path = format!("/admin/models/{model}");
            step(path.clone(), self.call(self.admin(Method::DELETE, &node.admin, &path)).await);
        }
        failures
    }
}

/// The error for an admin call answered `status`, with the node's reason.
fn refusal(status: StatusCode, answer: &Value) -> anyhow::Error {
    anyhow::anyhow!("{status}: {}", answer["error"].as_str().unwrap_or("no reason given"))
}

fn print_table(report: &Report) {
    println!("{:<32} {:<8} {:<10} {:<12} {:<14} result", "node", "phase", "outcome", "component", "smoke");
    for node in &report.nodes {
        let component = node.component.as_deref().map_or("-".into(), |digest| {
            digest.trim_start_matches("sha256:").chars().take(12).collect::<String>()
        });
        let smoke = match (node.smoke_status, node.smoke_ms) {
            (Some(status), Some(ms)) => format!("{status} {ms} ms"),
            _ => "-".into(),
        };
        let result = match (&node.error, node.rolled_back) {
            (Some(error), true) => format!("rolled back; {error}"),
            (Some(error), false) => error.clone(),
            (None, true) => "rolled back".into(),
            (None, false) if node.outcome == "not tried" => "-".into(),
            (None, false) => "ok".into(),
        };
        println!(
            "{:<32} {:<8} {:<10} {:<12} {:<14} {result}",
            node.node, node.phase, node.outcome, component, smoke
        );
    }
    let verdict = match (report.ok, report.not_rolled_back) {
        (true, _) => "rolled out to every node".to_string(),
        (false, 0) => "failed; the nodes changed were put back".to_string(),
        (false, stuck) => format!("failed; {stuck} node(s) could not be put back"),
    };
    println!("route {}: {verdict}", report.route);
}
