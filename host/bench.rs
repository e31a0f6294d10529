//! The `edge-infer bench` command: load-tests an HTTP endpoint in steps (concurrency levels,
//! or open-loop rates) and prints a row per step as a table, CSV or JSON.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};

use crate::loadgen::{self, Load, Rate, Report};

/// Options of `edge-infer bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// The endpoint, e.g. http://127.0.0.1:8080/digits
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
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

/// One image of the digits held-out split (label 0).
const DIGITS_IMAGE: [u8; 64] = [
    0, 0, 3, 11, 7, 1, 0, 0, 0, 0, 10, 15, 14, 14, 0, 0, 0, 2, 16, 10, 1, 12, 4, 0, 0, 2, 16, 3, 0, 4, 8, 0,
    0, 5, 12, 0, 0, 6, 8, 0, 0, 1, 12, 0, 0, 11, 9, 0, 0, 0, 15, 9, 14, 15, 1, 0, 0, 0, 4, 15, 15, 4, 0, 0,
];

impl Example {
    /// Body and content type of the example's request.
    fn request(self) -> (Bytes, Option<&'static str>) {
        match self {
            Example::Digits => (
                serde_json::json!({ "pixels": DIGITS_IMAGE.as_slice() }).to_string().into(),
                Some("application/json"),
            ),
            Example::Vad => {
                let tone = (0..16_000).flat_map(|i| {
                    let sample = (f64::from(i) * 440.0 * std::f64::consts::TAU / 16_000.0).sin() * 8_000.0;
                    (sample as i16).to_le_bytes()
                });
                (tone.collect::<Vec<u8>>().into(), Some("application/octet-stream"))
            }
            Example::Hello => (Bytes::new(), None),
        }
    }
}

/// Runs `edge-infer bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (body, example_type) = match (&args.body, args.example) {
        (Some(path), _) => {
            (std::fs::read(path).with_context(|| format!("reading {}", path.display()))?.into(), None)
        }
        (None, Some(example)) => example.request(),
        (None, None) => (Bytes::new(), None),
    };
    let method = args.method.unwrap_or(if body.is_empty() { http::Method::GET } else { http::Method::POST });
    let base = Load {
        method,
        body,
        content_type: args.content_type.or(example_type.map(str::to_string)),
        requests: args.requests,
        http2: args.http2,
        ..Load::closed(
            args.url,
            1,
            Duration::from_secs_f64(args.warm_up),
            Duration::from_secs_f64(args.duration),
        )
    };
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
        println!("{} {} ({})", base.method, base.url, if base.http2 { "HTTP/2" } else { "HTTP/1.1" });
        println!("{}", Report::HEADER);
    } else if args.format == Format::Csv {
        println!("{}", Report::CSV_HEADER);
    }
    for step in steps {
        if std::io::stderr().is_terminal() {
            eprintln!(
                "running {} for {:?} after {:?} of warm-up ...",
                step.label(),
                step.duration,
                step.warm_up
            );
        }
        let report = tokio.block_on(loadgen::run(&step))?;
        match args.format {
            Format::Table => println!("{}", report.row()),
            Format::Csv => println!("{}", report.csv_row()),
            Format::Json => reports.push(report.to_json()),
        }
    }
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}
