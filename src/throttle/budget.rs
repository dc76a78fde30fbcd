//! A [`Controller`] shared by every request to one storage account, on the real clock:
//! [`Budget::acquire`] waits until the request may start.

use super::{Blame, Controller, Limits, Outcome, Ticket, Wait};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
// tokio's clock: the real one in the daemon, a paused one in tests.
use tokio::time::Instant;

#[derive(Debug)]
pub struct Budget {
    controller: Mutex<Controller>,
    start: Instant,
    /// Woken when a request finishes (its window slot is free).
    finished: Notify,
}

/// A started request's place in the budget. Dropped without [`Permit::finish`] (the
/// request's future was cancelled) it counts as [`Outcome::NoAnswer`], so a slot never leaks.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    ticket: Option<Ticket>,
}

impl Budget {
    pub fn new(limits: Limits) -> Arc<Budget> {
        Arc::new(Budget {
            controller: Mutex::new(Controller::new(limits, Duration::ZERO)),
            start: Instant::now(),
            finished: Notify::new(),
        })
    }

    /// Waits until a request of `bytes` to `blob` fits the window and the buckets.
    pub async fn acquire(self: &Arc<Self>, blob: &str, bytes: u64) -> Permit {
        loop {
            // Registered before the check, so a finish between check and wait is not missed.
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let admitted = self.lock().acquire(self.start.elapsed(), blob, bytes);
            match admitted {
                Ok(ticket) => {
                    return Permit {
                        budget: Arc::clone(self),
                        ticket: Some(ticket),
                    }
                }
                Err(Wait::Slot) => finished.await,
                Err(Wait::For(d)) => tokio::time::sleep(d).await,
            }
        }
    }

    /// The controller's state now (window, rate scale, throttles seen).
    pub fn snapshot(&self) -> Controller {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Controller> {
        // The controller is consistent after every call; a panic elsewhere cannot break it.
        self.controller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Permit {
    pub fn finish(self, outcome: Outcome) {
        self.finish_with(outcome, None);
    }

    /// As [`Permit::finish`], with the wait a throttled answer asked for; says which scope
    /// a throttle was blamed on (if the account learns).
    pub fn finish_with(mut self, outcome: Outcome, hint: Option<Duration>) -> Option<Blame> {
        self.end(outcome, hint)
    }

    fn end(&mut self, outcome: Outcome, hint: Option<Duration>) -> Option<Blame> {
        let ticket = self.ticket.take()?;
        let now = self.budget.start.elapsed();
        let blame = self.budget.lock().finish_with(ticket, outcome, hint, now);
        self.budget.finished.notify_waiters();
        blame
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.end(Outcome::NoAnswer, None);
    }
}
