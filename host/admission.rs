//! Admission control for a route: a cap on instances running at once and a bounded,
//! first-come-first-served queue of requests waiting for one.
//!
//! A request that finds the queue full is rejected at once, without touching the guest (the
//! server answers 503 + `Retry-After`). A request still waiting at its deadline leaves the
//! queue and never runs (504). The permit a request gets is held until its instance is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queue: usize,
}

impl Admission {
    /// At most `max_concurrency` admitted at once, at most `max_queue` waiting.
    pub fn new(max_concurrency: usize, max_queue: usize) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max_concurrency)),
            waiting: AtomicUsize::new(0),
            max_queue,
        }
    }

    /// Admits a request now, or queues it until a slot frees up or `deadline` passes.
    pub async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Rejection> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _place = QueuePlace::take(&self.waiting, self.max_queue).ok_or(Rejection::QueueFull)?;
        match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed, so the only failure is the deadline.
            Ok(Err(_)) | Err(_) => Err(Rejection::DeadlineExpired),
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// A place in the queue, given back when dropped (admitted, timed out or cancelled).
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(waiting: &'a AtomicUsize, max_queue: usize) -> Option<QueuePlace<'a>> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_queue).then_some(n + 1)
            })
            .ok()
            .map(|_| QueuePlace(waiting))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queues_up_to_the_cap_then_rejects() {
        let admission = Arc::new(Admission::new(1, 1));
        let far = Instant::now() + Duration::from_secs(60);
        let first = admission.admit(far).await.unwrap();

        let queued = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit(far).await.map(drop) }
        });
        while admission.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            admission.admit(far).await.unwrap_err(),
            Rejection::QueueFull
        );

        drop(first);
        assert_eq!(queued.await.unwrap(), Ok(()));
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_expires_at_its_deadline() {
        let admission = Admission::new(1, 4);
        let _busy = admission
            .admit(Instant::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            admission.admit(soon).await.unwrap_err(),
            Rejection::DeadlineExpired
        );
        assert_eq!(admission.waiting(), 0);
    }
}
