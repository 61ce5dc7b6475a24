//! Paused requests: resolving them when secrets change ([`Engine::flush`]),
//! making sure each one can be woken on a host that continues a request only
//! from its own callouts ([`Engine::wake`], Kong), bounding how long they
//! wait, and failing them with a reason.

use super::incoming::IncomingHeader;
use super::secrets::Status;
use super::{Action, Engine, FetchKind, Level, Owner, Waking, CALLOUT_GRACE_MS};
use crate::aws::credentials::Slot;
use crate::cache::SharedStore;

/// A paused request: when it paused, and headers of its own (from trusted
/// incoming headers) to render on top of the configured ones.
pub(super) struct Waiter {
    pub(super) since: u64,
    pub(super) extra: Vec<IncomingHeader>,
}

impl Engine {
    /// Kong ([`Waking::OwnCallbacks`]): make sure the paused request `ctx`
    /// owns a callout in flight, since only its answer can continue it (the
    /// host continues the request by itself once its last callout is handled).
    /// Secrets it lacks that nobody fetches yet are fetched from its context,
    /// in parallel, under their leases (the answers are published for
    /// everyone as usual). When every missing secret is already being fetched
    /// (here or by another worker), it sends one copy of the fetch expected
    /// to land last, to be woken then; while credentials are being fetched,
    /// its own step of the provider or a copy of the step in flight. `Err`:
    /// nothing can be sent, the request is failed rather than left to hang.
    /// Envoy needs none of this: any callback resumes any request.
    pub(super) fn wake(
        &mut self,
        ctx: u32,
        needs: &[usize],
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let owner = Owner::Ctx(ctx);
        if self.waking == Waking::AnyContext || self.owns_callout(owner) {
            return Ok(());
        }
        let missing: Vec<usize> = (0..self.configured)
            .chain(needs.iter().copied())
            .filter(|&i| {
                self.secrets
                    .get(i)
                    .and_then(|s| s.entry.as_ref())
                    .and_then(|e| e.usable(now))
                    .is_none()
            })
            .collect();
        self.fetch_unfetched(&missing, now, store, owner, out)?;
        if self.owns_callout(owner) {
            return Ok(());
        }
        // Everything missing is on its way: a copy of the fetch expected to
        // land last wakes this request when the rest has landed too.
        let Some(&first) = missing.first() else {
            return Ok(()); // all usable: the caller continues it
        };
        let last = missing
            .iter()
            .copied()
            .max_by_key(|&i| self.in_flight(i).unwrap_or(0))
            .unwrap_or(first);
        self.wait_on_copy(last, now, store, owner, out)
    }

    /// [`Engine::wake`]: fetch from `owner`'s context the `missing` secrets
    /// nobody fetches yet, all now.
    #[inline(never)] // see Config::fields
    fn fetch_unfetched(
        &mut self,
        missing: &[usize],
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        for &i in missing {
            if self.in_flight(i).is_some() {
                continue;
            }
            let Some(slot) = self.secrets.get(i).map(|s| s.slot) else {
                continue;
            };
            match self.poll_credentials(slot, now, store, owner, true, out) {
                Ok(Some(credentials)) => {
                    if !self.take_lease(i, now, store) {
                        continue; // another worker fetches it
                    }
                    if !self.dispatch_secret(i, credentials, now, store, owner, true, out) {
                        return Err(self.failure(i));
                    }
                }
                Ok(None) => {} // credentials on their way (maybe from this context)
                Err(why) => {
                    self.stats.failed("credentials");
                    return Err(format!("{}: no AWS credentials: {why}", self.describe(i)));
                }
            }
        }
        Ok(())
    }

    /// [`Engine::wake`]: send from `owner`'s context a copy of secret
    /// `last`'s fetch, or while its credentials are being fetched, a step
    /// of their provider (its own, or a copy of the one in flight).
    #[inline(never)] // see Config::fields
    fn wait_on_copy(
        &mut self,
        last: usize,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let Some(slot) = self.secrets.get(last).map(|s| s.slot) else {
            return Err("internal: unknown secret".into());
        };
        match self.poll_credentials(slot, now, store, owner, true, out) {
            Ok(Some(credentials)) => {
                if self.dispatch_secret(last, credentials, now, store, owner, false, out) {
                    Ok(())
                } else {
                    Err(self.failure(last))
                }
            }
            Ok(None) if self.owns_callout(owner) => Ok(()),
            Ok(None) => self.resend_credentials_step(last, slot, now, owner, out),
            Err(why) => {
                self.stats.failed("credentials");
                Err(format!(
                    "{}: no AWS credentials: {why}",
                    self.describe(last)
                ))
            }
        }
    }

    /// A copy, from `owner`'s context, of the credentials callout in flight
    /// for `slot` (which secret `last` waits on), sent only to wake it.
    fn resend_credentials_step(
        &mut self,
        last: usize,
        slot: Slot,
        now: u64,
        owner: Owner,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let resend = self.fetches.values().find_map(|f| match &f.kind {
            FetchKind::Credentials { slot: s, sent, .. } if *s == slot => Some(sent.clone()),
            _ => None,
        });
        let Some(sent) = resend else {
            return Err(format!(
                "{}: waiting for AWS credentials with no callout to wait on",
                self.describe(last)
            ));
        };
        let id = self.track(FetchKind::WakeUp, owner, now, sent.timeout_ms);
        out.push(Action::Dispatch {
            call: self.call(id),
            upstream: sent.upstream,
            request: sent.request,
            timeout_ms: sent.timeout_ms,
        });
        Ok(())
    }

    fn owns_callout(&self, owner: Owner) -> bool {
        self.fetches.values().any(|f| f.owner == owner)
    }

    /// The deadline of the latest GetSecretValue in flight here for secret
    /// `i` (later deadline: sent later), if any.
    fn in_flight(&self, i: usize) -> Option<u64> {
        self.fetches
            .values()
            .filter(|f| matches!(f.kind, FetchKind::Secret { secret, .. } if secret == i))
            .map(|f| f.deadline)
            .max()
    }

    /// Resolve waiters after secret states changed.
    pub(super) fn flush(
        &mut self,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) {
        // A failure recorded while evaluating makes another pass worthwhile;
        // bounded, since each pass only records failures with a retry_at ahead.
        // Kong: a waiter whose own callback this is must be continued,
        // answered or given a new callout now, or the host continues it.
        let own_turn = self.waking == Waking::OwnCallbacks
            && matches!(owner, Owner::Ctx(c) if self.waiters.contains_key(&c));
        for pass in 0..3 {
            if !(self.dirty || self.waiters_overdue(now) || own_turn && pass == 0) {
                return;
            }
            self.dirty = false;
            // Kong: only the request whose callback this is can be continued.
            let ids: Vec<u32> = match (self.waking, owner) {
                (Waking::AnyContext, _) => self.waiters.keys().copied().collect(),
                (Waking::OwnCallbacks, Owner::Ctx(c)) if self.waiters.contains_key(&c) => {
                    vec![c]
                }
                (Waking::OwnCallbacks, _) => Vec::new(),
            };
            if ids.is_empty() {
                return;
            }
            let configured = self.evaluate(&[], now, store, owner, out);
            for ctx in ids {
                let Some(waiter) = self.waiters.remove(&ctx) else {
                    continue;
                };
                self.resolve_waiter(ctx, waiter, &configured, now, store, owner, out);
            }
        }
    }

    /// [`Engine::flush`]: resume, fail or keep waiter `ctx` (taken out of
    /// the waiters), given the configured secrets' `configured` status.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)] // see Config::fields
    fn resolve_waiter(
        &mut self,
        ctx: u32,
        waiter: Waiter,
        configured: &Status,
        now: u64,
        store: &mut dyn SharedStore,
        owner: Owner,
        out: &mut Vec<Action>,
    ) {
        let status = match configured {
            Status::Usable if !waiter.extra.is_empty() => {
                let needs = self.extra_secrets(&waiter.extra);
                self.evaluate(&needs, now, store, owner, out)
            }
            other => other.clone(),
        };
        // Kong: continued only from the answer to its last callout.
        let status = match status {
            Status::Usable
                if self.waking == Waking::OwnCallbacks
                    && self.fetches.values().any(|f| f.owner == Owner::Ctx(ctx)) =>
            {
                Status::Wait
            }
            other => other,
        };
        match status {
            Status::Wait if now.saturating_sub(waiter.since) > self.max_wait_ms() => {
                self.reject_log(Some(ctx), "timed out waiting for secrets", out);
            }
            Status::Wait => {
                let needs = self.extra_secrets(&waiter.extra);
                match self.wake(ctx, &needs, now, store, out) {
                    Ok(()) => {
                        self.waiters.insert(ctx, waiter);
                    }
                    Err(reason) => self.reject_log(Some(ctx), &reason, out),
                }
            }
            Status::Usable => match self.render_with(&waiter.extra) {
                Ok(headers) => out.push(Action::Resume { ctx, headers }),
                Err(reason) => self.reject_log(Some(ctx), &reason, out),
            },
            Status::Failed(reason) => self.reject_log(Some(ctx), &reason, out),
        }
    }

    fn waiters_overdue(&self, now: u64) -> bool {
        let limit = self.max_wait_ms();
        self.waiters
            .values()
            .any(|w| now.saturating_sub(w.since) > limit)
    }

    /// A paused request is failed after this long, whatever happens.
    fn max_wait_ms(&self) -> u64 {
        let longest = self
            .secrets
            .iter()
            .map(|s| u64::from(s.target.timeout_ms))
            .max()
            .unwrap_or(0);
        2 * (longest + CALLOUT_GRACE_MS)
    }

    pub(super) fn reject_log(&mut self, ctx: Option<u32>, reason: &str, out: &mut Vec<Action>) {
        self.stats.requests_failed += 1;
        out.push(Action::Log {
            level: Level::Warn,
            message: format!("request failed with 503: {reason}"),
        });
        if let Some(ctx) = ctx {
            out.push(Action::Reject { ctx });
        }
    }
}
