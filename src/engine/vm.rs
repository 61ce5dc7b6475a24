//! One VM's filter state: an [`Engine`] per root context, and the callouts
//! in flight.
//!
//! Envoy gives every filter configuration that shares a `vm_id` its own root
//! context in the same VM; Kong (ngx_wasm_module) one per filter instance,
//! with ids that are CRC32 hashes. Each root gets its own engine, built from
//! its own configuration: a request is answered by the engine of the root it
//! belongs to, and nothing one root holds (configuration, rendered headers,
//! paused requests, fetches) is visible to another. What roots share is the
//! host's shared data: the cache, the fetch leases and temporary credentials,
//! so a secret named the same way by several roots is fetched once per proxy.
//!
//! Callouts are matched to the exact fetch that sent them ([`CallRef`]: root,
//! engine generation, fetch id). An answer whose engine is gone (root deleted
//! or re-configured) is dropped; requests paused on a retired engine are
//! failed with 503 at once (Envoy) or from their own callout's answer (Kong).

use litemap::LiteMap;

use super::{
    Action, CallRef, CalloutResult, Decision, Engine, Level, Owner, Stats, Waking,
    CALLOUT_GRACE_MS, MAINTENANCE_MS,
};
use crate::cache::SharedStore;
use crate::config::Config;

/// Most root contexts (filter configurations) one VM serves.
pub const MAX_ROOTS: usize = 1024;

/// A callout in flight, by host token.
struct Call {
    call: CallRef,
    owner: Owner,
    /// After this, the token is forgotten unless its fetch is still awaited.
    forget_at: u64,
}

pub struct Vm {
    roots: LiteMap<u32, Engine>,
    calls: LiteMap<u32, Call>,
    waking: Waking,
    next_gen: u32,
    /// Kong: requests paused on a retired engine; each owns a callout whose
    /// answer fails it with 503.
    orphans: LiteMap<u32, ()>,
    /// Counters of retired engines, so metrics never go backwards.
    retired: Stats,
    next_sweep: u64,
}

impl Vm {
    pub const fn new(waking: Waking) -> Vm {
        Vm {
            roots: LiteMap::new(),
            calls: LiteMap::new(),
            waking,
            next_gen: 1,
            orphans: LiteMap::new(),
            retired: Stats::ZERO,
            next_sweep: 0,
        }
    }

    /// How the host continues paused requests, for the engines made from now on.
    pub fn set_waking(&mut self, waking: Waking) {
        self.waking = waking;
    }

    pub fn waking(&self) -> Waking {
        self.waking
    }

    /// Root contexts with a configuration.
    pub fn roots(&self) -> usize {
        self.roots.len()
    }

    /// The engine of `root`, if configured.
    pub fn engine(&self, root: u32) -> Option<&Engine> {
        self.roots.get(&root)
    }

    /// Configure root context `root` from its JSON configuration. A root
    /// configured again gets a new engine; the old one is retired. Returns
    /// the number of secrets the configuration names.
    pub fn configure(
        &mut self,
        root: u32,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        seed: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) -> Result<usize, String> {
        if !self.roots.contains_key(&root) && self.roots.len() >= MAX_ROOTS {
            return Err(format!(
                "too many filter configurations in one VM (limit {MAX_ROOTS}): share fewer \
                 configurations per vm_id (Envoy) or use fewer filter chains (Kong)"
            ));
        }
        let config = Config::parse(text, env)?;
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let engine = Engine::new(&config, env, seed)?.serving(root, gen, self.waking);
        let secrets = engine.secret_count();
        if let Some(old) = self.roots.insert(root, engine) {
            self.retire(old, "its configuration was replaced", store, out);
        }
        Ok(secrets)
    }

    /// Root context `root` is gone (its configuration removed or replaced).
    pub fn remove_root(&mut self, root: u32, store: &mut dyn SharedStore, out: &mut Vec<Action>) {
        if let Some(old) = self.roots.remove(&root) {
            self.retire(old, "its configuration was removed", store, out);
        }
    }

    fn retire(
        &mut self,
        mut engine: Engine,
        why: &str,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        let waiters = engine.shut_down(store);
        self.retired.add(&engine.stats);
        if waiters.is_empty() {
            return;
        }
        self.retired.requests_failed += waiters.len() as u64;
        out.push(Action::Log {
            level: Level::Warn,
            message: format!("{} paused request(s) failed with 503: {why}", waiters.len()),
        });
        match self.waking {
            Waking::AnyContext => out.extend(waiters.into_iter().map(|ctx| Action::Reject { ctx })),
            Waking::OwnCallbacks => {
                for ctx in waiters {
                    self.orphans.insert(ctx, ());
                }
            }
        }
    }

    /// Incoming request headers whose references `root` resolves.
    pub fn trusted_headers(&self, root: u32) -> &[String] {
        self.roots.get(&root).map_or(&[], |e| e.trusted_headers())
    }

    /// The warm path of [`Engine::warm`] for a request of root `root`.
    #[inline]
    pub fn warm(&mut self, root: u32, now: u64) -> Option<&std::rc::Rc<super::Rendered>> {
        // One configuration per VM is the common case: no search.
        let engine = if self.roots.len() == 1 {
            self.roots
                .iter_mut()
                .next()
                .filter(|(key, _)| **key == root)
                .map(|(_, engine)| engine)
        } else {
            self.roots.get_mut(&root)
        };
        engine?.warm(now)
    }

    /// A request of root `root` arrived.
    #[allow(clippy::too_many_arguments)]
    pub fn on_request(
        &mut self,
        root: u32,
        ctx: u32,
        now: u64,
        incoming: &[(&str, &str)],
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) -> Decision {
        match self.roots.get_mut(&root) {
            Some(engine) => engine.on_request(ctx, now, incoming, store, out),
            None => {
                self.retired.requests_failed += 1;
                out.push(Action::Log {
                    level: Level::Warn,
                    message: format!(
                        "request failed with 503: no configuration for root context {root}"
                    ),
                });
                Decision::Reject
            }
        }
    }

    /// The host accepted a callout for `call`, sent from `owner`'s context.
    pub fn on_dispatched(
        &mut self,
        token: u32,
        call: CallRef,
        owner: Owner,
        timeout_ms: u32,
        now: u64,
    ) {
        let forget_at = now + u64::from(timeout_ms) + 2 * CALLOUT_GRACE_MS;
        self.calls.insert(
            token,
            Call {
                call,
                owner,
                forget_at,
            },
        );
    }

    /// The context that sent callout `token`, whose callback must handle its
    /// answer; `None` once given up on.
    pub fn call_owner(&self, token: u32) -> Option<Owner> {
        self.calls.get(&token).map(|c| c.owner)
    }

    /// The host refused to send the callout for `call`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_dispatch_failed(
        &mut self,
        call: CallRef,
        reason: String,
        now: u64,
        store: &mut dyn SharedStore,
        active: Owner,
        out: &mut Vec<Action>,
    ) {
        if let Some(engine) = self.live(call) {
            engine.on_dispatch_error(call.fetch, reason, now, store, active, out);
        }
    }

    /// The answer to callout `token` arrived in `active`'s context. `result`
    /// reads it from the host, only if some fetch awaits it.
    pub fn on_callout(
        &mut self,
        token: u32,
        result: impl FnOnce() -> CalloutResult,
        now: u64,
        store: &mut dyn SharedStore,
        active: Owner,
        out: &mut Vec<Action>,
    ) {
        let Some(Call { call, .. }) = self.calls.remove(&token) else {
            return;
        };
        if let Some(engine) = self.live(call) {
            engine.on_callout(call.fetch, result(), now, store, active, out);
            return;
        }
        // Its engine is gone. Kong: a request paused on it hears its own
        // answer here, the one callback that can fail it.
        if let Owner::Ctx(ctx) = active {
            if self.orphans.remove(&ctx).is_some() {
                out.push(Action::Reject { ctx });
            }
        }
    }

    fn live(&mut self, call: CallRef) -> Option<&mut Engine> {
        self.roots
            .get_mut(&call.root)
            .filter(|e| e.generation() == call.gen)
    }

    /// The upstream answered `status` to a request of root `root` that
    /// carried the secrets `used` (rendered by generation `gen`).
    pub fn on_upstream_status(
        &mut self,
        root: u32,
        gen: u32,
        used: &[usize],
        status: u16,
        now: u64,
        store: &dyn SharedStore,
    ) {
        if let Some(engine) = self.roots.get_mut(&root).filter(|e| e.generation() == gen) {
            engine.on_upstream_status(used, status, now, store);
        }
    }

    /// Root `root`'s tick.
    pub fn on_tick(
        &mut self,
        root: u32,
        now: u64,
        store: &mut dyn SharedStore,
        out: &mut Vec<Action>,
    ) {
        if let Some(engine) = self.roots.get_mut(&root) {
            engine.on_tick(now, store, out);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + MAINTENANCE_MS;
            self.sweep(now);
        }
    }

    /// Forget tokens of callouts that will never be answered (Kong <= 3.8
    /// does not answer a failed dispatch; Envoy drops answers for contexts
    /// that went away), unless a fetch or an orphaned request still awaits them.
    fn sweep(&mut self, now: u64) {
        let roots = &self.roots;
        let orphans = &self.orphans;
        self.calls.retain(|_, c| {
            now < c.forget_at
                || roots
                    .get(&c.call.root)
                    .is_some_and(|e| e.generation() == c.call.gen && e.awaits(c.call.fetch))
                || matches!(c.owner, Owner::Ctx(ctx) if orphans.contains_key(&ctx))
        });
    }

    /// Request `ctx` of root `root` ended (answered, or the client left).
    pub fn on_context_done(&mut self, root: u32, ctx: u32, store: &mut dyn SharedStore) {
        self.orphans.remove(&ctx);
        if let Some(engine) = self.roots.get_mut(&root) {
            engine.on_context_done(ctx, store);
        }
    }

    /// Callouts whose answers are awaited.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Every counter, summed over all roots, past and present.
    pub fn stats(&self) -> Stats {
        let mut total = self.retired.clone();
        for engine in self.roots.values() {
            total.add(&engine.stats);
        }
        total
    }
}

#[cfg(test)]
mod tests;
