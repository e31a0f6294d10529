//! Admission control for a route: a cap on instances running at once and a bounded queue of
//! requests waiting for one, shared fairly between tenants by weight, and by priority within
//! a tenant ([`FairQueue`]).
//!
//! A request that finds the queue full is rejected at once, without touching the guest (the
//! server answers 503 + `Retry-After`), unless another tenant holds more than its share of
//! the queue: then that tenant's newest waiter is rejected in its place (push-out), so one
//! tenant's flood cannot lock the others out. A request still waiting at its deadline leaves
//! the queue and never runs (504); one that has waited the route's `max_queue_wait_ms` leaves
//! it too, as overload (503 + `Retry-After`). The [`Permit`] a request gets is held until its instance
//! is gone; dropping it hands the slot straight to the next waiter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::request::RequestContext;
use crate::request::fair::FairQueue;

/// Why a request was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Every instance slot is busy and the queue is full.
    QueueFull,
    /// The request's deadline passed while it waited.
    DeadlineExpired,
    /// The request waited the longest a request may wait for an instance.
    WaitedTooLong,
}

/// One route's concurrency cap and waiting queue.
pub struct Admission {
    slots: Arc<Slots>,
    capacity: usize,
    max_queue: usize,
    max_wait: Option<Duration>,
}

struct Slots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: usize,
    /// Waiters by tenant and priority; each is handed a permit, or its push-out, through its
    /// channel.
    waiting: FairQueue<oneshot::Sender<Result<Permit, Rejection>>>,
}

/// The right to run one instance of the route. Dropping it frees the slot.
pub struct Permit {
    slots: Option<Arc<Slots>>,
}

impl Admission {
    /// At most `capacity` admitted at once, at most `max_queue` waiting, each for at most
    /// `max_wait` (with `None`, until its deadline).
    pub fn new(capacity: usize, max_queue: usize, max_wait: Option<Duration>) -> Admission {
        let state = SlotState { free: capacity, waiting: FairQueue::default() };
        Admission { slots: Arc::new(Slots { state: Mutex::new(state) }), capacity, max_queue, max_wait }
    }

    /// Admits a request now, or queues it until a slot frees up, its deadline passes, or it
    /// has waited `max_wait`.
    pub async fn admit(&self, context: &RequestContext) -> Result<Permit, Rejection> {
        let receiver = {
            let mut state = self.slots.state.lock().unwrap();
            if state.free > 0 {
                state.free -= 1;
                // Served at once, but served: it counts against the tenant's share.
                state.waiting.charge(&context.tenant, 1.0);
                return Ok(Permit { slots: Some(self.slots.clone()) });
            }
            if state.queued() >= self.max_queue {
                state.forget_departed();
                if state.queued() >= self.max_queue {
                    // Room for a tenant under its share, at the expense of one over it.
                    let displaced = state.waiting.evict_for(&context.tenant).ok_or(Rejection::QueueFull)?;
                    let _ = displaced.send(Err(Rejection::QueueFull));
                }
            }
            let (sender, receiver) = oneshot::channel();
            state.waiting.push(&context.tenant, context.priority, 1.0, sender);
            receiver
        };
        let deadline = tokio::time::Instant::from_std(context.deadline);
        let wait_ends = self.max_wait.map(|wait| tokio::time::Instant::now() + wait);
        let (until, ran_out) = match wait_ends {
            Some(wait_ends) if wait_ends < deadline => (wait_ends, Rejection::WaitedTooLong),
            _ => (deadline, Rejection::DeadlineExpired),
        };
        match tokio::time::timeout_at(until, receiver).await {
            Ok(Ok(admitted)) => admitted,
            // A waiter is never dropped unanswered, so the only failure is running out of time.
            Ok(Err(_)) | Err(_) => Err(ran_out),
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
        self.waiting.len()
    }

    /// Drops waiters that gave up (deadline passed, client gone).
    fn forget_departed(&mut self) {
        self.waiting.retain(|waiter| !waiter.is_closed());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(slots) = self.slots.take() else {
            return;
        };
        let mut state = slots.state.lock().unwrap();
        // Hand the slot to the next waiter still waiting, in fair order.
        while let Some(waiter) = state.waiting.pop() {
            match waiter.send(Ok(Permit { slots: Some(slots.clone()) })) {
                Ok(()) => return,
                // That waiter left: take the permit back without running this drop again.
                Err(Ok(mut unsent)) => unsent.slots = None,
                Err(Err(_)) => unreachable!("only permits are sent here"),
            }
        }
        state.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::request::Priority;
    use crate::request::tenant::Tenant;

    fn context(priority: Priority, timeout: Duration) -> RequestContext {
        RequestContext::new(Instant::now() + timeout, priority)
    }

    #[tokio::test]
    async fn queues_up_to_the_cap_then_rejects() {
        let admission = Arc::new(Admission::new(1, 1, None));
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
    async fn a_request_waits_at_most_max_wait_then_is_overload() {
        let admission = Admission::new(1, 4, Some(Duration::from_millis(50)));
        let _busy = admission.admit(&context(Priority::Normal, Duration::from_secs(60))).await.unwrap();
        let asked = Instant::now();
        let patient = context(Priority::Normal, Duration::from_secs(60));
        assert_eq!(admission.admit(&patient).await.err(), Some(Rejection::WaitedTooLong));
        assert!(asked.elapsed() >= Duration::from_millis(50), "it waited first");
        assert_eq!(admission.waiting(), 0, "it left the queue");
        // A deadline nearer than the wait still ends the wait as a deadline.
        let hurried = context(Priority::Normal, Duration::from_millis(10));
        assert_eq!(admission.admit(&hurried).await.err(), Some(Rejection::DeadlineExpired));
    }

    #[tokio::test]
    async fn a_waiting_request_expires_at_its_deadline_and_frees_its_place() {
        let admission = Admission::new(1, 1, None);
        let _busy = admission.admit(&context(Priority::Normal, Duration::from_secs(60))).await.unwrap();
        let short = context(Priority::Normal, Duration::from_millis(20));
        assert_eq!(admission.admit(&short).await.err(), Some(Rejection::DeadlineExpired));
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test]
    async fn higher_priorities_are_admitted_first() {
        let admission = Arc::new(Admission::new(1, 10, None));
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

    #[tokio::test]
    async fn a_flooding_tenant_is_pushed_out_of_a_full_queue_and_the_other_admitted_next() {
        let admission = Arc::new(Admission::new(1, 4, None));
        let tenant = |index, name: &str| {
            Arc::new(Tenant { index, name: name.into(), weight: 1, max_priority: Priority::High })
        };
        let (flood, other) = (tenant(1, "flood"), tenant(2, "other"));
        let for_tenant = |tenant: &Arc<Tenant>| {
            RequestContext::for_tenant(
                Instant::now() + Duration::from_secs(60),
                Priority::High,
                tenant.clone(),
            )
        };
        let busy = admission.admit(&for_tenant(&flood)).await.unwrap();
        let mut flooders = Vec::new();
        for _ in 0..4 {
            let (waiter, context) = (admission.clone(), for_tenant(&flood));
            flooders.push(tokio::spawn(async move { waiter.admit(&context).await.map(drop) }));
            while admission.waiting() < flooders.len() {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(admission.admit(&for_tenant(&flood)).await.err(), Some(Rejection::QueueFull));
        // The other tenant finds the queue full of the flood, and takes the newest flooder's place.
        let waiting_other = tokio::spawn({
            let (admission, context) = (admission.clone(), for_tenant(&other));
            async move { admission.admit(&context).await.map(drop) }
        });
        let pushed_out = flooders.pop().unwrap().await.unwrap();
        assert_eq!(pushed_out, Err(Rejection::QueueFull));
        // And it is admitted first, though three flooders queued before it.
        drop(busy);
        assert_eq!(waiting_other.await.unwrap(), Ok(()));
        for flooder in flooders {
            assert_eq!(flooder.await.unwrap(), Ok(()));
        }
    }
}
