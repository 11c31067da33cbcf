//! Waiting for a condition: every wait of the test plumbing (a server
//! answering, a cluster agreeing, a process exiting, [`wait_until`]) polls
//! on one schedule, through backon's blocking retry, with a deadline on
//! the wall clock.
//!
//! backon's own `with_total_delay` adds up the pauses only, not the time
//! the attempts take; a check that costs a connection would stretch the
//! wait well past its timeout. So the deadline is checked before each
//! pause instead.
//!
//! [`wait_until`]: crate::process::wait_until

use std::time::{Duration, Instant};

use backon::{BlockingRetryable, ExponentialBuilder};

/// The first pause is 5 ms and doubles up to 50 ms: a condition that
/// comes true soon is seen soon, and a check that opens a connection (a
/// `PING`, an HTTP probe) runs at most about 20 times a second.
fn schedule() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(5))
        .with_factor(2.0)
        .with_max_delay(Duration::from_millis(50))
        .without_max_times()
}

/// Runs `attempt` until it returns `Ok`; after `timeout`, the last error.
/// The first attempt runs at once, and one always runs.
pub fn retry<T, E>(timeout: Duration, attempt: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    retry_if(timeout, attempt, |_| true)
}

/// [`retry`], but an error for which `retryable` is false ends the wait at
/// once (a server that exited will not start answering).
pub fn retry_if<T, E>(
    timeout: Duration,
    attempt: impl FnMut() -> Result<T, E>,
    mut retryable: impl FnMut(&E) -> bool,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    attempt
        .retry(schedule())
        .sleep(std::thread::sleep)
        .when(move |e| retryable(e) && Instant::now() < deadline)
        .call()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_until_ok_or_the_deadline() {
        let mut n = 0;
        assert_eq!(
            retry(Duration::from_secs(5), || {
                n += 1;
                if n < 4 {
                    Err(n)
                } else {
                    Ok(n)
                }
            }),
            Ok(4)
        );

        let started = Instant::now();
        let mut tries = 0;
        let last = retry(Duration::from_millis(200), || -> Result<(), u32> {
            tries += 1;
            Err(tries)
        });
        let took = started.elapsed();
        assert_eq!(last, Err(tries));
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // 5, 10, 20, 40, then 50 ms pauses: a handful of tries, not hundreds.
        assert!((3..=12).contains(&tries), "{tries} tries");

        assert_eq!(retry(Duration::ZERO, || Err::<(), _>("once")), Err("once"));
    }

    #[test]
    fn stops_at_an_error_that_is_final() {
        let mut n = 0;
        let started = Instant::now();
        let r = retry_if(
            Duration::from_secs(5),
            || -> Result<(), &str> {
                n += 1;
                Err(if n == 2 { "exited" } else { "not yet" })
            },
            |e| *e != "exited",
        );
        assert_eq!((r, n), (Err("exited"), 2));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
