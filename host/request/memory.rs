//! The node's memory budget for requests: one count, across REST, gRPC and guests, of the
//! bytes requests make the node hold: bodies being received, tensors decoded from them,
//! the tensors guests make, model outputs and the answers encoded from them.
//!
//! Memory is charged before it is committed wherever its size is known beforehand (a body's
//! declared length, a tensor's declared shape), and as it grows otherwise (a chunked body,
//! a gRPC message arriving). A charge the budget cannot take fails at once: the request is
//! refused (`503` + `Retry-After`, gRPC `RESOURCE_EXHAUSTED`) and the node goes on serving the
//! others, instead of all of them sharing an out-of-memory kill. A [`Charge`] gives its bytes
//! back when dropped, so what a request holds is released however it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The bytes requests may make the node hold at once, and how many they hold now.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// The most ever held at once.
    peak: AtomicUsize,
    /// Charges refused.
    refusals: AtomicU64,
}

/// A charge the budget could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the node's memory for requests is in use: {wanted} more bytes wanted, {used} of {limit} held (server.memory_budget_mib)"
)]
pub struct MemoryExhausted {
    pub wanted: usize,
    pub used: usize,
    pub limit: usize,
}

impl MemoryExhausted {
    /// Whether the charge is larger than the whole budget: retrying cannot help.
    pub fn never_fits(&self) -> bool {
        self.wanted > self.limit
    }
}

/// Bytes held against the budget, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
        })
    }

    /// Takes `bytes`, or fails without taking any.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Result<Charge, MemoryExhausted> {
        self.take(bytes)?;
        Ok(Charge { budget: self.clone(), bytes })
    }

    /// A charge of nothing yet, to grow.
    pub fn nothing(self: &Arc<Self>) -> Charge {
        Charge { budget: self.clone(), bytes: 0 }
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes held at once since start-up.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Charges refused since start-up.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> Result<(), MemoryExhausted> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(total) = used.checked_add(bytes).filter(|&total| total <= self.limit) else {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                return Err(MemoryExhausted { wanted: bytes, used, limit: self.limit });
            };
            match self.used.compare_exchange_weak(used, total, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.peak.fetch_max(total, Ordering::Relaxed);
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Charge {
    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `bytes` more, or fails, holding what it held.
    pub fn grow(&mut self, bytes: usize) -> Result<(), MemoryExhausted> {
        self.budget.take(bytes)?;
        self.bytes += bytes;
        Ok(())
    }

    /// Gives back `bytes` of what it holds (all of it, if it holds less).
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.budget.give_back(bytes);
        self.bytes -= bytes;
    }

    /// Holds exactly `bytes` from now on: grows or gives back the difference.
    pub fn resize(&mut self, bytes: usize) -> Result<(), MemoryExhausted> {
        match bytes.checked_sub(self.bytes) {
            Some(more) => self.grow(more),
            None => {
                self.shrink(self.bytes - bytes);
                Ok(())
            }
        }
    }

    /// Takes over what `other` holds.
    pub fn absorb(&mut self, mut other: Charge) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget), "one budget per node");
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_beyond_the_limit_and_given_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let first = budget.charge(60).unwrap();
        let refused = budget.charge(41).unwrap_err();
        assert_eq!(refused, MemoryExhausted { wanted: 41, used: 60, limit: 100 });
        assert!(!refused.never_fits());
        assert!(budget.charge(101).unwrap_err().never_fits());
        let mut second = budget.nothing();
        second.grow(40).unwrap();
        assert!(second.grow(1).is_err(), "a refused growth takes nothing");
        assert_eq!((budget.used(), second.bytes()), (100, 40));
        drop(first);
        second.resize(70).unwrap();
        second.resize(10).unwrap();
        assert_eq!(budget.used(), 10);
        let mut third = budget.charge(5).unwrap();
        third.absorb(second);
        assert_eq!((budget.used(), third.bytes()), (15, 15));
        drop(third);
        assert_eq!((budget.used(), budget.peak(), budget.refusals()), (0, 100, 3));
        assert!(budget.charge(usize::MAX).is_err(), "no overflow");
    }
}
