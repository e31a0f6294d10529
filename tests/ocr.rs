//! `/ocr`: a guest-driven pipeline of three models (PP-OCRv4 detection, direction and
//! recognition, on ONNX Runtime). Every generated test image must be read back with its
//! text, Chinese and Latin lines alike; concurrent requests must keep the three models busy
//! at once (a request in recognition while the next is in detection); and bad images are
//! refused with a clear error while the server goes on serving.

mod common;

use std::time::Instant;

use common::{Server, client, expect_error, metric, ocr, post_json, repo_file, scrape};
use serde_json::{Value, json};

/// Least share of the characters read right, per script, over the test images.
const MIN_CHARACTER_ACCURACY: f64 = 0.95;

/// The lines `/ocr` reads in `image`.
async fn read(http: &reqwest::Client, server: &Server, image: Vec<u8>) -> Vec<String> {
    let response =
        http.post(server.url("/ocr")).header("content-type", "image/png").body(image).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            let corners = line["box"].as_array().unwrap();
            assert_eq!(corners.len(), 4, "a box has four corners: {line}");
            assert!((0.5..=1.0).contains(&line["score"].as_f64().unwrap()), "{line}");
            line["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The Levenshtein distance between two strings, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn is_chinese(line: &str) -> bool {
    line.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

#[tokio::test]
async fn every_generated_image_is_read_back_with_its_text() {
    let server =
        tokio::task::spawn_blocking(|| Server::start(&ocr::config([1, 1, 1], "auto"))).await.unwrap();
    let http = client();
    // (characters expected, characters wrong) per script.
    let (mut chinese, mut latin) = ((0, 0), (0, 0));
    let mut report = String::new();
    for (file, image, expected) in ocr::images() {
        let lines = read(&http, &server, image).await;
        assert_eq!(lines.len(), expected.len(), "{file}: read {lines:?}, expected {expected:?}");
        for (read, expected) in lines.iter().zip(&expected) {
            let script = if is_chinese(expected) { &mut chinese } else { &mut latin };
            script.0 += expected.chars().count();
            script.1 += edit_distance(read, expected);
            report += &format!("{file}: {read:?} for {expected:?}\n");
        }
    }
    for (name, (count, wrong)) in [("Chinese", chinese), ("Latin", latin)] {
        assert!(count > 0, "the test images hold {name} lines");
        let accuracy = 1.0 - wrong as f64 / count as f64;
        println!("{name}: {count} characters, {wrong} wrong: accuracy {accuracy:.3}");
        assert!(accuracy >= MIN_CHARACTER_ACCURACY, "{name} accuracy {accuracy:.3}:\n{report}");
    }
    println!("{report}");
}

#[tokio::test]
async fn concurrent_requests_keep_the_three_models_busy_at_once() {
    // No batching: each executor runs one request at a time. A request calls its models one
    // after another, so if no two models ever computed at the same time, the run would last
    // at least the sum over models of their compute time over their executors. Finishing
    // sooner means different requests were in different models at once. Recognition, the
    // slowest stage, gets two executors (as the README's balancing advice says), so the
    // stages' shares are closer and the bound is clear of noise.
    let executors = [1, 1, 2];
    let server =
        tokio::task::spawn_blocking(move || Server::start(&ocr::config(executors, "off"))).await.unwrap();
    let images = ocr::images();
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|client_index| {
            let (url, images) = (server.url("/ocr"), images.clone());
            tokio::spawn(async move {
                let http = client();
                for round in 0..images.len() {
                    let (file, image, _) = &images[(client_index + round) % images.len()];
                    let response = http.post(&url).body(image.clone()).send().await.unwrap();
                    assert_eq!(response.status(), 200, "{file}: {}", response.text().await.unwrap());
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = scrape(&server).await;
    let seconds = |what: &str, model: &str| {
        metric(&metrics, &format!("edge_infer_model_{what}_duration_seconds_sum{{model=\"{model}\"}}"))
    };
    let mut without_overlap = 0.0;
    for (model, executors) in ["ocr-det", "ocr-cls", "ocr-rec"].into_iter().zip(executors) {
        let (queued, computed) = (seconds("queue", model), seconds("compute", model));
        println!("{model}: {computed:.3} s computing on {executors} executors, {queued:.3} s queued");
        assert!(computed > 0.0, "{model} computed nothing:\n{metrics}");
        without_overlap += computed / executors as f64;
    }
    println!("without overlap: at least {without_overlap:.3} s; took {elapsed:.3} s");
    assert!(
        without_overlap > elapsed,
        "no overlap: without it the run takes at least {without_overlap:.3} s, and it took {elapsed:.3} s"
    );
}

#[tokio::test]
async fn bad_images_are_refused_and_the_server_goes_on_reading() {
    let server = tokio::task::spawn_blocking(|| Server::start(&ocr::config([1, 1, 1], "off"))).await.unwrap();
    let http = client();
    let post = |body: Vec<u8>| http.post(server.url("/ocr")).body(body).send();
    let error = expect_error(post(Vec::new()).await.unwrap(), 400).await;
    assert!(error.contains("the body is empty"), "{error}");
    let error = expect_error(post(b"GIF89a not a picture".to_vec()).await.unwrap(), 400).await;
    assert!(error.contains("not a PNG or JPEG image"), "{error}");
    // A PNG cut short after its header.
    let (_, latin, expected) = ocr::images().into_iter().find(|(file, _, _)| file == "latin.png").unwrap();
    let error = expect_error(post(latin[..200].to_vec()).await.unwrap(), 400).await;
    assert!(error.contains("cannot decode the PNG image"), "{error}");
    // Headers claiming too many pixels: past the longest side, and past the total.
    for (width, height) in [(10_000, 10), (4000, 4000)] {
        let error = expect_error(post(resized_header(&latin, width, height)).await.unwrap(), 413).await;
        assert!(error.contains(&format!("{width}×{height}")), "{error}");
    }
    // Images with no text, down to one pixel, read as no lines.
    for (width, height) in [(1, 1), (64, 48)] {
        assert_eq!(read(&http, &server, png(width, height, [250, 250, 250])).await, Vec::<String>::new());
    }
    let error = expect_error(http.get(server.url("/ocr")).send().await.unwrap(), 405).await;
    assert!(error.contains("POST the image"), "{error}");
    assert_eq!(read(&http, &server, latin).await.len(), expected.len(), "the next good image is read");
}

/// `image`, a PNG, with its header saying `width × height` (its pixel data unchanged).
fn resized_header(image: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut image = image.to_vec();
    image[16..20].copy_from_slice(&width.to_be_bytes());
    image[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&image[12..29]);
    image[29..33].copy_from_slice(&crc.to_be_bytes());
    image
}

#[tokio::test]
async fn declared_shapes_reach_every_backend() {
    ocr::fetch();
    let cls = repo_file("models/ocr/cls.onnx");
    let library = repo_file("models/onnxruntime/libonnxruntime.so.1.31.1");
    let model = |name: &str, backend: &str, declarations: &str| {
        format!(
            "[models.{name}]\nfile = \"{}\"\nbackend = \"{backend}\"\nbatching = \"off\"\n{declarations}\n",
            cls.display()
        )
    };
    let server_section = format!("[server]\nonnxruntime_library = \"{}\"\n", library.display());
    // Undeclared, the classifier's open input stops tract at start-up.
    let try_start = |config: String| tokio::task::spawn_blocking(move || Server::try_start(&config).err());
    let undeclared = try_start(format!("{server_section}{}", model("cls", "tract", ""))).await.unwrap();
    let stderr = undeclared.expect("tract cannot type the undeclared classifier");
    assert!(
        stderr.contains("loading model \"cls\"") && stderr.contains("Source node without a determined fact"),
        "{stderr}"
    );
    // A declaration that contradicts the file is refused, naming the dimension.
    let contradicting = model("cls", "ort", "inputs.x.shape = [\"batch\", 4, 48, 192]");
    let stderr = try_start(format!("{server_section}{contradicting}")).await.unwrap().unwrap();
    assert!(stderr.contains("dimension 1 of \"x\" is fixed at 3 in the model file, not 4"), "{stderr}");
    let unknown = model("cls", "ort", "inputs.image.shape = [1, 3, 48, 192]");
    let stderr = try_start(format!("{server_section}{unknown}")).await.unwrap().unwrap();
    assert!(stderr.contains("the model has no input named \"image\" (its inputs: \"x\")"), "{stderr}");

    // Declared: tract with every dimension fixed, ONNX Runtime with a free batch.
    let config = format!(
        "{server_section}{}{}",
        model("cls-tract", "tract", "inputs.x.shape = [1, 3, 48, 192]"),
        model(
            "cls-ort",
            "ort",
            "inputs.x.shape = [\"batch\", 3, 48, 192]\noutputs.\"save_infer_model/scale_0.tmp_1\".shape = [\"batch\", 2]"
        ),
    );
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    let http = client();
    let metadata: Value =
        http.get(server.url("/v2/models/cls-ort")).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, 3, 48, 192]), "{metadata}");
    let metadata: Value =
        http.get(server.url("/v2/models/cls-tract")).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["inputs"][0]["shape"], json!([1, 3, 48, 192]), "{metadata}");
    // A striped image: both backends must give the same direction probabilities.
    let pixels: Vec<f64> = (0..3 * 48 * 192).map(|i| if (i / 7) % 2 == 0 { 0.8 } else { -0.6 }).collect();
    let request =
        json!({ "inputs": [{ "name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": pixels }] });
    let mut answers = Vec::new();
    for name in ["cls-tract", "cls-ort"] {
        let (status, answer) =
            post_json(&http, &server.url(&format!("/v2/models/{name}/infer")), &request).await;
        assert_eq!(status, 200, "{name}: {answer}");
        let data: Vec<f64> = serde_json::from_value(answer["outputs"][0]["data"].clone()).unwrap();
        assert_eq!(data.len(), 2, "{answer}");
        answers.push(data);
    }
    for (tract, ort) in answers[0].iter().zip(&answers[1]) {
        assert!((tract - ort).abs() < 1e-4, "tract {:?}, ONNX Runtime {:?}", answers[0], answers[1]);
    }
}

/// A PNG of one colour: 8-bit RGB, its pixel rows stored uncompressed in the zlib stream.
fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let row: Vec<u8> = std::iter::once(0).chain((0..width).flat_map(|_| rgb)).collect();
    let raw: Vec<u8> = (0..height).flat_map(|_| row.iter().copied()).collect();
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (index, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(index + 1 == blocks.len()));
        let length = block.len() as u16;
        zlib.extend(length.to_le_bytes());
        zlib.extend((!length).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (a, b) = raw.iter().fold((1u32, 0u32), |(a, b), &byte| {
        let a = (a + u32::from(byte)) % 65_521;
        (a, (b + a) % 65_521)
    });
    zlib.extend(((b << 16) | a).to_be_bytes());
    let mut header = width.to_be_bytes().to_vec();
    header.extend(height.to_be_bytes());
    header.extend([8, 2, 0, 0, 0]);
    let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", header), (b"IDAT", zlib), (b"IEND", Vec::new())] {
        image.extend((data.len() as u32).to_be_bytes());
        let start = image.len();
        image.extend_from_slice(kind);
        image.extend(&data);
        let crc = crc32(&image[start..]);
        image.extend(crc.to_be_bytes());
    }
    image
}

/// The CRC-32 of PNG chunks (ISO 3309), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
