//! The fetch-and-cache machine every simple source runs on: a [`Fetch`] is one
//! source's protocol; [`Refreshing`] adds the cache, refresh ahead of expiry,
//! backoff and lost-callout expiry ([`RefreshState`], also used by
//! [`AssumeRole`](super::assume_role::AssumeRole)).

use std::fmt;
use std::ops::ControlFlow;

use super::{Poll, Provider, TimedCredentials, Update};
use crate::aws::sigv4::Credentials;
use crate::aws::{HttpRequest, HttpResponse};

/// Refresh this long before expiry at the latest.
pub const REFRESH_AHEAD_MS: u64 = 5 * 60 * 1000;
/// Credentials are not handed out in the last 10 s of their life.
pub const EXPIRY_MARGIN_MS: u64 = 10_000;
/// First retry delay after a failure; doubles up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_MIN_MS: u64 = 1_000;
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// A callout unanswered this long after its timeout is given up.
pub const CALLOUT_GRACE_MS: u64 = 2_000;

/// A callout to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub upstream: String,
    pub request: HttpRequest,
    pub timeout_ms: u32,
}

/// What a [`Fetch`] wants next.
#[derive(Debug)]
pub enum Step {
    Send(Outgoing),
    Done(TimedCredentials),
    Fail(String),
    NotConfigured(String),
}

/// One source's fetch protocol, without caching, backoff or ids: those are
/// [`Refreshing`]'s. A fetch is `begin`, then one `answer` per `Send`.
pub trait Fetch {
    fn name(&self) -> &'static str;
    fn begin(&mut self, now: u64) -> Step;
    fn answer(&mut self, result: Result<HttpResponse, String>, now: u64) -> Step;
}

/// What a [`Fetch`] made of its configuration and environment, once, at
/// construction: the target it fetches from, or why it has none.
pub(crate) enum Setup<T> {
    NotConfigured(String),
    Invalid(String),
    Ready(Box<T>),
}

impl<T> Setup<T> {
    /// Go on with the target, or break with the step that answers `begin`
    /// without one.
    pub(crate) fn target(&self) -> ControlFlow<Step, &T> {
        match self {
            Setup::NotConfigured(r) => ControlFlow::Break(Step::NotConfigured(r.clone())),
            Setup::Invalid(r) => ControlFlow::Break(Step::Fail(r.clone())),
            Setup::Ready(t) => ControlFlow::Continue(t),
        }
    }

    /// `Debug` fields: why there is no target, or what `ready` shows of it
    /// (never a secret).
    pub(crate) fn debug_fields(
        &self,
        d: &mut fmt::DebugStruct<'_, '_>,
        ready: impl FnOnce(&mut fmt::DebugStruct<'_, '_>, &T),
    ) {
        match self {
            Setup::NotConfigured(r) => {
                d.field("not_configured", r);
            }
            Setup::Invalid(r) => {
                d.field("invalid", r);
            }
            Setup::Ready(t) => ready(d, t),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    id: u64,
    deadline: u64,
    timeout_ms: u32,
}

/// Cache, refresh timing, in-flight callout and backoff of one credentials
/// source. Used by [`Refreshing`] and [`AssumeRole`](super::assume_role::AssumeRole).
#[derive(Default)]
pub(crate) struct RefreshState {
    cached: Option<TimedCredentials>,
    refresh_at: u64,
    in_flight: Option<InFlight>,
    queued: Option<Outgoing>,
    failures: u32,
    retry_at: u64,
    last_error: Option<String>,
    next_id: u64,
}

impl fmt::Debug for RefreshState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshState")
            .field("cached", &self.cached)
            .field("refresh_at", &self.refresh_at)
            .field("in_flight", &self.in_flight.map(|i| i.id))
            .field("failures", &self.failures)
            .field("retry_at", &self.retry_at)
            .field("last_error", &self.last_error)
            .finish()
    }
}

impl RefreshState {
    pub(crate) fn usable(&self, now: u64) -> Option<&TimedCredentials> {
        self.cached.as_ref().filter(|c| match c.expires_at {
            None => true,
            Some(e) => now.saturating_add(EXPIRY_MARGIN_MS) < e,
        })
    }

    /// Usable credentials, unless a refresh is due.
    pub(crate) fn fresh(&self, now: u64) -> Option<&TimedCredentials> {
        self.usable(now).filter(|_| now < self.refresh_at)
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    pub(crate) fn backing_off(&self, now: u64) -> bool {
        now < self.retry_at
    }

    /// The in-flight callout, if it is past its deadline.
    pub(crate) fn lost(&self, now: u64) -> Option<(u64, u32)> {
        self.in_flight
            .filter(|i| now >= i.deadline)
            .map(|i| (i.id, i.timeout_ms))
    }

    /// Is `id` the callout we wait for? If so it is no longer in flight.
    pub(crate) fn take(&mut self, id: u64) -> bool {
        if self.in_flight.is_some_and(|i| i.id == id) {
            self.in_flight = None;
            true
        } else {
            false
        }
    }

    pub(crate) fn queue(&mut self, out: Outgoing) {
        self.queued = Some(out);
    }

    pub(crate) fn take_queued(&mut self) -> Option<Outgoing> {
        self.queued.take()
    }

    /// Mark `out` in flight under a new id.
    pub(crate) fn dispatch(&mut self, out: Outgoing, now: u64) -> Poll {
        self.next_id += 1;
        let id = self.next_id;
        self.in_flight = Some(InFlight {
            id,
            deadline: now
                .saturating_add(u64::from(out.timeout_ms))
                .saturating_add(CALLOUT_GRACE_MS),
            timeout_ms: out.timeout_ms,
        });
        Poll::Dispatch {
            id,
            upstream: out.upstream,
            request: out.request,
            timeout_ms: out.timeout_ms,
        }
    }

    pub(crate) fn succeed(&mut self, creds: TimedCredentials, now: u64) -> Update {
        self.refresh_at = match creds.expires_at {
            None => u64::MAX,
            Some(e) => {
                let ahead = REFRESH_AHEAD_MS.min(e.saturating_sub(now) / 2);
                e.saturating_sub(ahead)
            }
        };
        let expires_at = creds.expires_at;
        self.cached = Some(creds);
        self.failures = 0;
        self.retry_at = 0;
        self.last_error = None;
        self.queued = None;
        Update::Refreshed { expires_at }
    }

    pub(crate) fn fail(&mut self, reason: String, now: u64) -> Update {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now.saturating_add(backoff_ms(self.failures));
        self.last_error = Some(reason.clone());
        self.queued = None;
        Update::Failed {
            reason,
            retry_at: self.retry_at,
        }
    }

    /// What to answer when no new fetch can start now.
    pub(crate) fn fallback(&self, now: u64) -> Poll {
        if let Some(c) = self.usable(now) {
            return Poll::Ready(c.clone());
        }
        if self.in_flight.is_some() || self.queued.is_some() {
            return Poll::Pending;
        }
        match &self.last_error {
            Some(e) => Poll::Failed(e.clone()),
            None => Poll::Pending,
        }
    }

    pub(crate) fn invalidate(&mut self, rejected: Option<&Credentials>) {
        let matches = match (&self.cached, rejected) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(c), Some(r)) => c.credentials == *r,
        };
        if matches {
            self.cached = None;
            self.refresh_at = 0;
            self.retry_at = 0;
        }
    }
}

/// Delay before attempt `failures + 1`: 1 s, 2 s, 4 s, ... capped at 60 s.
pub fn backoff_ms(failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_MIN_MS
        .saturating_mul(1u64 << shift)
        .min(BACKOFF_MAX_MS)
}

/// A [`Fetch`] with caching, refresh ahead of expiry, backoff and lost
/// callout expiry: the [`Provider`] for env, container, web identity and IMDS.
pub struct Refreshing<F> {
    fetch: F,
    state: RefreshState,
    not_configured: Option<String>,
}

impl<F: Fetch + fmt::Debug> fmt::Debug for Refreshing<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refreshing")
            .field("fetch", &self.fetch)
            .field("state", &self.state)
            .field("not_configured", &self.not_configured)
            .finish()
    }
}

impl<F: Fetch> Refreshing<F> {
    pub fn new(fetch: F) -> Self {
        Refreshing {
            fetch,
            state: RefreshState::default(),
            not_configured: None,
        }
    }

    /// The source's protocol state (for tests and introspection).
    pub fn fetcher(&self) -> &F {
        &self.fetch
    }

    fn prefixed(&self, reason: String) -> String {
        format!("{}: {reason}", self.fetch.name())
    }

    fn step_update(&mut self, step: Step, now: u64) -> Update {
        match step {
            Step::Send(out) => {
                self.state.queue(out);
                Update::Progress
            }
            Step::Done(creds) => self.state.succeed(creds, now),
            Step::Fail(reason) | Step::NotConfigured(reason) => {
                let reason = self.prefixed(reason);
                self.state.fail(reason, now)
            }
        }
    }
}

impl<F: Fetch> Provider for Refreshing<F> {
    fn name(&self) -> &'static str {
        self.fetch.name()
    }

    fn poll(&mut self, now: u64) -> Poll {
        if let Some(reason) = &self.not_configured {
            return Poll::NotConfigured(reason.clone());
        }
        if let Some((id, timeout_ms)) = self.state.lost(now) {
            let why = format!("no answer within {timeout_ms} ms");
            self.on_response(id, Err(why), now);
        }
        if let Some(out) = self.state.take_queued() {
            return self.state.dispatch(out, now);
        }
        if let Some(c) = self.state.fresh(now) {
            return Poll::Ready(c.clone());
        }
        if self.state.in_flight() || self.state.backing_off(now) {
            return self.state.fallback(now);
        }
        match self.fetch.begin(now) {
            Step::Send(out) => self.state.dispatch(out, now),
            Step::Done(creds) => {
                self.state.succeed(creds.clone(), now);
                Poll::Ready(creds)
            }
            Step::Fail(reason) => {
                let reason = self.prefixed(reason);
                self.state.fail(reason, now);
                self.state.fallback(now)
            }
            Step::NotConfigured(reason) => {
                let reason = self.prefixed(reason);
                self.not_configured = Some(reason.clone());
                Poll::NotConfigured(reason)
            }
        }
    }

    fn on_response(&mut self, id: u64, result: Result<HttpResponse, String>, now: u64) -> Update {
        if !self.state.take(id) {
            return Update::Ignored;
        }
        let step = self.fetch.answer(result, now);
        self.step_update(step, now)
    }

    fn invalidate(&mut self, rejected: Option<&Credentials>) {
        self.state.invalidate(rejected);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::super::{get_request, Url};
    use super::*;
    use crate::aws::secrets_manager;

    #[test]
    fn backoff_doubles_to_a_minute() {
        let v: Vec<u64> = (1..=9).map(backoff_ms).collect();
        assert_eq!(
            v,
            [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        assert_eq!(backoff_ms(u32::MAX), 60_000);
    }
    #[derive(Debug)]
    struct Scripted {
        answers: Vec<Step>,
        begun: u32,
    }

    fn out(path: &str) -> Outgoing {
        Outgoing {
            upstream: "u".into(),
            request: get_request(
                &Url {
                    endpoint: secrets_manager::parse_endpoint_url("http://h").unwrap(),
                    path: path.into(),
                },
                vec![],
            ),
            timeout_ms: 1000,
        }
    }

    impl Fetch for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn begin(&mut self, _now: u64) -> Step {
            self.begun += 1;
            Step::Send(out("/begin"))
        }
        fn answer(&mut self, result: Result<HttpResponse, String>, now: u64) -> Step {
            match result {
                Err(e) => Step::Fail(e),
                Ok(r) if r.status == 200 => Step::Done(TimedCredentials {
                    credentials: Credentials {
                        access_key_id: format!("AK{now}"),
                        secret_access_key: SECRET.into(),
                        session_token: None,
                    },
                    expires_at: Some(now + HOUR),
                }),
                Ok(r) if r.status == 100 => Step::Send(out("/next")),
                Ok(_) => self.answers.pop().unwrap_or(Step::Fail("scripted".into())),
            }
        }
    }

    fn scripted() -> Refreshing<Scripted> {
        Refreshing::new(Scripted {
            answers: vec![],
            begun: 0,
        })
    }

    #[test]
    fn refresh_ahead_serves_old_credentials_meanwhile() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        assert_eq!(p.poll(T0), Poll::Pending);
        assert_eq!(
            p.on_response(id, Ok(resp(200, "")), T0),
            Update::Refreshed {
                expires_at: Some(T0 + HOUR)
            }
        );
        let first = ready(p.poll(T0 + 1));
        assert_eq!(first.credentials.access_key_id, format!("AK{T0}"));
        // 5 minutes before expiry: refresh, serving the old ones meanwhile.
        let t = T0 + HOUR - REFRESH_AHEAD_MS - 1;
        assert_eq!(ready(p.poll(t)), first);
        let t = t + 1;
        let (id2, ..) = dispatched(p.poll(t));
        assert_eq!(ready(p.poll(t + 5)), first);
        // A stale answer is ignored.
        assert_eq!(p.on_response(id, Ok(resp(200, "")), t), Update::Ignored);
        p.on_response(id2, Ok(resp(200, "")), t + 10);
        let second = ready(p.poll(t + 11));
        assert_eq!(second.credentials.access_key_id, format!("AK{}", t + 10));
        assert_eq!(p.fetcher().begun, 2);
    }

    #[test]
    fn short_lived_credentials_refresh_at_half_life() {
        let mut p = scripted();
        p.state.succeed(
            TimedCredentials {
                credentials: Credentials {
                    access_key_id: "AK".into(),
                    secret_access_key: SECRET.into(),
                    session_token: None,
                },
                expires_at: Some(T0 + 120_000),
            },
            T0,
        );
        assert!(matches!(p.poll(T0 + 59_999), Poll::Ready(_)));
        assert!(matches!(p.poll(T0 + 60_000), Poll::Dispatch { .. }));
    }

    #[test]
    fn expired_credentials_are_refetched_and_not_served() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(200, "")), T0);
        // Past expiry (minus margin) with no refresh yet: nothing to serve.
        let t = T0 + HOUR - EXPIRY_MARGIN_MS;
        let (id, ..) = dispatched(p.poll(t));
        assert_eq!(p.poll(t), Poll::Pending);
        p.on_response(id, Ok(resp(200, "")), t);
        assert!(matches!(p.poll(t), Poll::Ready(_)));
    }

    #[test]
    fn backoff_after_failures_and_old_credentials_served() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        let u = p.on_response(id, Ok(resp(500, "")), T0);
        assert_eq!(
            u,
            Update::Failed {
                reason: "scripted: scripted".into(),
                retry_at: T0 + 1000
            }
        );
        assert_eq!(p.poll(T0 + 999), Poll::Failed("scripted: scripted".into()));
        let (id, ..) = dispatched(p.poll(T0 + 1000));
        p.on_response(id, Err("boom".into()), T0 + 1000);
        assert_eq!(p.poll(T0 + 2999), Poll::Failed("scripted: boom".into()));
        let (id, ..) = dispatched(p.poll(T0 + 3000));
        p.on_response(id, Ok(resp(200, "")), T0 + 3000);
        let good = ready(p.poll(T0 + 3000));
        // A failed refresh keeps serving the valid credentials.
        let t = T0 + 3000 + HOUR - REFRESH_AHEAD_MS;
        let (id, ..) = dispatched(p.poll(t));
        assert!(matches!(
            p.on_response(id, Ok(resp(500, "")), t),
            Update::Failed { retry_at, .. } if retry_at == t + 1000
        ));
        assert_eq!(ready(p.poll(t + 10)), good);
        assert!(matches!(p.poll(t + 1000), Poll::Dispatch { .. }));
    }

    #[test]
    fn multi_step_and_lost_callouts() {
        let mut p = scripted();
        let (id, _, req, _) = dispatched(p.poll(T0));
        assert_eq!(req.path, "/begin");
        assert_eq!(p.on_response(id, Ok(resp(100, "")), T0), Update::Progress);
        let (id2, _, req, _) = dispatched(p.poll(T0));
        assert_eq!(req.path, "/next");
        assert_ne!(id, id2);
        // Never answered: given up after timeout + grace, then backoff.
        assert_eq!(p.poll(T0 + 1000 + CALLOUT_GRACE_MS - 1), Poll::Pending);
        let t = T0 + 1000 + CALLOUT_GRACE_MS;
        assert_eq!(
            p.poll(t),
            Poll::Failed("scripted: no answer within 1000 ms".into())
        );
        assert_eq!(p.on_response(id2, Ok(resp(200, "")), t), Update::Ignored);
        assert!(matches!(p.poll(t + 1000), Poll::Dispatch { .. }));
    }

    #[test]
    fn invalidate_drops_only_the_rejected_credentials() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(200, "")), T0);
        let old = ready(p.poll(T0)).credentials;
        let other = Credentials {
            access_key_id: "OTHER".into(),
            ..old.clone()
        };
        p.invalidate(Some(&other));
        assert!(matches!(p.poll(T0 + 1), Poll::Ready(_)));
        p.invalidate(Some(&old));
        let (id, ..) = dispatched(p.poll(T0 + 2));
        // Not served any more while the refetch runs.
        assert_eq!(p.poll(T0 + 2), Poll::Pending);
        p.invalidate(Some(&old));
        p.on_response(id, Ok(resp(200, "")), T0 + 3);
        let new = ready(p.poll(T0 + 3)).credentials;
        assert_ne!(new, old);
        // A late rejection of the old ones leaves the new ones alone.
        p.invalidate(Some(&old));
        assert_eq!(ready(p.poll(T0 + 4)).credentials, new);
        p.invalidate(None);
        assert!(matches!(p.poll(T0 + 5), Poll::Dispatch { .. }));
    }

    #[test]
    fn invalidate_skips_backoff_once() {
        let mut p = scripted();
        let (id, ..) = dispatched(p.poll(T0));
        p.on_response(id, Ok(resp(200, "")), T0);
        let t = T0 + HOUR - REFRESH_AHEAD_MS;
        let (id, ..) = dispatched(p.poll(t));
        p.on_response(id, Ok(resp(500, "")), t);
        assert!(matches!(p.poll(t + 1), Poll::Ready(_)));
        p.invalidate(None);
        assert!(matches!(p.poll(t + 2), Poll::Dispatch { .. }));
    }
}
