//! The `edge-infer bench` command: load-tests an HTTP endpoint in steps (concurrency levels,
//! or open-loop rates), shows progress on a terminal, prints a row per step as a table, CSV
//! or JSON, and can plot throughput against p99 latency as an SVG.
//!
//! `loadgen` generates the load; the benchmarks under `benches/` use it too. `grpc` turns a
//! `grpc://HOST:PORT/MODEL` URL and a JSON infer request into the protocol's gRPC call.

pub mod grpc;
pub mod loadgen;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};

use self::loadgen::{Load, Rate, Report};

/// Options of `edge-infer bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// The endpoint, e.g. http://127.0.0.1:8080/digits, or grpc://127.0.0.1:8001/digits for
    /// the Open Inference Protocol's gRPC infer call (the body: a JSON infer request, as for
    /// REST's /v2/models/MODEL/infer; or --example digits).
    url: http::Uri,
    /// Closed loop: clients at each step. Open loop (with --rate): the most requests in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Open loop instead: requests per second at each step, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// With --rate: exponential gaps between requests (Poisson arrivals) instead of even ones.
    #[arg(long)]
    poisson: bool,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop a step after this many measured requests, if that comes first.
    #[arg(long)]
    requests: Option<u64>,
    /// Unmeasured seconds before each step.
    #[arg(long, default_value_t = 1.0)]
    warm_up: f64,
    /// Request body, read from this file; with a body the method defaults to POST.
    #[arg(long, conflicts_with = "example")]
    body: Option<PathBuf>,
    /// A built-in request for one of the bundled examples (sets body, method, content type).
    #[arg(long, value_enum)]
    example: Option<Example>,
    /// HTTP method [default: POST with a body, else GET].
    #[arg(long)]
    method: Option<http::Method>,
    /// Content-Type of the body.
    #[arg(long)]
    content_type: Option<String>,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also draw throughput against p99 latency, one point per step, into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The bundled examples `--example` can make requests for.
#[derive(Clone, Copy, ValueEnum)]
enum Example {
    /// `POST /digits`: one held-out 8×8 image (a zero).
    Digits,
    /// `POST /vad`: one second of a 440 Hz tone, 16 kHz 16-bit PCM.
    Vad,
    /// `GET /hello`.
    Hello,
    /// `POST /embed`: one text per request, taken in turn from 64 texts of 1 to 70 words
    /// (about 3 to 100 tokens), so requests of different lengths meet in the batcher.
    Embed,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The texts `--example embed` sends, one a line.
pub const EMBED_CORPUS: &str = include_str!("embed_corpus.txt");

/// One image of the digits held-out split (label 0).
const DIGITS_IMAGE: [u8; 64] = [
    0, 0, 3, 11, 7, 1, 0, 0, 0, 0, 10, 15, 14, 14, 0, 0, 0, 2, 16, 10, 1, 12, 4, 0, 0, 2, 16, 3, 0, 4, 8, 0,
    0, 5, 12, 0, 0, 6, 8, 0, 0, 1, 12, 0, 0, 11, 9, 0, 0, 0, 15, 9, 14, 15, 1, 0, 0, 0, 4, 15, 15, 4, 0, 0,
];

/// One `/embed` request body per text of [`EMBED_CORPUS`].
pub fn embed_bodies() -> Vec<Bytes> {
    EMBED_CORPUS.lines().map(|text| serde_json::json!({ "texts": [text] }).to_string().into()).collect()
}

/// The digits image as the Open Inference Protocol's JSON infer request.
fn digits_infer_request() -> Bytes {
    let request = serde_json::json!({
        "inputs": [{ "name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": DIGITS_IMAGE.as_slice() }],
    });
    request.to_string().into()
}

impl Example {
    /// Bodies (used in turn) and content type of the example's requests.
    fn requests(self) -> (Vec<Bytes>, Option<&'static str>) {
        match self {
            Example::Digits => (
                vec![serde_json::json!({ "pixels": DIGITS_IMAGE.as_slice() }).to_string().into()],
                Some("application/json"),
            ),
            Example::Vad => {
                let tone = (0..16_000).flat_map(|i| {
                    let sample = (f64::from(i) * 440.0 * std::f64::consts::TAU / 16_000.0).sin() * 8_000.0;
                    (sample as i16).to_le_bytes()
                });
                (vec![tone.collect::<Vec<u8>>().into()], Some("application/octet-stream"))
            }
            Example::Hello => (vec![Bytes::new()], None),
            Example::Embed => (embed_bodies(), Some("application/json")),
        }
    }
}

/// Runs `edge-infer bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (bodies, example_type) = match (&args.body, args.example) {
        (Some(path), _) => {
            (vec![std::fs::read(path).with_context(|| format!("reading {}", path.display()))?.into()], None)
        }
        (None, Some(example)) => example.requests(),
        (None, None) => (vec![Bytes::new()], None),
    };
    let has_body = bodies.iter().any(|body| !body.is_empty());
    let method = args.method.unwrap_or(if has_body { http::Method::POST } else { http::Method::GET });
    let mut base = Load {
        method,
        bodies,
        content_type: args.content_type.or(example_type.map(str::to_string)),
        requests: args.requests,
        http2: args.http2,
        ..Load::closed(
            args.url.clone(),
            1,
            Duration::from_secs_f64(args.warm_up),
            Duration::from_secs_f64(args.duration),
        )
    };
    if let Some((call, model)) = grpc::endpoint(&args.url)? {
        let json = match (&args.body, args.example) {
            (Some(_), _) => base.bodies[0].clone(),
            (None, Some(Example::Digits)) => digits_infer_request(),
            _ => anyhow::bail!("a gRPC load needs a JSON infer request: --body FILE (or --example digits)"),
        };
        base = Load {
            url: call,
            method: http::Method::POST,
            bodies: vec![grpc::infer_frame(&model, &json)?],
            content_type: Some("application/grpc".into()),
            http2: true,
            grpc: true,
            ..base
        };
    }
    let steps: Vec<Load> = if args.rate.is_empty() {
        args.concurrency.iter().map(|&concurrency| Load { concurrency, ..base.clone() }).collect()
    } else {
        let in_flight = args.concurrency.iter().copied().max().unwrap_or(1);
        let rate = |per_second| Some(Rate { per_second, poisson: args.poisson });
        args.rate.iter().map(|&r| Load { concurrency: in_flight, rate: rate(r), ..base.clone() }).collect()
    };

    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut reports = Vec::new();
    if args.format == Format::Table {
        let protocol = match (base.grpc, base.http2) {
            (true, _) => "gRPC",
            (false, true) => "HTTP/2",
            (false, false) => "HTTP/1.1",
        };
        println!("{} {} ({protocol})", base.method, base.url);
        println!("{}", Report::HEADER);
    } else if args.format == Format::Csv {
        println!("{}", Report::CSV_HEADER);
    }
    for step in steps {
        let report = tokio.block_on(with_progress(&step))?;
        match args.format {
            Format::Table => println!("{}", report.row()),
            Format::Csv => println!("{}", report.csv_row()),
            Format::Json => {}
        }
        reports.push(report);
    }
    if args.format == Format::Json {
        let json: Vec<_> = reports.iter().map(Report::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if let Some(path) = &args.plot {
        plot(&reports, path).with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(())
}

/// Runs one step, showing its progress on stderr when that is a terminal.
async fn with_progress(step: &Load) -> anyhow::Result<Report> {
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let total = step.warm_up + step.duration;
    let progress = std::io::stderr().is_terminal().then(|| {
        let (answered, label) = (answered.clone(), step.label());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let elapsed = started.elapsed().min(total);
                let done = (40.0 * elapsed.as_secs_f64() / total.as_secs_f64().max(1e-9)) as usize;
                eprint!(
                    "\r{label:<18} [{}{}] {:>5.1}/{:.0} s {:>9} answered",
                    "#".repeat(done.min(40)),
                    " ".repeat(40 - done.min(40)),
                    elapsed.as_secs_f64(),
                    total.as_secs_f64(),
                    answered.load(Ordering::Relaxed)
                );
            }
        })
    });
    let report = loadgen::run_counting(step, &answered).await;
    if let Some(progress) = progress {
        progress.abort();
        eprint!("\r{:100}\r", "");
    }
    report
}

/// Throughput (x) against p99 latency (y), a labelled point per step.
fn plot(reports: &[Report], path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let x_max = reports.iter().map(Report::throughput).fold(1.0, f64::max) * 1.15;
    let y_max = reports.iter().map(|r| r.latency_ms(0.99)).fold(0.001, f64::max) * 1.15;
    let area = SVGBackend::new(path, (800, 500)).into_drawing_area();
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&area)
        .caption("edge-infer bench: throughput vs p99 latency", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("requests per second").y_desc("p99 latency (ms)").draw()?;
    let points: Vec<(f64, f64)> = reports.iter().map(|r| (r.throughput(), r.latency_ms(0.99))).collect();
    chart.draw_series(LineSeries::new(points.clone(), &BLUE))?;
    chart.draw_series(points.iter().zip(reports).map(|(&(x, y), report)| {
        EmptyElement::at((x, y))
            + Circle::new((0, 0), 4, BLUE.filled())
            + Text::new(report.load.clone(), (6, -14), ("sans-serif", 13))
    }))?;
    area.present()?;
    Ok(())
}
