//! What is stored in host shared data, and the rules for using it.
//!
//! One [`Entry`] per secret (vault, SecretId, VersionStage, endpoint...), shared
//! by every worker. Entries carry their own timestamps and the full descriptor
//! of the secret they belong to (Kong compares shared-data keys by CRC32 only,
//! so a colliding key must not hand out another secret). A [`Lease`] per secret
//! lets exactly one VM fetch at a time across the whole proxy.
//!
//! - `mod.rs`: [`Entry`] (a secret's cached state), backoff, publishing and
//!   loading entries, shared-data keys
//! - `store.rs`: [`SharedStore`], the host's shared data as this crate sees it
//! - `lease.rs`: [`Lease`], one fetcher per proxy
//! - `credentials.rs`: [`SharedCredentials`], temporary AWS credentials
//!   fetched by one VM and used by all
//! - `codec.rs`: the byte layout of every record

mod codec;
mod credentials;
mod lease;
mod store;

pub use credentials::{
    SharedCredentials, CREDENTIALS_EXPIRY_MARGIN_MS, CREDENTIALS_REFRESH_AHEAD_MS,
};
pub use lease::Lease;
pub use store::{SharedStore, StoreError};

use codec::{Reader, Writer};

/// Version of the shared-data layout ([`codec`]); bump when a record
/// changes shape, together with [`KEY_PREFIX`], so that two versions of the
/// filter running side by side (a rolling upgrade) use separate keys.
pub const FORMAT: u8 = 2;
/// Key prefix in shared data. On Kong, `aws_vault/...` goes to a zone named
/// `aws_vault` if there is one, else to the default `*` zone.
pub const KEY_PREFIX: &str = "aws_vault/v2/";

/// First retry delay after a failure, and the cap it doubles up to.
pub const BACKOFF_BASE_MS: u64 = 1_000;
pub const BACKOFF_MAX_MS: u64 = 60_000;

/// The cached state of one secret. Timestamps are milliseconds since the epoch.
#[derive(Clone, PartialEq, Default)]
pub struct Entry {
    pub v: u8,
    /// Descriptor of the secret this entry belongs to.
    pub key: String,
    /// When the last fetch outcome (success or failure) was recorded.
    pub updated_at: u64,
    /// Last good value: the SecretString, or SecretBinary's base64 text.
    pub value: Option<String>,
    /// The value is SecretBinary (base64 text): no key can be taken from it.
    pub binary: bool,
    pub fetched_at: u64,
    /// End of freshness; `None` = never expires (ttl 0).
    pub expires_at: Option<u64>,
    /// End of the window in which an expired value is still served.
    pub resurrect_until: Option<u64>,
    /// Last failure (reason text never holds secret data).
    pub error: Option<String>,
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// No fetch before this time (backoff, or neg_ttl for a cached miss).
    pub retry_at: u64,
    /// When an upstream's refusal last made it fetched again
    /// (`refresh_on_status`): at most once per `refresh_min_interval`.
    pub forced_at: u64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("updated_at", &self.updated_at)
            .field("has_value", &self.value.is_some())
            .field("binary", &self.binary)
            .field("fetched_at", &self.fetched_at)
            .field("expires_at", &self.expires_at)
            .field("resurrect_until", &self.resurrect_until)
            .field("error", &self.error)
            .field("failures", &self.failures)
            .field("retry_at", &self.retry_at)
            .field("forced_at", &self.forced_at)
            .finish()
    }
}

impl Entry {
    /// The value, if it may be served at `now`: fresh, or expired but within
    /// the resurrect window.
    pub fn usable(&self, now: u64) -> Option<&str> {
        let value = self.value.as_deref()?;
        match (self.expires_at, self.resurrect_until) {
            (None, _) => Some(value),
            (Some(exp), _) if now < exp => Some(value),
            (Some(_), Some(until)) if now < until => Some(value),
            _ => None,
        }
    }

    /// True when the value is past its ttl (a refresh is due).
    pub fn expired(&self, now: u64) -> bool {
        self.value.is_none() || self.expires_at.is_some_and(|exp| now >= exp)
    }

    /// Until when the value is fresh (`now < fresh_until()` means not
    /// [`Entry::expired`]): 0 without one, `u64::MAX` for ttl 0.
    pub fn fresh_until(&self) -> u64 {
        match (&self.value, self.expires_at) {
            (None, _) => 0,
            (Some(_), exp) => exp.unwrap_or(u64::MAX),
        }
    }

    /// Record a successful fetch.
    pub fn succeed(&mut self, value: String, now: u64, ttl_s: f64, resurrect_ttl_s: f64) {
        let expires_at = (ttl_s > 0.0).then(|| now.saturating_add(secs_to_ms(ttl_s)));
        self.v = FORMAT;
        self.updated_at = now;
        self.value = Some(value);
        self.binary = false;
        self.fetched_at = now;
        self.expires_at = expires_at;
        self.resurrect_until = expires_at.map(|e| e.saturating_add(secs_to_ms(resurrect_ttl_s)));
        self.error = None;
        self.failures = 0;
        self.retry_at = 0;
    }

    /// Record a failed fetch. The last good value is kept (served until its
    /// resurrect window closes). `cacheable` misses are remembered for neg_ttl;
    /// every failure also backs off, `jitter` in [0, 1) spreading retries.
    pub fn fail(&mut self, reason: String, cacheable: bool, now: u64, neg_ttl_s: f64, jitter: f64) {
        self.v = FORMAT;
        self.updated_at = now;
        self.error = Some(reason);
        self.failures = self.failures.saturating_add(1);
        let mut wait = backoff_ms(self.failures, jitter);
        if cacheable {
            wait = wait.max(secs_to_ms(neg_ttl_s));
        }
        self.retry_at = now.saturating_add(wait);
    }

    pub fn encode(&self) -> Vec<u8> {
        Writer::new(b'E', self.v)
            .str(&self.key)
            .u64(self.updated_at)
            .opt_str(self.value.as_deref())
            .u32(u32::from(self.binary))
            .u64(self.fetched_at)
            .opt_u64(self.expires_at)
            .opt_u64(self.resurrect_until)
            .opt_str(self.error.as_deref())
            .u32(self.failures)
            .u64(self.retry_at)
            .u64(self.forced_at)
            .finish()
    }

    /// Decode an entry, accepting it only if it is of this format and for `key`.
    pub fn decode(bytes: &[u8], key: &str) -> Option<Entry> {
        let mut r = Reader::new(bytes, b'E')?;
        let entry = Entry::read(&mut r)?;
        r.end()?;
        (entry.key == key).then_some(entry)
    }

    /// The fields of an entry, in [`Entry::encode`]'s order.
    #[inline(never)] // see Config::fields
    fn read(r: &mut Reader) -> Option<Entry> {
        Some(Entry {
            v: FORMAT,
            key: r.str()?,
            updated_at: r.u64()?,
            value: r.opt_str()?,
            binary: r.u32()? == 1,
            fetched_at: r.u64()?,
            expires_at: r.opt_u64()?,
            resurrect_until: r.opt_u64()?,
            error: r.opt_str()?,
            failures: r.u32()?,
            retry_at: r.u64()?,
            forced_at: r.u64()?,
        })
    }
}

/// Delay before retry number `failures` (1-based): `BACKOFF_BASE_MS` doubling
/// to `BACKOFF_MAX_MS`, with "equal jitter" (half fixed, half random) so
/// retries from many proxies spread out but never come sooner than half the step.
pub fn backoff_ms(failures: u32, jitter: f64) -> u64 {
    let exp = failures.saturating_sub(1).min(16);
    let step = BACKOFF_BASE_MS
        .saturating_mul(1u64 << exp)
        .min(BACKOFF_MAX_MS);
    let half = step / 2;
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // half <= 30_000, so the product fits and the cast is exact enough.
    half + (half as f64 * jitter) as u64
}

pub fn secs_to_ms(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        // Saturating float-to-int cast; config bounds ttl to 1e8 s anyway.
        (s * 1000.0) as u64
    } else {
        0
    }
}

/// Write `entry` unless the store already holds a newer outcome for the same
/// secret. Returns the entry that is current afterwards.
pub fn publish(store: &mut dyn SharedStore, skey: &str, entry: &Entry) -> Entry {
    for _ in 0..3 {
        let (bytes, cas) = store.get(skey);
        if let Some(existing) = bytes.and_then(|b| Entry::decode(&b, &entry.key)) {
            if existing.updated_at > entry.updated_at {
                return existing;
            }
        }
        match store.set(skey, &entry.encode(), cas) {
            Ok(()) => return entry.clone(),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => break,
        }
    }
    entry.clone()
}

/// Read the shared entry for a secret, if there is a valid one.
pub fn load(store: &dyn SharedStore, skey: &str, descriptor: &str) -> Option<Entry> {
    let (bytes, _) = store.get(skey);
    bytes.and_then(|b| Entry::decode(&b, descriptor))
}

/// Shared-data key for a secret descriptor: a 64-bit FNV-1a digest keeps keys
/// short; the full descriptor inside the entry settles collisions.
pub fn shared_key(descriptor: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in descriptor.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{KEY_PREFIX}secret/{h:016x}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeStore, HostKind};

    #[test]
    fn usable_fresh_stale_and_dead() {
        let mut e = Entry {
            key: "k".into(),
            ..Entry::default()
        };
        assert_eq!(e.usable(0), None);
        e.succeed("v".into(), 1_000, 10.0, 5.0);
        assert_eq!(e.usable(1_000), Some("v"));
        assert!(!e.expired(10_999));
        assert!(e.expired(11_000));
        assert_eq!(e.usable(15_999), Some("v"), "within resurrect window");
        assert_eq!(e.usable(16_000), None);
        e.succeed("w".into(), 0, 0.0, 5.0);
        assert_eq!(e.usable(u64::MAX), Some("w"), "ttl 0 never expires");
        assert!(!e.expired(u64::MAX));
    }

    #[test]
    fn failure_keeps_value_and_backs_off() {
        let mut e = Entry::default();
        e.succeed("v".into(), 0, 10.0, 100.0);
        e.fail("boom".into(), false, 10_000, 0.0, 0.0);
        assert_eq!(e.usable(10_000), Some("v"));
        assert_eq!(e.retry_at, 10_500);
        e.fail("boom".into(), false, 11_000, 0.0, 0.999);
        assert_eq!(e.failures, 2);
        assert!((12_000..13_000).contains(&e.retry_at));
        e.fail("gone".into(), true, 20_000, 30.0, 0.0);
        assert_eq!(e.retry_at, 50_000, "neg_ttl longer than backoff");
        e.succeed("x".into(), 60_000, 10.0, 1.0);
        assert_eq!(e.failures, 0);
        assert_eq!(e.error, None);
    }

    #[test]
    fn backoff_grows_to_cap_within_jitter_bounds() {
        for n in 1..40 {
            let step = (BACKOFF_BASE_MS << (n - 1).min(16)).min(BACKOFF_MAX_MS);
            assert_eq!(backoff_ms(n, 0.0), step / 2);
            assert!(backoff_ms(n, 0.9999) <= step);
            assert!(backoff_ms(n, f64::NAN) >= step / 2);
        }
        assert_eq!(backoff_ms(100, 1.0), BACKOFF_MAX_MS);
    }

    #[test]
    fn entry_roundtrip_and_key_check() {
        let mut e = Entry {
            key: "desc".into(),
            ..Entry::default()
        };
        e.succeed("secret".into(), 5, 1.0, 1.0);
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes, "desc"), Some(e.clone()));
        assert_eq!(Entry::decode(&bytes, "other"), None, "collision detected");
        assert_eq!(Entry::decode(b"garbage", "desc"), None);
        assert!(
            !format!("{e:?}").contains("secret\""),
            "Debug hides the value"
        );
    }

    #[test]
    fn publish_keeps_newer() {
        for kind in [HostKind::Envoy, HostKind::Kong] {
            let mut store = FakeStore::new(kind);
            let mut newer = Entry {
                key: "d".into(),
                ..Entry::default()
            };
            newer.succeed("new".into(), 200, 0.0, 0.0);
            publish(&mut store, "k", &newer);
            let mut older = newer.clone();
            older.succeed("old".into(), 100, 0.0, 0.0);
            let current = publish(&mut store, "k", &older);
            assert_eq!(current.value.as_deref(), Some("new"));
            assert_eq!(
                load(&store, "k", "d").unwrap().value.as_deref(),
                Some("new")
            );
        }
    }

    #[test]
    fn shared_keys_are_stable_and_distinct() {
        assert_eq!(shared_key("a"), shared_key("a"));
        assert_ne!(shared_key("a"), shared_key("b"));
        assert!(shared_key("a").starts_with(KEY_PREFIX));
    }
}
