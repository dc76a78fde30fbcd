//! Non-idempotent requests (Snapshot Blob, Copy Blob start) are sent without the storage
//! client's automatic retries: when an answer is lost after the service applied the request,
//! a blind re-send makes a second snapshot or a second copy. Here each attempt is preceded by
//! a lookup for what an earlier attempt may have made (a snapshot tagged with the cycle id, a
//! copy id on the destination), so whatever answers are lost, the effect happens once.

use crate::storage::BlobResult;
use std::future::Future;
use std::time::Duration;

/// Attempts of the request itself; the lookups before them have the client's own retries.
pub const ATTEMPTS: u32 = 5;

/// Wait before the second attempt; doubled before each further one (0.5 + 1 + 2 + 4 s in all),
/// so an outage of a few seconds does not fail the cycle, and a longer one is left to the next
/// run (the daemon's backoff).
const FIRST_WAIT: Duration = Duration::from_millis(500);

/// `find()`, and if it finds nothing, `make()`; when `make` fails in a way that may pass
/// (throttled, outage, no answer), look again before trying again, at most [`ATTEMPTS`] times.
pub async fn find_or_make<T, F, M>(
    mut find: impl FnMut() -> F,
    mut make: impl FnMut() -> M,
) -> BlobResult<T>
where
    F: Future<Output = BlobResult<Option<T>>>,
    M: Future<Output = BlobResult<T>>,
{
    let mut wait = FIRST_WAIT;
    let mut attempt = 1;
    loop {
        if let Some(found) = find().await? {
            return Ok(found);
        }
        match make().await {
            Err(e) if e.may_pass() && attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "no answer to a request that is not idempotent; looking for its effect before trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{BlobError, ErrorKind, Resource};
    use std::cell::Cell;

    fn lost() -> BlobError {
        BlobError::local(
            ErrorKind::Transient,
            Resource::Account("a".into()),
            "connection closed before the answer",
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_is_found_not_made_again() {
        // The first attempt is applied but its answer lost: the lookup before the second
        // finds it, and make runs once.
        let made = Cell::new(0);
        let stored = Cell::new(None::<u32>);
        let r = find_or_make(
            || async { Ok(stored.get()) },
            || async {
                made.set(made.get() + 1);
                stored.set(Some(7));
                Err(lost())
            },
        )
        .await;
        assert_eq!(r, Ok(7));
        assert_eq!(made.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded_and_the_last_error_returned() {
        let made = Cell::new(0);
        let r: BlobResult<u32> = find_or_make(
            || async { Ok(None) },
            || async {
                made.set(made.get() + 1);
                Err(lost())
            },
        )
        .await;
        assert_eq!(r.map_err(|e| e.kind), Err(ErrorKind::Transient));
        assert_eq!(made.get(), ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_will_not_pass_is_not_retried() {
        let made = Cell::new(0);
        let r: BlobResult<u32> = find_or_make(
            || async { Ok(None) },
            || async {
                made.set(made.get() + 1);
                Err(BlobError::local(
                    ErrorKind::Auth,
                    Resource::Account("a".into()),
                    "bad key",
                ))
            },
        )
        .await;
        assert_eq!(r.map_err(|e| e.kind), Err(ErrorKind::Auth));
        assert_eq!(made.get(), 1);
    }
}
