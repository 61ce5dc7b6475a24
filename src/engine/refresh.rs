//! Refreshing before or besides expiry: an upstream refusing a value it was
//! given (`refresh_on_status`) asks for a new fetch, bounded per proxy by
//! `refresh_min_interval`; and the randomness that spreads ttl refreshes and
//! retries across proxies started together.

use super::{Action, Engine, Owner};
use crate::cache::SharedStore;

impl Engine {
    /// The upstream answered `status` to a request that carried secrets
    /// `used` (from a [`Rendered`](super::Rendered) of this engine). Listed in
    /// `refresh_on_status`: each is fetched again from the next tick, at most
    /// once per `refresh_min_interval` per proxy whatever clients send.
    pub fn on_upstream_status(
        &mut self,
        used: &[usize],
        status: u16,
        now: u64,
        store: &dyn SharedStore,
    ) {
        if !self.config.refresh_on_status.contains(&status) {
            return;
        }
        for &i in used {
            if self.secrets.get(i).is_none_or(|s| s.refresh_requested) {
                continue;
            }
            self.sync(i, store); // another worker may have just refreshed it
            if self.refresh_allowed(i, now) {
                if let Some(s) = self.secrets.get_mut(i) {
                    s.refresh_requested = true;
                }
            }
        }
    }

    /// May secret `i` be fetched again because an upstream refused it? Not
    /// while backing off, and not within `refresh_min_interval` of the last
    /// such refresh anywhere in the proxy (shared data says when).
    pub(super) fn refresh_allowed(&self, i: usize, now: u64) -> bool {
        let Some(e) = self.secrets.get(i).and_then(|s| s.entry.as_ref()) else {
            return false;
        };
        now >= e.retry_at
            && now
                >= e.forced_at
                    .saturating_add(self.config.refresh_min_interval_ms)
    }

    /// Start the refreshes upstream statuses asked for (from any tick: on
    /// Kong a response callback may not send callouts).
    pub(super) fn refresh_requested(
        &mut self,
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        for i in 0..self.secrets.len() {
            let Some(s) = self.secrets.get_mut(i) else {
                continue;
            };
            if !std::mem::take(&mut s.refresh_requested) || s.fetch.is_some() {
                continue;
            }
            self.sync(i, store);
            if self.refresh_allowed(i, now)
                && self.start_fetch(i, now, store, Owner::Root, true, out)
            {
                self.stats.refreshes_on_status += 1;
            }
        }
    }

    /// xorshift64*, in [0, 1): jitter needs spread, not cryptographic strength.
    pub(super) fn random_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}
