//! The one backoff: how long to wait before trying again what may not be ready yet (a
//! datastore still starting, a watch that broke), doubling from a minimum up to a
//! ceiling, and back to the minimum after a success. Used by the agent's blocking
//! retries and by the datastores' async watches alike: it only computes waits.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits from `min`, doubling, never over `max`.
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next try; the one after it is twice as long (up to the
    /// ceiling).
    pub fn next_wait(&mut self) -> Duration {
        let w = self.next.min(self.max);
        self.next = (w * 2).min(self.max);
        w
    }

    /// After a success: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_ceiling_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(200), ms(1000));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        b.reset();
        assert_eq!(b.next_wait(), ms(200));
        // A minimum above the ceiling waits the ceiling.
        assert_eq!(Backoff::new(ms(300), ms(100)).next_wait(), ms(100));
    }
}
