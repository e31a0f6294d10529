//! The scheduler thread of a decoder model: it takes the sequences' step requests from the
//! board, forms each step's batches by the model's batching mode, runs them, appends the new
//! keys and values to each sequence's cache and answers each request with its next token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::decoder::Decoder;
use super::kv::{self, SequenceCache};
use super::{Board, GenerateError, GenerationBatching, GenerationConfig, Shared, StepRequest};

/// A request, and how many of its tokens a step takes.
type Taking = (StepRequest, usize);

/// A sequence that holds KV memory.
struct Live {
    cache: SequenceCache,
    _room: OwnedSemaphorePermit,
}

pub(super) struct Scheduler {
    model: String,
    decoder: Decoder,
    config: GenerationConfig,
    shared: Arc<Shared>,
    live: HashMap<u64, Live>,
    /// Prompts part-way through prefill: the rest of their tokens, waiting for a later step.
    unfinished: Vec<StepRequest>,
}

impl Scheduler {
    pub(super) fn new(
        model: &str,
        decoder: Decoder,
        config: GenerationConfig,
        shared: Arc<Shared>,
    ) -> Scheduler {
        Scheduler {
            model: model.to_string(),
            decoder,
            config,
            shared,
            live: HashMap::new(),
            unfinished: Vec::new(),
        }
    }

    pub(super) fn run(mut self) {
        while let Some(requests) = self.next_requests() {
            let (decode, prefill) = self.form(requests);
            if !decode.is_empty() {
                self.step(decode);
            }
            if !prefill.is_empty() {
                self.step(prefill);
            }
        }
    }

    /// Waits for work, frees what was dropped, and takes the requests for the next step
    /// (`None` once the model stops).
    fn next_requests(&mut self) -> Option<Vec<StepRequest>> {
        let shared = self.shared.clone();
        let mut board = shared.board.lock().expect("board lock");
        loop {
            self.free_dropped(&mut board);
            if board.stopping {
                return None;
            }
            if self.runnable(&board) {
                break;
            }
            board = shared.wake.wait(board).expect("board lock");
        }
        // Give the live sequences a moment to hand in their next token, so that a step
        // carries all of them: each answer goes to a guest, which asks again at once.
        let until = Instant::now() + self.config.gather_window;
        while !self.all_live_asked(&board) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            board = shared.wake.wait_timeout(board, left).expect("board lock").0;
            self.free_dropped(&mut board);
        }
        let mut requests = std::mem::take(&mut self.unfinished);
        requests.append(&mut board.requests);
        Some(requests)
    }

    /// Whether new sequences may join the running ones: always when batching continuously,
    /// only once the running batch is done otherwise.
    fn admitting(&self) -> bool {
        self.config.batching == GenerationBatching::Continuous || self.live.is_empty()
    }

    /// Whether a step could run: a live sequence asks, or a new one may join.
    fn runnable(&self, board: &Board) -> bool {
        let admitting = self.admitting();
        board
            .requests
            .iter()
            .chain(&self.unfinished)
            .any(|r| admitting || self.live.contains_key(&r.sequence))
    }

    fn all_live_asked(&self, board: &Board) -> bool {
        let asked = board.requests.iter().filter(|r| self.live.contains_key(&r.sequence)).count();
        asked >= self.live.len()
    }

    /// Frees the caches of sequences that were dropped, and their requests not yet run.
    fn free_dropped(&mut self, board: &mut Board) {
        for id in std::mem::take(&mut board.dropped) {
            board.requests.retain(|r| r.sequence != id);
            self.unfinished.retain(|r| r.sequence != id);
            if let Some(live) = self.live.remove(&id) {
                self.release(live);
            }
        }
    }

    fn release(&self, live: Live) {
        let bytes = (live.cache.tokens() * self.decoder.cache_shape().bytes_per_token()) as u64;
        self.shared.kv_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.shared.live.fetch_sub(1, Ordering::Relaxed);
        self.shared.sequences_freed.fetch_add(1, Ordering::Relaxed);
    }

    /// Splits the requests into this step's decode batch (live sequences, one token each) and
    /// prefill batch (new sequences, and live ones appending several tokens), each request
    /// with how many of its tokens the step takes; what this step cannot take waits for the
    /// next. Continuous batching prefills at most `prefill_chunk_tokens` in all per step.
    fn form(&mut self, requests: Vec<StepRequest>) -> (Vec<Taking>, Vec<Taking>) {
        let max = self.config.max_batch_size;
        let (mut decode, mut prefill) = (Vec::new(), Vec::new());
        let mut later = Vec::new();
        let admitting = self.admitting();
        let max = if self.config.batching == GenerationBatching::OneAtATime { 1 } else { max };
        let mut budget = self.config.prefill_chunk_tokens;
        let mut joining = 0;
        for request in requests {
            let is_live = self.live.contains_key(&request.sequence);
            if is_live && request.tokens.len() == 1 && decode.len() < max {
                decode.push((request, 1));
            } else if !is_live && !admitting {
                later.push(request);
            } else if (is_live || self.live.len() + joining < max)
                && (budget > 0 || self.config.batching != GenerationBatching::Continuous)
            {
                // Static batches prefill whole prompts; continuous ones a chunk per step.
                let take = match self.config.batching {
                    GenerationBatching::Continuous => request.tokens.len().min(budget),
                    GenerationBatching::Static | GenerationBatching::OneAtATime => request.tokens.len(),
                };
                budget -= take.min(budget);
                joining += usize::from(!is_live);
                prefill.push((request, take));
            } else {
                later.push(request);
            }
        }
        self.unfinished = later;
        (decode, prefill)
    }

    /// Runs one step for `requests`, each appending as many of its tokens as it is paired
    /// with; a request with tokens left over waits for a later step.
    fn step(&mut self, taking: Vec<Taking>) {
        let shape = self.decoder.cache_shape();
        let mut rest = Vec::with_capacity(taking.len());
        let mut requests = Vec::with_capacity(taking.len());
        for (mut request, take) in taking {
            rest.push(request.tokens.split_off(take));
            if let Some(room) = request.room.take() {
                self.live.insert(request.sequence, Live { cache: SequenceCache::new(shape), _room: room });
                self.shared.live.fetch_add(1, Ordering::Relaxed);
            }
            requests.push(request);
        }
        let inputs = {
            let sequences: Vec<(&SequenceCache, &[i64])> =
                requests.iter().map(|r| (&self.live[&r.sequence].cache, r.tokens.as_slice())).collect();
            kv::assemble(shape, &sequences)
        };
        let new = inputs.new;
        let outputs = match self.decoder.step(inputs) {
            Ok(outputs) => outputs,
            Err(error) => {
                let reason = format!("{error:#}");
                for request in requests {
                    if let Some(live) = self.live.remove(&request.sequence) {
                        self.release(live);
                    }
                    let _ = request.reply.send(Err(GenerateError::Failed {
                        model: self.model.clone(),
                        reason: reason.clone(),
                    }));
                }
                return;
            }
        };
        {
            let mut caches: Vec<(&mut SequenceCache, usize)> = Vec::with_capacity(requests.len());
            let lengths: HashMap<u64, usize> =
                requests.iter().map(|r| (r.sequence, r.tokens.len())).collect();
            // Each sequence appears once in a step; borrow their caches in the request order.
            let mut by_id: HashMap<u64, &mut Live> = self
                .live
                .iter_mut()
                .filter(|(id, _)| lengths.contains_key(id))
                .map(|(id, live)| (*id, live))
                .collect();
            for request in &requests {
                let live = by_id.remove(&request.sequence).expect("a stepped sequence is live");
                caches.push((&mut live.cache, lengths[&request.sequence]));
            }
            kv::append(shape, &outputs.present, new, &mut caches);
        }
        let appended: usize = requests.iter().map(|r| r.tokens.len()).sum();
        self.shared.kv_bytes.fetch_add((appended * shape.bytes_per_token()) as u64, Ordering::Relaxed);
        self.shared.steps.fetch_add(1, Ordering::Relaxed);
        for ((mut request, rest), next) in requests.into_iter().zip(rest).zip(outputs.next_tokens) {
            if rest.is_empty() {
                self.shared.tokens_generated.fetch_add(1, Ordering::Relaxed);
                let _ = request.reply.send(Ok(next));
            } else {
                request.tokens = rest;
                self.unfinished.push(request);
            }
        }
    }
}
