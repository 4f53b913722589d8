//! Per-caller quota on calls that reach the backend uncached (VerifyKeyPolicy of a stored
//! key, BatchGetCodeSnippet): one caller cannot spend the account's KMS and Inspector
//! request quotas for everyone else. A token bucket per caller (governor's GCRA).

use std::{num::NonZeroU32, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};

/// How many callers' buckets are kept before full ones are forgotten.
const MAX_TRACKED_CALLERS: usize = 4096;

pub struct CallerQuota {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl CallerQuota {
    /// `per_minute` calls a minute for each caller, `burst` at once.
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> CallerQuota {
        CallerQuota {
            limiter: DefaultKeyedRateLimiter::hashmap(
                Quota::per_minute(per_minute).allow_burst(burst),
            ),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one call from `caller`'s bucket; when it is empty, how long until there is one.
    pub fn take(&self, caller: &str) -> Result<(), Duration> {
        if self.limiter.len() > MAX_TRACKED_CALLERS {
            // Buckets that are full again hold nothing worth keeping.
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&caller.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_caller_has_its_own_bucket() {
        let quota = CallerQuota::new(NonZeroU32::new(60).unwrap(), NonZeroU32::new(2).unwrap());
        assert!(quota.take("a").is_ok());
        assert!(quota.take("a").is_ok());
        let wait = quota.take("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(quota.take("b").is_ok(), "another caller is not held up");
    }
}
