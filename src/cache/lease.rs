//! Who may fetch a secret (or refresh a credentials source) right now: a
//! [`Lease`] record in shared data, taken with compare-and-swap so that
//! exactly one VM of the whole proxy holds it at a time, under both hosts'
//! `cas` semantics.

use super::codec::{Reader, Writer};
use super::{SharedStore, FORMAT};

/// Who may fetch a secret right now, across all VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Random id of the holding VM; 0 = free.
    pub holder: u64,
    pub until: u64,
}

impl Lease {
    /// Try to take the lease at `key` for `holder` until `until`. Correct on
    /// both hosts: a missing key is first created free (Envoy's `cas None` is
    /// an unconditional write, Kong's is only-if-absent; either way some free
    /// record ends up there), then taken with the cas it was read with, so
    /// exactly one concurrent taker wins.
    pub fn acquire(
        store: &mut dyn SharedStore,
        key: &str,
        holder: u64,
        now: u64,
        until: u64,
    ) -> bool {
        for _ in 0..2 {
            let (bytes, cas) = store.get(key);
            let current = bytes.and_then(|b| Lease::decode(&b));
            let Some(cas) = cas else {
                let free = Lease {
                    holder: 0,
                    until: 0,
                };
                let _ = store.set(key, &free.encode(), None);
                continue;
            };
            if let Some(l) = &current {
                if l.holder != 0 && l.holder != holder && l.until > now {
                    return false;
                }
            }
            let mine = Lease { holder, until };
            return store.set(key, &mine.encode(), Some(cas)).is_ok();
        }
        false
    }

    /// Give the lease back if `holder` still has it.
    pub fn release(store: &mut dyn SharedStore, key: &str, holder: u64) {
        let (bytes, cas) = store.get(key);
        let held = bytes
            .and_then(|b| Lease::decode(&b))
            .is_some_and(|l| l.holder == holder);
        if held {
            let free = Lease {
                holder: 0,
                until: 0,
            };
            let _ = store.set(key, &free.encode(), cas);
        }
    }

    fn encode(&self) -> Vec<u8> {
        Writer::new(b'L', FORMAT)
            .u64(self.holder)
            .u64(self.until)
            .finish()
    }

    fn decode(bytes: &[u8]) -> Option<Lease> {
        let mut r = Reader::new(bytes, b'L')?;
        let lease = Lease {
            holder: r.u64()?,
            until: r.u64()?,
        };
        r.end()?;
        Some(lease)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeStore, HostKind};

    #[test]
    fn lease_is_exclusive_on_both_hosts() {
        for kind in [HostKind::Envoy, HostKind::Kong] {
            let mut store = FakeStore::new(kind);
            assert!(Lease::acquire(&mut store, "l", 1, 0, 100));
            assert!(!Lease::acquire(&mut store, "l", 2, 50, 150), "{kind:?}");
            assert!(Lease::acquire(&mut store, "l", 1, 50, 150), "holder renews");
            assert!(
                Lease::acquire(&mut store, "l", 2, 151, 300),
                "expired lease taken over"
            );
            Lease::release(&mut store, "l", 1);
            assert!(
                !Lease::acquire(&mut store, "l", 3, 160, 300),
                "release by non-holder ignored"
            );
            Lease::release(&mut store, "l", 2);
            assert!(Lease::acquire(&mut store, "l", 3, 160, 300));
        }
    }
}
