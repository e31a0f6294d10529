//! The digits guest and model end to end: accuracy on the held-out split, single and
//! batched bodies, HTTP/2, and the bundled (no-config) server.

mod common;

use common::{Server, classify, client, digits_test_split, post_json, test_config};
use serde_json::json;

/// Accuracy the issue asks of the classifier on its held-out split.
const MIN_ACCURACY: f64 = 0.95;

fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    correct as f64 / labels.len() as f64
}

#[tokio::test]
async fn classifies_the_held_out_split_one_image_per_request() {
    let server = Server::in_process(&test_config());
    let client = client();
    let (images, labels) = digits_test_split();
    let mut predicted = Vec::with_capacity(images.len());
    for image in &images {
        predicted.push(classify(&client, &server, image).await);
    }
    let accuracy = accuracy(&predicted, &labels);
    assert!(accuracy >= MIN_ACCURACY, "accuracy {accuracy} on {} images", labels.len());
}

#[tokio::test]
async fn batched_bodies_give_the_same_answers_as_single_ones() {
    let server = Server::in_process(&test_config());
    let client = client();
    let (images, labels) = digits_test_split();
    let mut predicted = Vec::new();
    for chunk in images.chunks(50) {
        let (status, body) = post_json(&client, &server.url("/digits"), &json!({ "images": chunk })).await;
        assert_eq!(status, 200, "{body}");
        let answers = body.as_array().expect("a list of predictions");
        assert_eq!(answers.len(), chunk.len());
        for (image, answer) in chunk.iter().zip(answers) {
            let label = answer["label"].as_u64().unwrap() as usize;
            let probabilities: Vec<f64> = serde_json::from_value(answer["probabilities"].clone()).unwrap();
            assert_eq!(probabilities.len(), 10);
            assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-4);
            let argmax = (0..10).max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b])).unwrap();
            assert_eq!(label, argmax);
            predicted.push(label);
            if predicted.len() % 60 == 1 {
                assert_eq!(classify(&client, &server, image).await, label, "batched and single disagree");
            }
        }
    }
    let accuracy = accuracy(&predicted, &labels);
    assert!(accuracy >= MIN_ACCURACY, "accuracy {accuracy}");
}

#[tokio::test]
async fn the_same_request_works_over_http2() {
    let server = Server::in_process(&test_config());
    let (images, labels) = digits_test_split();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2.post(server.url("/digits")).json(&json!({ "pixels": images[0] })).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["label"].as_u64().unwrap() as usize, labels[0]);
    let h1_label = classify(&client(), &server, &images[0]).await;
    assert_eq!(h1_label, labels[0]);
}

#[tokio::test]
async fn serves_the_bundled_examples_without_a_config() {
    // A process of its own: the bundled examples load ONNX Runtime from models/, and a
    // process loads ONNX Runtime once, as the first of its nodes configures it.
    let server = Server::start_bundled();
    let client = client();
    let (images, labels) = digits_test_split();
    assert_eq!(classify(&client, &server, &images[3]).await, labels[3]);
    let (status, body) = post_json(&client, &server.url("/hello"), &json!({})).await;
    assert_eq!((status, body), (200, json!({ "served": 1 })));
}
