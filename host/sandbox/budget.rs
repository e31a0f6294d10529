//! What one guest instance may make the host hold: bytes (tensor data, model outputs, models
//! loaded from bytes) and resource handles.
//!
//! A guest's linear memory is capped by wasmtime, but what it asks the host to allocate is
//! host memory. Every such byte is charged to the instance's budget when it is made and
//! refunded when the guest drops it, and to the node's memory budget with it (the one every
//! request shares): a charge that would go over the instance's budget fails that call, so one
//! hoarding guest fails its own request; one the node's budget cannot take fails the request
//! as overloaded (503), so many guests together cannot take the node's memory either. The
//! resource table is capped too, which bounds the small host objects (`wasi:http` fields,
//! streams, pollables) a guest can pile up.

use std::sync::Arc;

use crate::request::memory::{Charge, MemoryBudget, MemoryExhausted};

/// A charge the budget could not take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the guest would hold {wanted} bytes of host memory ({what}), over its host budget of {limit} bytes \
     ({held} held): drop tensors it no longer needs, or raise the route's host_memory_mib"
)]
pub struct OverBudget {
    /// What the charge was for, e.g. `a tensor`.
    pub what: &'static str,
    pub wanted: usize,
    pub held: usize,
    pub limit: usize,
}

/// A charge refused: by the instance's own budget, or by the node's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostRefusal {
    #[error(transparent)]
    Instance(#[from] OverBudget),
    #[error(transparent)]
    Node(#[from] MemoryExhausted),
}

impl HostRefusal {
    /// The refusal as a trap: a node's refusal stays a [`MemoryExhausted`], which the host
    /// answers as overloaded (503).
    pub fn into_trap(self) -> wasmtime::Error {
        match self {
            HostRefusal::Instance(over) => over.into(),
            HostRefusal::Node(exhausted) => exhausted.into(),
        }
    }
}

/// One instance's host-memory budget, and what it holds of the node's.
#[derive(Debug)]
pub struct HostBudget {
    limit: usize,
    held: usize,
    node: Charge,
}

impl HostBudget {
    /// A budget of `limit` bytes, charged to `node` too.
    pub fn new(limit: usize, node: &Arc<MemoryBudget>) -> HostBudget {
        HostBudget { limit, held: 0, node: node.nothing() }
    }

    /// Takes `bytes` for `what`, or fails without taking anything.
    pub fn charge(&mut self, bytes: usize, what: &'static str) -> Result<(), HostRefusal> {
        let Some(total) = self.held.checked_add(bytes).filter(|&total| total <= self.limit) else {
            return Err(OverBudget { what, wanted: bytes, held: self.held, limit: self.limit }.into());
        };
        self.node.grow(bytes)?;
        self.held = total;
        Ok(())
    }

    /// Gives back `bytes` charged earlier.
    pub fn refund(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.held, "refunding {bytes} of {} held", self.held);
        let bytes = bytes.min(self.held);
        self.held -= bytes;
        self.node.shrink(bytes);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_refunds() {
        let node = MemoryBudget::new(1000);
        let mut budget = HostBudget::new(100, &node);
        budget.charge(60, "a tensor").unwrap();
        let refused = budget.charge(41, "a tensor").unwrap_err();
        assert_eq!(refused, OverBudget { what: "a tensor", wanted: 41, held: 60, limit: 100 }.into());
        assert_eq!(budget.held(), 60, "a refused charge takes nothing");
        budget.charge(40, "a tensor").unwrap();
        budget.refund(60);
        budget.charge(60, "outputs").unwrap();
        assert_eq!(budget.held(), 100);
        assert!(budget.charge(usize::MAX, "a tensor").is_err(), "no overflow");
        assert_eq!(node.used(), 100, "the node holds what the instance holds");
        drop(budget);
        assert_eq!(node.used(), 0, "and gets it back with the instance");
    }

    #[test]
    fn the_nodes_budget_refuses_what_instances_together_would_hold_beyond_it() {
        let node = MemoryBudget::new(150);
        let (mut first, mut second) = (HostBudget::new(100, &node), HostBudget::new(100, &node));
        first.charge(100, "a tensor").unwrap();
        assert!(matches!(second.charge(60, "a tensor"), Err(HostRefusal::Node(_))));
        assert_eq!(second.held(), 0);
        second.charge(50, "a tensor").unwrap();
        first.refund(100);
        second.charge(50, "a tensor").unwrap();
        assert_eq!(node.used(), 100);
    }
}
