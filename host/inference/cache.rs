//! A model's result cache: outputs keyed by the exact bytes of the inputs.
//!
//! Bounded by entry count and by the bytes its keys and outputs hold (the oldest entries go
//! first; an entry larger than the whole byte bound is not kept), and by age: an entry older
//! than the time to live is not a hit, but it is kept until evicted, so that under overload a
//! stale result can be served instead of a refusal when the model is configured to allow it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::inference::tensor::Tensor;

/// The exact bytes of a request's inputs: element types, shapes and data.
pub type CacheKey = Vec<u8>;

/// The key for checked inputs (in the model's input order).
pub fn key(inputs: &[Tensor]) -> CacheKey {
    let mut key = Vec::with_capacity(inputs.iter().map(|t| t.data.len() + 8 * t.shape.len() + 2).sum());
    for tensor in inputs {
        key.push(tensor.element_type as u8);
        key.push(tensor.shape.len() as u8);
        for dim in &tensor.shape {
            key.extend_from_slice(&(*dim as u64).to_le_bytes());
        }
        key.extend_from_slice(&tensor.data);
    }
    key
}

/// What an entry costs beside its key's and outputs' bytes: the map's and the queue's
/// bookkeeping, and each tensor's shape.
const ENTRY_OVERHEAD_BYTES: usize = 256;

/// A bounded map from inputs to outputs.
pub struct ResultCache {
    capacity: usize,
    max_bytes: usize,
    time_to_live: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<CacheKey, Entry>,
    /// Bytes the entries hold.
    bytes: usize,
    /// Keys from oldest to newest insertion (a key re-inserted appears again; the stale
    /// position is skipped at eviction by comparing insertion times).
    order: VecDeque<(CacheKey, Instant)>,
}

struct Entry {
    outputs: Vec<Tensor>,
    inserted: Instant,
    bytes: usize,
}

/// What an entry of `key` holding `outputs` costs.
fn entry_bytes(key: &CacheKey, outputs: &[Tensor]) -> usize {
    let tensors: usize = outputs.iter().map(|t| t.data.len() + t.shape.len() * 8).sum();
    2 * key.len() + tensors + ENTRY_OVERHEAD_BYTES
}

impl ResultCache {
    /// A cache of at most `capacity` entries holding at most `max_bytes`.
    pub fn new(capacity: usize, max_bytes: usize, time_to_live: Duration) -> ResultCache {
        ResultCache { capacity, max_bytes, time_to_live, state: Mutex::new(State::default()) }
    }

    /// Bytes the entries hold now.
    pub fn bytes(&self) -> usize {
        self.state.lock().unwrap().bytes
    }

    /// The outputs for `key`, if cached within the time to live.
    pub fn get_fresh(&self, key: &CacheKey) -> Option<Vec<Tensor>> {
        let state = self.state.lock().unwrap();
        state
            .entries
            .get(key)
            .filter(|entry| entry.inserted.elapsed() <= self.time_to_live)
            .map(|entry| entry.outputs.clone())
    }

    /// The outputs for `key`, however old.
    pub fn get_stale(&self, key: &CacheKey) -> Option<Vec<Tensor>> {
        self.state.lock().unwrap().entries.get(key).map(|entry| entry.outputs.clone())
    }

    /// Stores the outputs for `key`, evicting the oldest entries beyond the capacity and the
    /// byte bound. Outputs larger than the byte bound are not kept.
    pub fn insert(&self, key: CacheKey, outputs: Vec<Tensor>) {
        let bytes = entry_bytes(&key, &outputs);
        if bytes > self.max_bytes {
            return;
        }
        let inserted = Instant::now();
        let mut state = self.state.lock().unwrap();
        state.order.push_back((key.clone(), inserted));
        state.bytes += bytes;
        if let Some(replaced) = state.entries.insert(key, Entry { outputs, inserted, bytes }) {
            state.bytes -= replaced.bytes;
        }
        while state.entries.len() > self.capacity || state.bytes > self.max_bytes {
            let Some((oldest, when)) = state.order.pop_front() else {
                break;
            };
            if state.entries.get(&oldest).is_some_and(|entry| entry.inserted == when) {
                let evicted = state.entries.remove(&oldest).expect("the entry is there");
                state.bytes -= evicted.bytes;
            }
        }
        // Keep the order list from growing without bound when keys are re-inserted often.
        if state.order.len() > 2 * self.capacity.max(1) {
            let State { entries, order, .. } = &mut *state;
            order.retain(|(key, when)| entries.get(key).is_some_and(|entry| entry.inserted == *when));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::tensor::ElementType;

    fn tensor(byte: u8) -> Tensor {
        Tensor::new(ElementType::U8, vec![1], vec![byte]).unwrap()
    }

    #[test]
    fn keys_are_exact_and_entries_bounded() {
        let cache = ResultCache::new(2, usize::MAX, Duration::from_secs(60));
        let (a, b, c) = (key(&[tensor(1)]), key(&[tensor(2)]), key(&[tensor(3)]));
        assert_ne!(a, b);
        cache.insert(a.clone(), vec![tensor(10)]);
        cache.insert(b.clone(), vec![tensor(20)]);
        assert_eq!(cache.get_fresh(&a), Some(vec![tensor(10)]));
        cache.insert(c.clone(), vec![tensor(30)]);
        assert_eq!(cache.get_fresh(&a), None, "the oldest entry is evicted");
        assert_eq!(cache.get_fresh(&c), Some(vec![tensor(30)]));
        for _ in 0..10 {
            cache.insert(b.clone(), vec![tensor(21)]);
        }
        assert_eq!(cache.get_fresh(&b), Some(vec![tensor(21)]));
        assert_eq!(cache.get_fresh(&c), Some(vec![tensor(30)]), "re-inserting b does not evict c");
    }

    #[test]
    fn expired_entries_are_only_served_stale() {
        let cache = ResultCache::new(4, usize::MAX, Duration::ZERO);
        let k = key(&[tensor(1)]);
        cache.insert(k.clone(), vec![tensor(9)]);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(cache.get_fresh(&k), None);
        assert_eq!(cache.get_stale(&k), Some(vec![tensor(9)]));
    }

    #[test]
    fn entries_are_bounded_in_bytes_too() {
        let big = |byte: u8| Tensor::new(ElementType::U8, vec![1000], vec![byte; 1000]).unwrap();
        let one = entry_bytes(&key(&[tensor(1)]), &[big(0)]);
        let cache = ResultCache::new(100, 2 * one + one / 2, Duration::from_secs(60));
        for n in 0..5 {
            cache.insert(key(&[tensor(n)]), vec![big(n)]);
        }
        assert_eq!(cache.bytes(), 2 * one, "two entries fit");
        assert!(
            cache.get_fresh(&key(&[tensor(4)])).is_some() && cache.get_fresh(&key(&[tensor(2)])).is_none()
        );
        let huge = Tensor::new(ElementType::U8, vec![10_000], vec![0; 10_000]).unwrap();
        cache.insert(key(&[tensor(9)]), vec![huge]);
        assert!(cache.get_fresh(&key(&[tensor(9)])).is_none(), "larger than the bound: not kept");
        assert_eq!(cache.bytes(), 2 * one, "and nothing evicted for it");
    }
}
