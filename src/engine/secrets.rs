//! One secret's lifecycle: is it usable now ([`Engine::evaluate`]), adopting
//! what another VM published, when it is due, fetching it under its
//! proxy-wide lease, and recording the outcome in shared data. The tick,
//! requests and waiters all go through these.

use std::time::{Duration, SystemTime};

use super::credentials::CredSlot;
use super::{Action, CalloutResult, Engine, FetchKind, Level, Owner, Waking, CALLOUT_GRACE_MS};
use crate::aws::credentials::assume_role::AssumeRoleSettings;
use crate::aws::credentials::Slot;
use crate::aws::secrets_manager::{self, ErrorKind, SecretValue};
use crate::aws::sigv4::{self, Credentials};
use crate::cache::{self, Entry, Lease, SharedStore};
use crate::config::SecretTarget;

pub(super) struct Secret {
    pub(super) target: SecretTarget,
    /// Where its signing credentials come from (base chain or an assumed role).
    pub(super) slot: Slot,
    /// AWS refused the last credentials: the next fetch is the one retry.
    retrying: bool,
    pub(super) descriptor: String,
    pub(super) skey: String,
    lease_key: String,
    pub(super) entry: Option<Entry>,
    pub(super) fetch: Option<u64>,
    /// Named only by requests' trusted incoming headers: bounded, evicted
    /// when idle, never leased nor published when failing (see `incoming`).
    pub(super) incoming: bool,
    /// Last time a request needed it.
    pub(super) last_used: u64,
    /// Values of keys named by incoming references, derived on demand and
    /// dropped when the value changes (at most `incoming::MAX_KEYS`).
    pub(super) keys: Vec<(String, Result<String, String>)>,
    /// An upstream answered a `refresh_on_status` status to a request that
    /// carried it: the next tick fetches it again (see `refresh`).
    pub(super) refresh_requested: bool,
    /// Such a fetch is in flight: its outcome records `forced_at`.
    forcing: bool,
    /// How long before its expiry this VM refreshes it: a random point in
    /// the last tenth of its ttl, so proxies started together spread out.
    early_ms: u64,
}

/// Can a request have secret(s) now?
#[derive(Clone)]
pub(super) enum Status {
    Usable,
    Wait,
    Failed(String),
}

impl Engine {
    /// A secret to track for `target`, with its credentials slot (an
    /// assumed role gets its own).
    pub(super) fn new_secret(
        &mut self,
        target: SecretTarget,
        incoming: bool,
        now: u64,
    ) -> Result<Secret, String> {
        let descriptor = target.descriptor();
        let skey = cache::shared_key(&descriptor);
        let slot = match &target.assume_role_arn {
            None => Slot::Base,
            Some(arn) => self.role_slot(arn, &target)?,
        };
        Ok(Secret {
            slot,
            retrying: false,
            lease_key: format!("{skey}/lease"),
            skey,
            descriptor,
            target,
            entry: None,
            fetch: None,
            incoming,
            last_used: now,
            keys: Vec::new(),
            refresh_requested: false,
            forcing: false,
            early_ms: 0,
        })
    }

    /// The credentials slot of the role `arn` that `t` assumes, added if new.
    #[inline(never)] // see Config::fields
    fn role_slot(&mut self, arn: &str, t: &SecretTarget) -> Result<Slot, String> {
        let mut role = AssumeRoleSettings::new(arn, &t.region);
        role.session_name = t.role_session_name.clone();
        role.sts_endpoint = t.sts_endpoint.clone();
        role.upstream = t.sts_upstream.clone();
        role.timeout_ms = t.timeout_ms;
        let key = format!(
            "role|{}|{}|{}|{}",
            role.role_arn,
            role.session_name,
            role.region,
            role.sts_endpoint
                .as_ref()
                .map_or("", |e| e.authority.as_str())
        );
        let slot = self
            .credentials
            .role(role)
            .map_err(|e| format!("assume_role_arn: {e}"))?;
        self.cred_slots
            .entry(slot)
            .or_insert_with(|| CredSlot::new(key));
        Ok(slot)
    }

    /// `aws/prod/db (AWSCURRENT)`: names a secret in logs, never its value.
    pub(super) fn describe(&self, i: usize) -> String {
        match self.secrets.get(i) {
            Some(s) => format!(
                "secret '{}' (vault {}, {}, {})",
                s.target.secret_id,
                s.target.vault,
                s.target.region,
                s.target.stage.as_str()
            ),
            None => "unknown secret".into(),
        }
    }

    /// Why secret `i` has no value, for a request's 503.
    pub(super) fn failure(&self, i: usize) -> String {
        let reason = self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .and_then(|e| e.error.clone())
            .unwrap_or_else(|| "fetch failed".into());
        format!("{}: {reason}", self.describe(i))
    }

    /// Is every configured secret, and every one in `extra`, usable now?
    /// Starts fetches for those that are not.
    pub(super) fn evaluate(
        &mut self,
        extra: &[usize],
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) -> Status {
        let mut wait = false;
        for i in (0..self.configured).chain(extra.iter().copied()) {
            match self.status(i, now, store, owner, out) {
                Status::Usable => {}
                Status::Wait => wait = true,
                failed @ Status::Failed(_) => return failed,
            }
        }
        if wait {
            Status::Wait
        } else {
            Status::Usable
        }
    }

    fn status(
        &mut self,
        i: usize,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) -> Status {
        let fresh = self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .is_some_and(|e| !e.expired(now));
        if fresh {
            return Status::Usable;
        }
        // Stale or missing here: another VM may have fetched a newer value.
        self.sync(i, store);
        if self.usable(i, now) {
            return Status::Usable;
        }
        let Some(secret) = self.secrets.get(i) else {
            return Status::Failed("internal: unknown secret".into());
        };
        if secret.fetch.is_some() {
            return Status::Wait;
        }
        if let Some(e) = &secret.entry {
            if now < e.retry_at {
                return Status::Failed(self.failure(i));
            }
        }
        if self.waking == Waking::OwnCallbacks && owner != Owner::Root {
            // Kong: the request sends its own callout (`wake`), one at a time.
            return Status::Wait;
        }
        if !self.start_fetch(i, now, store, owner, false, out) {
            // Another VM holds the lease (its result arrives via shared
            // data) or just published, or the fetch failed at once.
            if self.usable(i, now) {
                return Status::Usable;
            }
            if let Some(e) = self.secrets.get(i).and_then(|s| s.entry.as_ref()) {
                if now < e.retry_at && e.usable(now).is_none() {
                    return Status::Failed(self.failure(i));
                }
            }
        }
        Status::Wait
    }

    fn usable(&mut self, i: usize, now: u64) -> bool {
        let Some(e) = self.secrets.get(i).and_then(|s| s.entry.as_ref()) else {
            return false;
        };
        if e.usable(now).is_none() {
            return false;
        }
        if e.expired(now) {
            self.stats.stale_served += 1;
        }
        true
    }

    /// Adopt the shared-data entry if it is newer than ours.
    pub(super) fn sync(&mut self, i: usize, store: &dyn SharedStore) {
        let Some(s) = self.secrets.get(i) else { return };
        let Some(shared) = cache::load(store, &s.skey, &s.descriptor) else {
            return;
        };
        let newer = s
            .entry
            .as_ref()
            .is_none_or(|mine| shared.updated_at > mine.updated_at);
        if newer {
            self.adopt(i, shared);
        }
    }

    fn adopt(&mut self, i: usize, entry: Entry) {
        let changed_value = self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .is_none_or(|old| old.value != entry.value);
        // A new fetch (not only a new value) draws a new point: every
        // refresh lands somewhere else in the window.
        let refetched = self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .is_none_or(|old| old.fetched_at != entry.fetched_at);
        let early = match (self.jitter, self.secrets.get(i)) {
            (true, Some(s)) if refetched => {
                let tenth = crate::cache::secs_to_ms(s.target.ttl) / 10;
                (tenth as f64 * self.random_unit()) as u64
            }
            (_, Some(s)) => s.early_ms,
            (_, None) => 0,
        };
        if let Some(s) = self.secrets.get_mut(i) {
            s.entry = Some(entry);
            s.early_ms = early;
        }
        self.warm = None;
        self.dirty = true;
        if changed_value {
            self.derive(i);
            self.rendered = None;
        }
    }

    /// Is secret `i` to be fetched now: never fetched, or within its early
    /// refresh window before expiry (or past it), and not backing off?
    pub(super) fn due(&self, i: usize, now: u64) -> bool {
        let Some(s) = self.secrets.get(i) else {
            return false;
        };
        let Some(e) = &s.entry else {
            return true;
        };
        let refresh_at = e.expires_at.map(|x| x.saturating_sub(s.early_ms));
        let stale = e.value.is_none() || refresh_at.is_some_and(|r| now >= r);
        stale && now >= e.retry_at
    }

    /// Try to start a GetSecretValue for secret `i`. False when another VM
    /// holds the lease or the request could not be built (failure recorded).
    /// `forced`: an upstream refused its value (`refresh_on_status`): fetch
    /// even if fresh, as long as [`Engine::refresh_allowed`].
    pub(super) fn start_fetch(
        &mut self,
        i: usize,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        forced: bool,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(slot) = self.secrets.get(i).map(|s| s.slot) else {
            return false;
        };
        // Credentials first: this VM's own, no lease needed to get them.
        let credentials = match self.poll_credentials(slot, now, store, owner, false, out) {
            Ok(Some(c)) => c,
            Ok(None) => return false, // being fetched; re-evaluated when they arrive
            Err(why) => {
                self.stats.failed("credentials");
                let reason = format!("no AWS credentials: {why}");
                self.record_failure(i, reason, false, now, store, out);
                return false;
            }
        };
        if !self.take_lease(i, now, store) {
            return false;
        }
        // Another VM may have published between our look at shared data and
        // taking the lease: fetch only if it is still due.
        self.sync(i, store);
        let due = if forced {
            self.refresh_allowed(i, now)
        } else {
            self.due(i, now)
        };
        if !due {
            self.release_lease(i, store);
            return false;
        }
        let sent = self.dispatch_secret(i, credentials, now, store, owner, true, out);
        if sent && forced {
            if let Some(s) = self.secrets.get_mut(i) {
                s.forcing = true;
            }
        }
        sent
    }

    /// Take secret `i`'s proxy-wide fetch lease, for as long as a fetch may take.
    pub(super) fn take_lease(&mut self, i: usize, now: u64, store: &mut dyn SharedStore) -> bool {
        let Some(s) = self.secrets.get(i) else {
            return false;
        };
        if s.incoming {
            return true; // no lease records for names a client chose
        }
        let until = now + u64::from(s.target.timeout_ms) + CALLOUT_GRACE_MS;
        Lease::acquire(store, &s.lease_key, self.holder, now, until)
    }

    pub(super) fn release_lease(&mut self, i: usize, store: &mut dyn SharedStore) {
        if let Some(s) = self.secrets.get(i).filter(|s| !s.incoming) {
            Lease::release(store, &s.lease_key, self.holder);
        }
    }

    /// Sign and send GetSecretValue for secret `i`. `leased`: under the
    /// secret's lease (released when the answer is published). False when
    /// signing failed (failure recorded).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatch_secret(
        &mut self,
        i: usize,
        credentials: Credentials,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        leased: bool,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(s) = self.secrets.get(i) else {
            return false;
        };
        let t = &s.target;
        let mut request =
            secrets_manager::get_secret_value_request(&t.endpoint, &t.secret_id, t.stage);
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(now);
        let signed = sigv4::sign(
            &mut request,
            &credentials,
            &t.region,
            "secretsmanager",
            time,
        )
        .map_err(|e| format!("signing failed: {e}"));
        let (upstream, timeout_ms) = (t.upstream.clone(), t.timeout_ms);
        if let Err(reason) = signed {
            self.stats.failed("credentials");
            self.record_failure(i, reason, false, now, store, out);
            if leased {
                self.release_lease(i, store);
            }
            return false;
        }
        let retry = self.secrets.get(i).is_some_and(|s| s.retrying);
        let kind = FetchKind::Secret {
            secret: i,
            credentials,
            retry,
            leased,
        };
        let id = self.track(kind, owner, now, timeout_ms);
        if let Some(s) = self.secrets.get_mut(i) {
            if leased {
                s.fetch = Some(id);
            }
            s.retrying = false;
        }
        self.stats.fetches_started += 1;
        if self
            .secrets
            .get(i)
            .and_then(|s| s.entry.as_ref())
            .is_some_and(|e| e.value.is_some())
        {
            self.stats.refreshes += 1;
        }
        out.push(Action::Log {
            level: Level::Debug,
            message: format!("fetching {} via upstream '{upstream}'", self.describe(i)),
        });
        out.push(Action::Dispatch {
            call: self.call(id),
            upstream,
            request,
            timeout_ms,
        });
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn secret_answer(
        &mut self,
        i: usize,
        used: Credentials,
        retry: bool,
        result: CalloutResult,
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        let Some(secret) = self.secrets.get(i) else {
            return;
        };
        let slot = secret.slot;
        let outcome = match result {
            CalloutResult::Failed(reason) => {
                Err((format!("callout failed: {reason}"), false, "callout"))
            }
            CalloutResult::Response(resp) => {
                match secrets_manager::parse_get_secret_value_of(&resp, &secret.target.secret_id) {
                    Ok(SecretValue::String(value)) => Ok((value, false)),
                    // Unlike Kong, served as the base64 text AWS sent (as the
                    // Secrets Manager Agent does); a key cannot be taken from it.
                    Ok(SecretValue::Binary(base64)) => Ok((base64, true)),
                    Err(e) if e.kind == ErrorKind::Credentials && !retry => {
                        self.renew_credentials(i, slot, &used, &e.code, store, out);
                        return;
                    }
                    Err(e) => {
                        let cacheable = !e.kind.is_retryable();
                        Err((e.to_string(), cacheable, e.kind.as_str()))
                    }
                }
            }
        };
        match outcome {
            Ok((value, binary)) => self.record_success(i, value, binary, now, store, out),
            Err((reason, cacheable, label)) => {
                self.stats.failed(label);
                self.record_failure(i, reason, cacheable, now, store, out)
            }
        }
    }

    /// AWS refused credentials `used` for secret `i` (expired or revoked):
    /// drop them, fetch new ones, and retry once (from the next evaluation).
    #[inline(never)] // see Config::fields
    fn renew_credentials(
        &mut self,
        i: usize,
        slot: Slot,
        used: &Credentials,
        code: &str,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Log {
            level: Level::Info,
            message: format!(
                "fetching {} was refused ({code}): renewing credentials and retrying once",
                self.describe(i)
            ),
        });
        self.credentials.invalidate(slot, Some(used));
        self.invalidate_shared(slot, used, store);
        if let Some(s) = self.secrets.get_mut(i) {
            s.retrying = true;
        }
        self.dirty = true;
    }

    #[inline(never)] // see Config::fields
    fn record_success(
        &mut self,
        i: usize,
        value: String,
        binary: bool,
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        self.stats.fetches_succeeded += 1;
        let Some(s) = self.secrets.get(i) else { return };
        let mut entry = self.base_entry(i, store);
        entry.succeed(value, now, s.target.ttl, s.target.resurrect_ttl);
        entry.binary = binary;
        if s.forcing {
            entry.forced_at = now;
        }
        let current = cache::publish(store, &s.skey, &entry);
        out.push(Action::Log {
            level: Level::Info,
            message: format!("fetched {}", self.describe(i)),
        });
        if let Some(s) = self.secrets.get_mut(i) {
            s.forcing = false;
        }
        self.adopt(i, current);
    }

    pub(super) fn record_failure(
        &mut self,
        i: usize,
        reason: String,
        cacheable: bool,
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        let jitter = self.random_unit();
        let Some(s) = self.secrets.get(i) else { return };
        let mut entry = self.base_entry(i, store);
        entry.fail(reason.clone(), cacheable, now, s.target.neg_ttl, jitter);
        if s.forcing {
            entry.forced_at = now;
        }
        // A failure for a name a client chose stays here: junk must leave
        // nothing behind in shared data.
        let current = if s.incoming {
            entry
        } else {
            cache::publish(store, &s.skey, &entry)
        };
        let serving = if current.usable(now).is_some() {
            " (still serving the previous value)"
        } else {
            ""
        };
        out.push(Action::Log {
            level: Level::Warn,
            message: format!(
                "fetching {} failed: {reason}; retry in {} ms{serving}",
                self.describe(i),
                current.retry_at.saturating_sub(now)
            ),
        });
        if let Some(s) = self.secrets.get_mut(i) {
            s.forcing = false;
        }
        self.adopt(i, current);
    }

    /// The entry to update: the newest of ours and the shared one.
    fn base_entry(&self, i: usize, store: &dyn SharedStore) -> Entry {
        let Some(s) = self.secrets.get(i) else {
            return Entry::default();
        };
        let shared = cache::load(store, &s.skey, &s.descriptor);
        let mine = s.entry.clone();
        let mut base = match (mine, shared) {
            (Some(m), Some(sh)) => {
                if sh.updated_at > m.updated_at {
                    sh
                } else {
                    m
                }
            }
            (Some(m), None) => m,
            (None, Some(sh)) => sh,
            (None, None) => Entry::default(),
        };
        base.key = s.descriptor.clone();
        base
    }
}
