//! How often refusals of callers that did not authenticate are written out. Such a caller
//! costs nothing to repeat itself (one keep-alive connection sent 5,000 bad signatures in
//! 0.2 s), so writing each refusal's log and audit lines would let anyone who can reach a
//! port fill the disk. Every refusal is still counted (by the caller of [`Refusals::admit`],
//! in the metrics); the first [`BURST`] are written in full, then [`PER_SECOND`] a second,
//! and the rest go into one summary a second that says how many there were and from whom.
//! Refusals of authenticated callers (a known token, certificate, Unix user or access key
//! short of a role) do not come here: they are always written.

use std::{
    num::NonZeroU32,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota};

/// Refusals written in full at once, before the rate applies.
pub const BURST: u32 = 10;
/// Refusals written in full a second past the burst.
pub const PER_SECOND: u32 = 1;
/// How long refusals are summed before their summary is written.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);
/// Sources a summary names one by one; the rest are summed as "others", so a flood from
/// many addresses or tokens cannot grow the summary.
const MAX_SOURCES: usize = 8;

/// What [`Refusals::admit`] decided for one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write its log and audit lines.
    Write,
    /// Only summed into the pending summary; `opened` when it is the first of that summary,
    /// whose writer must then be scheduled (once, [`SUMMARY_INTERVAL`] later).
    Summed { opened: bool },
}

/// Refusals not written one by one since the pending summary opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// When the first of them came.
    pub since: Option<time::OffsetDateTime>,
    pub refusals: u64,
    /// The sources with the most refusals first, at most [`MAX_SOURCES`].
    pub from: Vec<(String, u64)>,
    /// Refusals from sources beyond those named.
    pub others: u64,
}

impl Summary {
    /// The summary's log message: "N more refusals … in the last second: n from …".
    pub fn message(&self) -> String {
        let mut from: Vec<String> = self
            .from
            .iter()
            .map(|(source, n)| format!("{n} from {source}"))
            .collect();
        if self.others > 0 {
            from.push(format!("{} from other callers", self.others));
        }
        format!(
            "{} more refusals of unauthenticated callers in the last second, not logged or \
             audited one by one: {}",
            self.refusals,
            from.join(", ")
        )
    }
}

/// The shared rate of refusals written out, and the summary of those that were not.
pub struct Refusals {
    limiter: DefaultDirectRateLimiter,
    pending: Mutex<Option<Summary>>,
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals::new()
    }
}

impl Refusals {
    pub fn new() -> Refusals {
        let quota = Quota::per_second(NonZeroU32::new(PER_SECOND).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(BURST).unwrap_or(NonZeroU32::MIN));
        Refusals {
            limiter: DefaultDirectRateLimiter::direct(quota),
            pending: Mutex::new(None),
        }
    }

    /// One refusal from `source` (who and where from, without a port: a flood from one
    /// host sums into one entry): written in full when within the rate, else summed.
    pub fn admit(&self, source: &str) -> Verdict {
        if self.limiter.check().is_ok() {
            return Verdict::Write;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let opened = pending.is_none();
        let summary = pending.get_or_insert_with(|| Summary {
            since: Some(time::OffsetDateTime::now_utc()),
            ..Summary::default()
        });
        summary.refusals += 1;
        if let Some((_, n)) = summary.from.iter_mut().find(|(s, _)| s == source) {
            *n += 1;
        } else if summary.from.len() < MAX_SOURCES {
            summary.from.push((source.to_owned(), 1));
        } else {
            summary.others += 1;
        }
        Verdict::Summed { opened }
    }

    /// Takes the pending summary (the next refusal not written opens a new one).
    pub fn take_summary(&self) -> Option<Summary> {
        let mut summary = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        summary.from.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_burst_is_written_then_the_rest_is_summed_by_source() {
        let refusals = Refusals::new();
        let written = (0..100)
            .filter(|_| refusals.admit("aws:KEYD at aws-api:127.0.0.1") == Verdict::Write)
            .count();
        // The burst, and at most one more if a second went by meanwhile.
        assert!((BURST as usize..=BURST as usize + 1).contains(&written));
        for i in 0..20 {
            let verdict = refusals.admit(&format!("tcp:127.0.0.{i}"));
            assert_eq!(verdict, Verdict::Summed { opened: false });
        }
        let summary = refusals.take_summary().unwrap();
        assert_eq!(summary.refusals, 100 - written as u64 + 20);
        assert_eq!(summary.from.len(), MAX_SOURCES);
        assert_eq!(summary.from[0].0, "aws:KEYD at aws-api:127.0.0.1");
        assert_eq!(summary.others, 20 - (MAX_SOURCES as u64 - 1));
        let message = summary.message();
        assert!(
            message.starts_with(&format!("{} more refusals", summary.refusals)),
            "{message}"
        );
        assert!(message.ends_with("13 from other callers"), "{message}");
        // Taken: the next refusal opens a new summary.
        assert_eq!(refusals.take_summary(), None);
        assert_eq!(refusals.admit("x"), Verdict::Summed { opened: true });
    }
}
