//! Temporary AWS credentials in shared data: fetched by one VM (under a
//! [`super::Lease`]), published as a [`SharedCredentials`] record, used by
//! every VM until a refresh is due.

use super::codec::{Reader, Writer};
use super::{SharedStore, StoreError, FORMAT};

/// Temporary AWS credentials shared by every VM, so that one VM per proxy
/// talks to IMDS, the container endpoint or STS. Static credentials
/// (environment variables) are never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedCredentials {
    pub v: u8,
    /// Descriptor of the credentials source (base chain or a role).
    pub key: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub fetched_at: u64,
    /// 0 = invalidated (AWS refused them).
    pub expires_at: u64,
}

impl std::fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCredentials")
            .field("key", &self.key)
            .field("access_key_id", &self.access_key_id)
            .field("fetched_at", &self.fetched_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Credentials are not handed out closer than this to their expiry.
pub const CREDENTIALS_EXPIRY_MARGIN_MS: u64 = 10_000;
/// Refresh ahead of expiry: this long before, or halfway through the
/// lifetime when that is shorter (the providers' own rule).
pub const CREDENTIALS_REFRESH_AHEAD_MS: u64 = 5 * 60 * 1000;

impl SharedCredentials {
    /// No refresh due yet.
    pub fn fresh(&self, now: u64) -> bool {
        let life = self.expires_at.saturating_sub(self.fetched_at);
        let ahead = CREDENTIALS_REFRESH_AHEAD_MS.min(life / 2);
        now.saturating_add(ahead) < self.expires_at
    }

    /// Still usable (a refresh may be due).
    pub fn valid(&self, now: u64) -> bool {
        now.saturating_add(CREDENTIALS_EXPIRY_MARGIN_MS) < self.expires_at
    }

    pub fn decode(bytes: &[u8], key: &str) -> Option<SharedCredentials> {
        let mut r = Reader::new(bytes, b'C')?;
        let c = SharedCredentials {
            v: FORMAT,
            key: r.str()?,
            access_key_id: r.str()?,
            secret_access_key: r.str()?,
            session_token: r.opt_str()?,
            fetched_at: r.u64()?,
            expires_at: r.u64()?,
        };
        r.end()?;
        (c.key == key).then_some(c)
    }

    pub fn encode(&self) -> Vec<u8> {
        Writer::new(b'C', self.v)
            .str(&self.key)
            .str(&self.access_key_id)
            .str(&self.secret_access_key)
            .opt_str(self.session_token.as_deref())
            .u64(self.fetched_at)
            .u64(self.expires_at)
            .finish()
    }

    /// Store these unless the store holds credentials fetched later.
    pub fn publish(&self, store: &mut dyn SharedStore, skey: &str) {
        for _ in 0..3 {
            let (bytes, cas) = store.get(skey);
            let newer = bytes
                .and_then(|b| SharedCredentials::decode(&b, &self.key))
                .is_some_and(|c| c.fetched_at > self.fetched_at);
            if newer {
                return;
            }
            match store.set(skey, &self.encode(), cas) {
                Err(StoreError::CasMismatch) => continue,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeStore, HostKind};

    #[test]
    fn shared_credentials_freshness_and_publish() {
        let c = SharedCredentials {
            v: FORMAT,
            key: "k".into(),
            access_key_id: "A".into(),
            secret_access_key: "S3CRET".into(),
            session_token: Some("T0KEN".into()),
            fetched_at: 0,
            expires_at: 3_600_000,
        };
        assert!(c.fresh(3_300_000 - 1));
        assert!(!c.fresh(3_300_000), "5 min ahead");
        assert!(c.valid(3_300_000));
        assert!(!c.valid(3_590_000));
        let short = SharedCredentials {
            expires_at: 60_000,
            ..c.clone()
        };
        assert!(
            short.fresh(29_999) && !short.fresh(30_000),
            "half the lifetime"
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("S3CRET") && !dbg.contains("T0KEN"), "{dbg}");
        for kind in [HostKind::Envoy, HostKind::Kong] {
            let mut store = FakeStore::new(kind);
            let later = SharedCredentials {
                fetched_at: 10,
                access_key_id: "B".into(),
                ..c.clone()
            };
            later.publish(&mut store, "s");
            c.publish(&mut store, "s");
            let (b, _) = store.get("s");
            let got = SharedCredentials::decode(&b.unwrap(), "k").unwrap();
            assert_eq!(
                got.access_key_id, "B",
                "older never replaces newer ({kind:?})"
            );
            assert!(SharedCredentials::decode(&c.encode(), "other").is_none());
        }
    }
}
