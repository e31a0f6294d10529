//! Admission control for a route: a cap on instances running at once and a bounded queue of
//! requests waiting for one, served by priority, then in arrival order.
//!
//! A request that finds the queue full is rejected at once, without touching the guest (the
//! server answers 503 + `Retry-After`). A request still waiting at its deadline leaves the
//! queue and never runs (504). The [`Permit`] a request gets is held until its instance is
//! gone; dropping it hands the slot straight to the next waiter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::request::{Priority, RequestContext};

/// Why a request was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Every instance slot is busy and the queue is full.
    QueueFull,
    /// The request's deadline passed while it waited.
    DeadlineExpired,
}

/// One route's concurrency cap and waiting queue.
pub struct Admission {
    slots: Arc<Slots>,
    capacity: usize,
    max_queue: usize,
}

struct Slots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: usize,
    /// Waiters by priority; each is handed a permit through its channel.
    waiting: [VecDeque<oneshot::Sender<Permit>>; Priority::LEVELS],
}

/// The right to run one instance of the route. Dropping it frees the slot.
pub struct Permit {
    slots: Option<Arc<Slots>>,
}

impl Admission {
    /// At most `capacity` admitted at once, at most `max_queue` waiting.
    pub fn new(capacity: usize, max_queue: usize) -> Admission {
        let state = SlotState { free: capacity, waiting: Default::default() };
        Admission { slots: Arc::new(Slots { state: Mutex::new(state) }), capacity, max_queue }
    }

    /// Admits a request now, or queues it until a slot frees up or its deadline passes.
    pub async fn admit(&self, context: &RequestContext) -> Result<Permit, Rejection> {
        let receiver = {
            let mut state = self.slots.state.lock().unwrap();
            if state.free > 0 {
                state.free -= 1;
                return Ok(Permit { slots: Some(self.slots.clone()) });
            }
            if state.queued() >= self.max_queue {
                state.forget_departed();
                if state.queued() >= self.max_queue {
                    return Err(Rejection::QueueFull);
                }
            }
            let (sender, receiver) = oneshot::channel();
            state.waiting[context.priority as usize].push_back(sender);
            receiver
        };
        let deadline = tokio::time::Instant::from_std(context.deadline);
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(permit)) => Ok(permit),
            // A permit is never dropped unsent, so the only failure is the deadline.
            Ok(Err(_)) | Err(_) => Err(Rejection::DeadlineExpired),
        }
    }

    /// Instances running now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.slots.state.lock().unwrap().free
    }

    /// The most instances that may run at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        let mut state = self.slots.state.lock().unwrap();
        state.forget_departed();
        state.queued()
    }
}

impl SlotState {
    fn queued(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }

    /// Drops waiters that gave up (deadline passed, client gone).
    fn forget_departed(&mut self) {
        for lane in &mut self.waiting {
            lane.retain(|waiter| !waiter.is_closed());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(slots) = self.slots.take() else {
            return;
        };
        let mut state = slots.state.lock().unwrap();
        // Hand the slot to the first waiter still waiting, highest priority first.
        while let Some(waiter) = state.waiting.iter_mut().find_map(VecDeque::pop_front) {
            match waiter.send(Permit { slots: Some(slots.clone()) }) {
                Ok(()) => return,
                // That waiter left: take the permit back without running this drop again.
                Err(mut unsent) => unsent.slots = None,
            }
        }
        state.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn context(priority: Priority, timeout: Duration) -> RequestContext {
        RequestContext::new(Instant::now() + timeout, priority)
    }

    #[tokio::test]
    async fn queues_up_to_the_cap_then_rejects() {
        let admission = Arc::new(Admission::new(1, 1));
        let long = context(Priority::Normal, Duration::from_secs(60));
        let first = admission.admit(&long).await.unwrap();
        assert_eq!(admission.in_use(), 1);

        let queued = tokio::spawn({
            let admission = admission.clone();
            let long = long.clone();
            async move { admission.admit(&long).await.map(drop) }
        });
        while admission.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(admission.admit(&long).await.err(), Some(Rejection::QueueFull));

        drop(first);
        assert_eq!(queued.await.unwrap(), Ok(()));
        assert_eq!((admission.waiting(), admission.in_use()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiting_request_expires_at_its_deadline_and_frees_its_place() {
        let admission = Admission::new(1, 1);
        let _busy = admission.admit(&context(Priority::Normal, Duration::from_secs(60))).await.unwrap();
        let short = context(Priority::Normal, Duration::from_millis(20));
        assert_eq!(admission.admit(&short).await.err(), Some(Rejection::DeadlineExpired));
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test]
    async fn higher_priorities_are_admitted_first() {
        let admission = Arc::new(Admission::new(1, 10));
        let busy = admission.admit(&context(Priority::Normal, Duration::from_secs(60))).await.unwrap();
        let (order_sender, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (name, priority) in
            [("low", Priority::Low), ("normal", Priority::Normal), ("high", Priority::High)]
        {
            let (waiter, order_sender) = (admission.clone(), order_sender.clone());
            tasks.push(tokio::spawn(async move {
                let permit = waiter.admit(&context(priority, Duration::from_secs(60))).await.unwrap();
                order_sender.send(name).unwrap();
                drop(permit);
            }));
            while admission.waiting() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(busy);
        for task in tasks {
            task.await.unwrap();
        }
        let admitted: Vec<_> = std::iter::from_fn(|| order.try_recv().ok()).collect();
        assert_eq!(admitted, ["high", "normal", "low"]);
    }
}
