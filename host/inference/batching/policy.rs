//! The batching policy: whether a model batches and up to how many items, which queued
//! requests join a batch, and how long a batch waits for more.
//!
//! - **The batch limit.** `batching = "off"`, a model without a batch axis or a
//!   `max_batch_size` of 1 run one request at a time; `"on"` batches up to `max_batch_size`
//!   items; `"auto"` measures the model at start-up and batches only if that is clearly
//!   cheaper per item ([`crate::inference::batching::calibration`]).
//! - **Buckets by length.** The batch is headed by the request whose turn comes first in the
//!   queue's fair order, so no length waits forever. Other requests join by fairness round
//!   (the turns within one batch of the head's first), then closest length, then turn order,
//!   while the batch stays within `max_padding_ratio`: padding elements over all elements of
//!   the padded batch. One long request does not turn a batch of short ones into padding; it
//!   heads, or joins, a batch of its own length.
//! - **Adaptive queue delay.** Waiting for more requests pays only when more are coming. The
//!   delay starts at zero and grows (up to `max_queue_delay`) when batches find more than one
//!   request already queued, a sign of load; it halves whenever a wait brought nothing, and a
//!   wait ends early once an eighth of the maximum passes without a new request. No wait
//!   is longer than a run of the model lately took: by then the executor could have finished
//!   this batch and taken the newcomers in the next. At one client the delay stays at zero,
//!   so batching adds no latency; under load batches fill.

use std::time::Duration;

use anyhow::Context;

use crate::inference::backend::Backend;
use crate::inference::batching::calibration::{self, Decision, Measurement};
use crate::inference::tensor::Signature;

/// Most padding in a batch, as a share of its input elements, for models that take a mask.
/// Measured on MiniLM on the CPU: 0.1 made batches too small, 0.4 spent a third of each batch
/// on padding.
pub const DEFAULT_MAX_PADDING_RATIO: f64 = 0.2;

/// Batching policy of a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Batching {
    /// Measure at start-up and batch only where it is cheaper per item.
    #[default]
    Auto,
    /// Always batch (when the model has a batch axis).
    On,
    /// Never batch.
    Off,
}

/// Decides the batch limit: 1 (no batching) or `max_batch_size`; for `auto`, from the
/// `remembered` measurement or else measured on a session of its own (so that a model that
/// panics on the measurement leaves no executor's state behind).
pub fn batch_limit(
    name: &str,
    signature: &Signature,
    batching: Batching,
    max_batch_size: usize,
    backend: &dyn Backend,
    remembered: Option<&Measurement>,
) -> anyhow::Result<Decision> {
    let fixed = |limit| Ok(Decision { limit, measured: None });
    if !signature.batchable() || max_batch_size <= 1 || batching == Batching::Off {
        return fixed(1);
    }
    if batching == Batching::On {
        return fixed(max_batch_size);
    }
    let mut session = backend.new_session().context("starting a session to measure batching")?;
    Ok(calibration::decide(name, signature, max_batch_size, session.as_mut(), remembered))
}

/// How a forming batch waits for more requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DelayPolicy {
    /// Wait only as long as waiting has recently brought more requests (up to the maximum).
    #[default]
    Adaptive,
    /// Always wait up to the maximum for a batch to fill (Triton's `max_queue_delay`).
    Fixed,
}

/// The queue delay in force for one model.
#[derive(Clone, Copy, Debug)]
pub struct QueueDelay {
    policy: DelayPolicy,
    max: Duration,
    current: Duration,
}

impl QueueDelay {
    pub fn new(policy: DelayPolicy, max: Duration) -> QueueDelay {
        let current = match policy {
            DelayPolicy::Adaptive => Duration::ZERO,
            DelayPolicy::Fixed => max,
        };
        QueueDelay { policy, max, current }
    }

    /// How long the first request of a batch may wait, now, given how long a run of the
    /// model lately took: under the adaptive policy never longer than that run.
    pub fn allowed(&self, recent_run: Duration) -> Duration {
        match self.policy {
            DelayPolicy::Adaptive => self.current.min(recent_run),
            DelayPolicy::Fixed => self.current,
        }
    }

    /// Under the adaptive policy, how long a wait goes on without a new request before it
    /// ends (an eighth of the maximum); `None` under the fixed policy, which waits it out.
    pub fn patience(&self) -> Option<Duration> {
        (self.policy == DelayPolicy::Adaptive).then_some(self.max / 8)
    }

    /// A batch was formed from requests already queued: there is load, waiting may pay.
    pub fn found_queued(&mut self) {
        if self.policy == DelayPolicy::Adaptive {
            self.current = (self.current * 2 + self.max / 8).min(self.max);
        }
    }

    /// A batch waited for more requests; `gained` says whether any came.
    pub fn waited(&mut self, gained: bool) {
        if self.policy != DelayPolicy::Adaptive {
            return;
        }
        if gained {
            self.found_queued();
        } else {
            self.current /= 2;
            if self.current < self.max / 64 {
                self.current = Duration::ZERO;
            }
        }
    }
}

/// The size of a batch being formed: items, the longest request, and the real elements per
/// position (so that padding can be told from content).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    pub items: usize,
    pub longest: usize,
    /// Σ items × length over the batch's requests.
    real: usize,
}

impl Fill {
    /// A batch of one request of `items` items, `length` long.
    pub fn new(items: usize, length: usize) -> Fill {
        Fill { items, longest: length, real: items * length }
    }

    /// Whether a request of `items` items, `length` long, may join: the batch stays within
    /// `max_items` and its padding within `max_padding_ratio`.
    pub fn admits(&self, items: usize, length: usize, max_items: usize, max_padding_ratio: f64) -> bool {
        let grown = self.with(items, length);
        grown.items <= max_items && grown.padding_ratio() <= max_padding_ratio + 1e-12
    }

    /// Adds a request.
    pub fn add(&mut self, items: usize, length: usize) {
        *self = self.with(items, length);
    }

    fn with(&self, items: usize, length: usize) -> Fill {
        Fill {
            items: self.items + items,
            longest: self.longest.max(length),
            real: self.real + items * length,
        }
    }

    /// The share of the padded batch that is padding: 0 when every request has one length.
    pub fn padding_ratio(&self) -> f64 {
        let padded = self.items * self.longest;
        if padded == 0 { 0.0 } else { 1.0 - self.real as f64 / padded as f64 }
    }
}

/// A queued request as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Its fairness round: how many batches' worth of turns come before its own (0 for the
    /// turns up to one batch after the head's). Earlier rounds join first.
    pub round: usize,
    /// Its place in turn order (the queue's fair order: priority within each tenant, shares
    /// between tenants).
    pub order: usize,
    pub items: usize,
    pub length: usize,
}

/// Picks, from compatible queued requests, those that join a batch filled so far as `fill`
/// whose head is `head_length` long: earlier fairness rounds first, then closest length,
/// then turn order; each joins if the batch stays within its limits. Returns the chosen
/// requests' `order`, and leaves `fill` as the batch will be.
pub fn choose(
    fill: &mut Fill,
    head_length: usize,
    mut candidates: Vec<Candidate>,
    max_items: usize,
    max_padding_ratio: f64,
) -> Vec<usize> {
    candidates.sort_by_key(|c| (c.round, c.length.abs_diff(head_length), c.order));
    let mut chosen = Vec::new();
    for candidate in candidates {
        if fill.items >= max_items {
            break;
        }
        if fill.admits(candidate.items, candidate.length, max_items, max_padding_ratio) {
            fill.add(candidate.items, candidate.length);
            chosen.push(candidate.order);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_adaptive_delay_stays_at_zero_without_load_and_grows_with_it() {
        let max = Duration::from_millis(2);
        let mut delay = QueueDelay::new(DelayPolicy::Adaptive, max);
        assert_eq!(delay.allowed(Duration::MAX), Duration::ZERO, "one client: no waiting at all");
        delay.found_queued();
        assert_eq!(delay.allowed(Duration::MAX), max / 8);
        for _ in 0..10 {
            delay.waited(true);
        }
        assert_eq!(delay.allowed(Duration::MAX), max, "capped at the maximum");
        delay.waited(false);
        assert_eq!(delay.allowed(Duration::MAX), max / 2, "a fruitless wait halves it");
        for _ in 0..6 {
            delay.waited(false);
        }
        assert_eq!(delay.allowed(Duration::MAX), Duration::ZERO, "load gone: back to zero");

        delay.found_queued();
        assert_eq!(
            delay.allowed(Duration::from_micros(10)),
            Duration::from_micros(10),
            "never longer than a run"
        );

        let mut fixed = QueueDelay::new(DelayPolicy::Fixed, max);
        fixed.waited(false);
        assert_eq!(fixed.allowed(Duration::from_micros(10)), max, "fixed means fixed");
    }

    #[test]
    fn padding_ratio_counts_the_padded_share() {
        let mut fill = Fill::new(1, 10);
        assert_eq!(fill.padding_ratio(), 0.0);
        fill.add(1, 30);
        // 2 × 30 padded, 40 real.
        assert!((fill.padding_ratio() - 1.0 / 3.0).abs() < 1e-9);
        assert!(!fill.admits(1, 100, 32, 0.5), "100 long: 3 × 100 padded, 140 real");
        assert!(fill.admits(1, 20, 32, 0.35), "3 × 30 padded, 60 real");
        assert!(!fill.admits(31, 30, 32, 1.0), "over the item limit");
    }

    fn candidate(order: usize, length: usize) -> Candidate {
        Candidate { round: 0, order, items: 1, length }
    }

    #[test]
    fn requests_join_closest_length_first_within_the_padding_bound() {
        // Head of length 10; queued: 100, 12, 50, 9, 11 long.
        let lengths = [100, 12, 50, 9, 11];
        let candidates = lengths.iter().enumerate().map(|(i, &l)| candidate(i, l)).collect();
        let mut fill = Fill::new(1, 10);
        let chosen = choose(&mut fill, 10, candidates, 32, 0.25);
        let chosen_lengths: Vec<usize> = chosen.iter().map(|&order| lengths[order]).collect();
        assert_eq!(chosen_lengths, vec![9, 11, 12], "the long ones wait for a batch of their own");
        assert!(fill.padding_ratio() <= 0.25);
        assert_eq!((fill.items, fill.longest), (4, 12));
    }

    #[test]
    fn equal_lengths_join_in_turn_order_up_to_the_item_limit_and_earlier_rounds_come_first() {
        let mut candidates: Vec<Candidate> =
            (0..5).map(|order| Candidate { round: 1, ..candidate(order, 7) }).collect();
        candidates.push(Candidate { round: 0, order: 5, items: 1, length: 30 });
        let mut fill = Fill::new(1, 7);
        let chosen = choose(&mut fill, 7, candidates, 4, 1.0);
        assert_eq!(chosen, vec![5, 0, 1], "round 0 first however long, then turn order");
    }
}
