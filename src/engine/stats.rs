//! Counters for metrics: what the engine counts ([`Stats`]) and the labels
//! of failed fetches ([`FAILURE_REASONS`]). Kept apart from the engine's
//! logic: the host shell publishes these, `Vm` sums them over roots.

/// Counters for metrics; the host shell publishes them as proxy-wasm
/// counters named `aws_vault.<field>` (failures: `aws_vault.fetches_failed.<reason>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Requests whose secrets were all cached (no pause).
    pub cache_hits: u64,
    /// Requests that had to pause for a fetch.
    pub cache_misses: u64,
    /// Requests answered 503.
    pub requests_failed: u64,
    /// Secret uses of an expired value inside its resurrect window.
    pub stale_served: u64,
    pub fetches_started: u64,
    /// Fetches started for a secret that already had a value (rotation).
    pub refreshes: u64,
    /// Of those, the ones an upstream status asked for (`refresh_on_status`).
    pub refreshes_on_status: u64,
    pub fetches_succeeded: u64,
    /// Failed fetches by reason (see [`FAILURE_REASONS`]).
    pub fetches_failed: [u64; FAILURE_REASONS.len()],
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::ZERO
    }
}

impl Stats {
    /// All counters at zero (the `Default`, usable in a `const`).
    pub const ZERO: Stats = Stats {
        cache_hits: 0,
        cache_misses: 0,
        requests_failed: 0,
        stale_served: 0,
        fetches_started: 0,
        refreshes: 0,
        refreshes_on_status: 0,
        fetches_succeeded: 0,
        fetches_failed: [0; FAILURE_REASONS.len()],
    };
}

/// Labels of failed fetches, for metrics.
pub const FAILURE_REASONS: [&str; 10] = [
    "not_found",
    "access_denied",
    "decryption",
    "invalid_request",
    "throttling",
    "credentials",
    "server",
    "malformed",
    "callout",
    "other",
];

impl Stats {
    /// Every counter as `(metric name suffix, value)`.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("cache_hits".to_string(), self.cache_hits),
            ("cache_misses".to_string(), self.cache_misses),
            ("requests_failed".to_string(), self.requests_failed),
            ("stale_served".to_string(), self.stale_served),
            ("fetches_started".to_string(), self.fetches_started),
            ("refreshes".to_string(), self.refreshes),
            ("refreshes_on_status".to_string(), self.refreshes_on_status),
            ("fetches_succeeded".to_string(), self.fetches_succeeded),
        ];
        for (reason, n) in FAILURE_REASONS.iter().zip(self.fetches_failed) {
            out.push((format!("fetches_failed.{reason}"), n));
        }
        out
    }

    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &Stats) {
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.requests_failed += other.requests_failed;
        self.stale_served += other.stale_served;
        self.fetches_started += other.fetches_started;
        self.refreshes += other.refreshes;
        self.refreshes_on_status += other.refreshes_on_status;
        self.fetches_succeeded += other.fetches_succeeded;
        for (mine, theirs) in self.fetches_failed.iter_mut().zip(other.fetches_failed) {
            *mine += theirs;
        }
    }

    pub(super) fn failed(&mut self, reason: &str) {
        let i = FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(FAILURE_REASONS.len() - 1);
        if let Some(n) = self.fetches_failed.get_mut(i) {
            *n += 1;
        }
    }
}
