//! Generation: decoder models whose sequences live in the host between steps, and the
//! scheduler that steps every live sequence together (continuous batching).
//!
//! A [`Sequence`] is one generation: the guest appends tokens (its prompt, then each token it
//! accepted) and gets the model's next token back each time; the keys and values the model
//! computed stay in the host ([`kv`]) and are charged to the model's KV memory. Admission is
//! bounded by that memory: a sequence reserves room for `max_sequence_tokens` when it starts,
//! waits in a bounded queue if none is free, and is refused ([`GenerateError::Busy`], 503)
//! beyond it, so the host never runs out of memory. Dropping the sequence (the guest dropped
//! its context, the request was cancelled or timed out) frees it before the next step.
//!
//! The scheduler (`iteration`) is one thread per model that runs steps back to back:
//! - `continuous`: every step batches the decode of all live sequences, whichever guest owns
//!   them; sequences join and leave between steps, and new prompts are prefilled in chunks of
//!   at most `prefill_chunk_tokens` after the decode of each step, so arrivals never stall the
//!   streams already running for more than one chunk;
//! - `static`: a batch is formed of the sequences waiting when the last one finished, and runs
//!   until all of its sequences are done; arrivals wait for the next batch;
//! - `one-at-a-time`: one sequence at a time, to completion.
//!
//! The last two exist for comparison (`edge-infer bench generate`).

mod decoder;
mod iteration;
pub mod kv;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use self::decoder::Decoder;

/// How a decoder model's sequences are batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationBatching {
    Continuous,
    Static,
    OneAtATime,
}

/// The knobs of a decoder model.
#[derive(Clone, Debug)]
pub struct GenerationConfig {
    pub batching: GenerationBatching,
    /// Most sequences in one step.
    pub max_batch_size: usize,
    /// Most tokens (prompt and generated) in one sequence; what each sequence reserves.
    pub max_sequence_tokens: usize,
    /// Host memory for the KV cache of all sequences, in bytes.
    pub kv_memory_bytes: u64,
    /// Sequences that may wait for KV memory; beyond that, refused (503).
    pub queue_capacity: usize,
    /// Most prompt tokens prefilled per step.
    pub prefill_chunk_tokens: usize,
    /// How long a step waits for live sequences to hand in their next token, after the
    /// previous step answered them.
    pub gather_window: Duration,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            batching: GenerationBatching::Continuous,
            max_batch_size: 32,
            max_sequence_tokens: 512,
            kv_memory_bytes: 1 << 30,
            queue_capacity: 64,
            prefill_chunk_tokens: 128,
            gather_window: Duration::from_millis(2),
        }
    }
}

/// Why a sequence got no next token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GenerateError {
    /// No KV memory is free and the queue for it is full: to be retried.
    #[error("model {model:?} is busy: every sequence it has room for is running and {waiting} are waiting")]
    Busy { model: String, waiting: usize },
    /// The sequence would exceed `max_sequence_tokens`.
    #[error("the sequence would hold {tokens} tokens, more than model {model:?} allows ({limit})")]
    TooLong { model: String, tokens: usize, limit: usize },
    /// A token id outside the vocabulary, or no tokens.
    #[error("{0}")]
    InvalidInput(String),
    /// The model failed to run the step.
    #[error("model {model:?} failed: {reason}")]
    Failed { model: String, reason: String },
}

/// What the scheduler has done, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Sequences holding KV memory now.
    pub live_sequences: usize,
    /// Sequences waiting for KV memory now.
    pub waiting_sequences: usize,
    /// Bytes of cached keys and values held now.
    pub kv_bytes: u64,
    /// Steps run, and the tokens they produced.
    pub steps: u64,
    pub tokens_generated: u64,
    /// Sequences freed because they were dropped unfinished or finished.
    pub sequences_freed: u64,
    /// Sequences refused for want of KV memory.
    pub sequences_refused: u64,
}

/// A decoder model and its scheduler thread. Dropping it stops the thread.
pub struct Generator {
    name: String,
    shared: Arc<Shared>,
    room: Arc<Semaphore>,
    capacity: usize,
    config: GenerationConfig,
    vocabulary: Option<usize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the scheduler thread and the sequences share.
struct Shared {
    board: Mutex<Board>,
    wake: Condvar,
    waiting: AtomicUsize,
    live: AtomicUsize,
    kv_bytes: AtomicU64,
    steps: AtomicU64,
    tokens_generated: AtomicU64,
    sequences_freed: AtomicU64,
    sequences_refused: AtomicU64,
}

/// Work handed to the scheduler: steps asked for, and sequences gone.
#[derive(Default)]
struct Board {
    requests: Vec<StepRequest>,
    dropped: Vec<u64>,
    stopping: bool,
}

/// A sequence's request for its next token.
struct StepRequest {
    sequence: u64,
    tokens: Vec<i64>,
    /// The KV memory reserved for the sequence, handed over with its first request.
    room: Option<OwnedSemaphorePermit>,
    reply: oneshot::Sender<Result<i64, GenerateError>>,
}

impl Generator {
    /// Loads a decoder model (on ONNX Runtime, on the CPU) and starts its scheduler.
    /// `vocabulary`, if known, bounds the token ids a sequence may append.
    pub fn start(
        name: &str,
        model: &[u8],
        config: GenerationConfig,
        vocabulary: Option<usize>,
    ) -> anyhow::Result<Generator> {
        let decoder = Decoder::load(model)?;
        let shape = decoder.cache_shape();
        let reserve = (config.max_sequence_tokens * shape.bytes_per_token()) as u64;
        let sequences = (config.kv_memory_bytes / reserve.max(1)) as usize;
        if sequences == 0 {
            anyhow::bail!(
                "model {name:?}: kv_memory ({} bytes) holds no sequence of max_sequence_tokens ({}, {reserve} bytes)",
                config.kv_memory_bytes,
                config.max_sequence_tokens
            );
        }
        let shared = Arc::new(Shared {
            board: Mutex::new(Board::default()),
            wake: Condvar::new(),
            waiting: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            kv_bytes: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            tokens_generated: AtomicU64::new(0),
            sequences_freed: AtomicU64::new(0),
            sequences_refused: AtomicU64::new(0),
        });
        let scheduler = iteration::Scheduler::new(name, decoder, config.clone(), shared.clone());
        let thread =
            std::thread::Builder::new().name(format!("generate-{name}")).spawn(move || scheduler.run())?;
        Ok(Generator {
            name: name.to_string(),
            shared,
            room: Arc::new(Semaphore::new(sequences)),
            capacity: sequences,
            config,
            vocabulary,
            thread: Some(thread),
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many sequences its KV memory holds at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The knobs it runs with.
    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// A new, empty sequence: it holds nothing until its first [`Sequence::append`].
    pub fn sequence(self: &Arc<Self>) -> Sequence {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Sequence {
            generator: self.clone(),
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            tokens: 0,
            admitted: false,
        }
    }

    /// A snapshot of what it holds and has done.
    pub fn stats(&self) -> GenerationStats {
        let s = &self.shared;
        GenerationStats {
            live_sequences: s.live.load(Ordering::Relaxed),
            waiting_sequences: s.waiting.load(Ordering::Relaxed),
            kv_bytes: s.kv_bytes.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed),
            tokens_generated: s.tokens_generated.load(Ordering::Relaxed),
            sequences_freed: s.sequences_freed.load(Ordering::Relaxed),
            sequences_refused: s.sequences_refused.load(Ordering::Relaxed),
        }
    }

    fn submit(&self, request: StepRequest) {
        self.shared.board.lock().expect("board lock").requests.push(request);
        self.shared.wake.notify_one();
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.shared.board.lock().expect("board lock").stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One generation in progress, as a `wasi:nn` execution context holds it. Dropping it frees
/// its cache before the scheduler's next step.
pub struct Sequence {
    generator: Arc<Generator>,
    id: u64,
    tokens: usize,
    admitted: bool,
}

impl Sequence {
    /// Appends `tokens` (the prompt, or the tokens generated since) and returns the model's
    /// greedy next token. The first call waits for KV memory, or is refused if too many wait.
    pub async fn append(&mut self, tokens: Vec<i64>) -> Result<i64, GenerateError> {
        let generator = self.generator.clone();
        let model = || generator.name.clone();
        if tokens.is_empty() {
            return Err(GenerateError::InvalidInput("no tokens to append".into()));
        }
        if let Some(vocabulary) = generator.vocabulary
            && let Some(bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= vocabulary)
        {
            return Err(GenerateError::InvalidInput(format!(
                "token {bad} is not in model {:?}'s vocabulary of {vocabulary}",
                generator.name
            )));
        }
        let limit = generator.config.max_sequence_tokens;
        if self.tokens + tokens.len() > limit {
            return Err(GenerateError::TooLong { model: model(), tokens: self.tokens + tokens.len(), limit });
        }
        let room = if self.admitted { None } else { Some(self.admit().await?) };
        let (reply, answer) = oneshot::channel();
        let appended = tokens.len();
        generator.submit(StepRequest { sequence: self.id, tokens, room, reply });
        self.admitted = true;
        let next = answer.await.map_err(|_| GenerateError::Failed {
            model: model(),
            reason: "the scheduler stopped".into(),
        })??;
        self.tokens += appended;
        Ok(next)
    }

    /// Tokens appended so far.
    pub fn len(&self) -> usize {
        self.tokens
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }

    async fn admit(&self) -> Result<OwnedSemaphorePermit, GenerateError> {
        let generator = &self.generator;
        if let Ok(permit) = generator.room.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let shared = &generator.shared;
        let waiting = shared.waiting.fetch_add(1, Ordering::SeqCst);
        // Counted down however the wait ends, the request cancelled included.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(&shared.waiting);
        if waiting >= generator.config.queue_capacity {
            shared.sequences_refused.fetch_add(1, Ordering::Relaxed);
            return Err(GenerateError::Busy { model: generator.name.clone(), waiting });
        }
        generator.room.clone().acquire_owned().await.map_err(|_| GenerateError::Failed {
            model: generator.name.clone(),
            reason: "the model is shutting down".into(),
        })
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        if self.admitted {
            let shared = &self.generator.shared;
            shared.board.lock().expect("board lock").dropped.push(self.id);
            shared.wake.notify_one();
        }
    }
}
