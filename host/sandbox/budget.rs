//! What one guest instance may make the host hold: bytes (tensor data, model outputs, models
//! loaded from bytes) and resource handles.
//!
//! A guest's linear memory is capped by wasmtime, but what it asks the host to allocate is
//! host memory. Every such byte is charged to the instance's budget when it is made and
//! refunded when the guest drops it; a charge that would go over fails that call, so one
//! hoarding guest fails its own request and the node's memory stays bounded by the sum of
//! the budgets of the instances running. The resource table is capped too, which bounds
//! the small host objects (`wasi:http` fields, streams, pollables) a guest can pile up.

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

/// One instance's host-memory budget.
#[derive(Debug)]
pub struct HostBudget {
    limit: usize,
    held: usize,
}

impl HostBudget {
    pub fn new(limit: usize) -> HostBudget {
        HostBudget { limit, held: 0 }
    }

    /// Takes `bytes` for `what`, or fails without taking anything.
    pub fn charge(&mut self, bytes: usize, what: &'static str) -> Result<(), OverBudget> {
        match self.held.checked_add(bytes).filter(|&total| total <= self.limit) {
            Some(total) => {
                self.held = total;
                Ok(())
            }
            None => Err(OverBudget { what, wanted: bytes, held: self.held, limit: self.limit }),
        }
    }

    /// Gives back `bytes` charged earlier.
    pub fn refund(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.held, "refunding {bytes} of {} held", self.held);
        self.held = self.held.saturating_sub(bytes);
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
        let mut budget = HostBudget::new(100);
        budget.charge(60, "a tensor").unwrap();
        let refused = budget.charge(41, "a tensor").unwrap_err();
        assert_eq!(refused, OverBudget { what: "a tensor", wanted: 41, held: 60, limit: 100 });
        assert_eq!(budget.held(), 60, "a refused charge takes nothing");
        budget.charge(40, "a tensor").unwrap();
        budget.refund(60);
        budget.charge(60, "outputs").unwrap();
        assert_eq!(budget.held(), 100);
        assert!(budget.charge(usize::MAX, "a tensor").is_err(), "no overflow");
    }
}
