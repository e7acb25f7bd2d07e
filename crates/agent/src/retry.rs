//! The agent's blocking retry, with the one backoff ([`podnet_conventions::Backoff`]): for what may not be ready yet (a datastore still starting, a
//! Node without a pod CIDR yet), 200 ms doubling up to a ceiling, saying why it waits.

use std::time::Duration;

/// Calls `f` until it succeeds or fails in a way `transient` does not accept; between
/// tries, tells `waiting` what failed and how long it waits (200 ms, doubling up to
/// `max`).
pub fn with_backoff<T, E>(
    mut f: impl FnMut() -> Result<T, E>,
    transient: impl Fn(&E) -> bool,
    mut waiting: impl FnMut(&E, Duration),
    max: Duration,
) -> Result<T, E> {
    let mut backoff = podnet_conventions::Backoff::new(Duration::from_millis(200), max);
    loop {
        match f() {
            Err(e) if transient(&e) => {
                let wait = backoff.next_wait();
                waiting(&e, wait);
                std::thread::sleep(wait);
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_transient_failures_and_returns_the_rest() {
        let mut tries = 0;
        let mut waits = vec![];
        let r: Result<u32, &str> = with_backoff(
            || {
                tries += 1;
                if tries < 3 {
                    Err("not yet")
                } else {
                    Ok(7)
                }
            },
            |e| *e == "not yet",
            |_, d| waits.push(d),
            Duration::from_millis(300),
        );
        assert_eq!(r, Ok(7));
        assert_eq!(
            waits,
            [Duration::from_millis(200), Duration::from_millis(300)]
        );
        let r: Result<u32, &str> = with_backoff(
            || Err("refused"),
            |e| *e == "not yet",
            |_, _| {},
            Duration::from_secs(1),
        );
        assert_eq!(r, Err("refused"));
    }
}
