//! AWS credentials as every VM shares them: one VM per proxy asks a
//! credentials source's provider (under a lease) and publishes temporary
//! credentials to shared data; the others use them until a refresh is due.
//! [`CredSlot`] is one source (the base chain or an assumed role).

use super::{Action, Engine, FetchKind, Owner};
use crate::aws::credentials::{Outgoing, Poll, Slot, TimedCredentials};
use crate::aws::sigv4::Credentials;
use crate::cache::{self, Lease, SharedCredentials, SharedStore};

/// How long one VM may refresh a credentials source before others may.
const CREDENTIALS_LEASE_MS: u64 = 30_000;

/// One credentials source (the base chain, or an assumed role) as shared by
/// every VM: temporary credentials are fetched by one VM (a lease) and
/// published to shared data.
pub(super) struct CredSlot {
    /// Describes the source; stored inside entries to detect key collisions.
    key: String,
    skey: String,
    lease_key: String,
    /// The latest shared credentials seen.
    shared: Option<SharedCredentials>,
    /// The provider hands out static credentials (environment): no sharing.
    pub(super) is_static: bool,
}

impl CredSlot {
    pub(super) fn new(key: String) -> CredSlot {
        let skey =
            cache::shared_key(&format!("credentials|{key}")).replace("/secret/", "/credentials/");
        CredSlot {
            lease_key: format!("{skey}/lease"),
            skey,
            key,
            shared: None,
            is_static: false,
        }
    }

    fn credentials(&self) -> Option<Credentials> {
        self.shared.as_ref().map(|c| Credentials {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: c.session_token.clone(),
        })
    }
}

impl Engine {
    /// Poll every credentials slot, dispatching what providers ask for:
    /// refresh ahead of expiry happens here, off the request path.
    pub(super) fn drive_credentials(
        &mut self,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) {
        let slots: Vec<Slot> = self.credentials.slots().collect();
        for slot in slots {
            // Failures are logged when the provider reports them; a fetch
            // that needs these credentials records its own.
            let _ = self.poll_credentials(slot, now, store, owner, false, out);
        }
    }

    /// AWS refused `used`: make sure no VM hands them out again.
    pub(super) fn invalidate_shared(
        &mut self,
        slot: Slot,
        used: &Credentials,
        store: &mut dyn SharedStore,
    ) {
        let Some(cs) = self.cred_slots.get_mut(&slot) else {
            return;
        };
        let (bytes, cas) = store.get(&cs.skey);
        if let Some(mut c) = bytes.and_then(|b| SharedCredentials::decode(&b, &cs.key)) {
            if c.access_key_id == used.access_key_id {
                c.expires_at = 0;
                let _ = store.set(&cs.skey, &c.encode(), cas);
            }
        }
        cs.shared = None;
    }

    /// Temporary credentials another VM published, if no refresh is due;
    /// `Err(valid)` when a refresh is due (`valid`: still usable meanwhile).
    #[inline(never)] // see Config::fields
    fn shared_credentials(
        &mut self,
        slot: Slot,
        now: u64,
        store: &dyn SharedStore,
    ) -> Result<Credentials, Option<Credentials>> {
        let Some(cs) = self.cred_slots.get_mut(&slot) else {
            return Err(None);
        };
        if !cs.shared.as_ref().is_some_and(|c| c.fresh(now)) {
            let (bytes, _) = store.get(&cs.skey);
            if let Some(c) = bytes.and_then(|b| SharedCredentials::decode(&b, &cs.key)) {
                cs.shared = Some(c);
            }
        }
        match &cs.shared {
            Some(c) if c.fresh(now) => cs.credentials().ok_or(None),
            Some(c) if c.valid(now) => Err(cs.credentials()),
            _ => Err(None),
        }
    }

    /// Credentials for `slot`, if ready; dispatches the provider's callouts.
    /// Temporary credentials come from shared data while fresh; when a
    /// refresh is due, the VM holding the slot's lease asks its provider and
    /// publishes the result, the others keep using the valid ones meanwhile.
    /// `force`: ask the provider even if another VM holds the slot's lease
    /// (a Kong request that must own the callout it waits on).
    pub(super) fn poll_credentials(
        &mut self,
        slot: Slot,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        force: bool,
        out: &mut Vec<Action>,
    ) -> Result<Option<Credentials>, String> {
        let is_static = self.cred_slots.get(&slot).is_none_or(|c| c.is_static);
        if !is_static {
            let meanwhile = match self.shared_credentials(slot, now, store) {
                Ok(c) => return Ok(Some(c)),
                Err(meanwhile) => meanwhile,
            };
            let lease_key = self.cred_slots.get(&slot).map(|c| c.lease_key.clone());
            // Long enough for a provider's few callouts (IMDS: three).
            let lease_until = now + CREDENTIALS_LEASE_MS;
            let held = lease_key
                .as_deref()
                .is_some_and(|k| Lease::acquire(store, k, self.holder, now, lease_until));
            if !held && !force {
                return Ok(meanwhile); // another VM is refreshing them
            }
        }
        let mut dispatched = false;
        // A provider asks for one callout per poll (IMDS: token, then role...).
        for _ in 0..8 {
            match self.credentials.poll(slot, now) {
                Poll::Ready(c) => {
                    self.share_credentials(slot, &c, now, dispatched, store);
                    return Ok(Some(c.credentials));
                }
                Poll::Pending => return Ok(None),
                Poll::NotConfigured(why) | Poll::Failed(why) => {
                    self.release_credentials_lease(slot, store);
                    return Err(why);
                }
                Poll::Dispatch {
                    id,
                    upstream,
                    request,
                    timeout_ms,
                } => {
                    let sent = Outgoing {
                        upstream: upstream.clone(),
                        request: request.clone(),
                        timeout_ms,
                    };
                    let kind = FetchKind::Credentials { id, slot, sent };
                    let fetch = self.track(kind, owner, now, timeout_ms);
                    out.push(Action::Dispatch {
                        call: self.call(fetch),
                        upstream,
                        request,
                        timeout_ms,
                    });
                    dispatched = true;
                }
            }
        }
        Ok(None)
    }

    /// Publish what the provider handed out (temporary credentials only),
    /// and give the lease back unless a refresh is still in flight.
    #[inline(never)] // see Config::fields
    fn share_credentials(
        &mut self,
        slot: Slot,
        c: &TimedCredentials,
        now: u64,
        refreshing: bool,
        store: &mut dyn SharedStore,
    ) {
        let Some(cs) = self.cred_slots.get_mut(&slot) else {
            return;
        };
        let Some(expires_at) = c.expires_at else {
            cs.is_static = true;
            Lease::release(store, &cs.lease_key, self.holder);
            return;
        };
        let known = cs.shared.as_ref().is_some_and(|s| {
            s.access_key_id == c.credentials.access_key_id && s.expires_at == expires_at
        });
        if !known {
            let shared = SharedCredentials {
                v: cache::FORMAT,
                key: cs.key.clone(),
                access_key_id: c.credentials.access_key_id.clone(),
                secret_access_key: c.credentials.secret_access_key.clone(),
                session_token: c.credentials.session_token.clone(),
                fetched_at: now,
                expires_at,
            };
            shared.publish(store, &cs.skey);
            cs.shared = Some(shared);
        }
        if !refreshing {
            Lease::release(store, &cs.lease_key, self.holder);
        }
    }

    pub(super) fn release_credentials_lease(&mut self, slot: Slot, store: &mut dyn SharedStore) {
        if let Some(cs) = self.cred_slots.get(&slot) {
            Lease::release(store, &cs.lease_key, self.holder);
        }
    }
}
