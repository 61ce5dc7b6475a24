//! The host shell's table of the contexts the host created (root contexts and
//! requests) and what each request keeps between its callbacks. Plain data, so
//! it is tested natively; the proxy-wasm shell holds one per VM.

use std::rc::Rc;

use litemap::LiteMap;

use crate::engine::Rendered;

pub struct Contexts {
    /// Root contexts: has the tick been started?
    pub roots: LiteMap<u32, bool>,
    /// Requests that keep state between callbacks.
    pub http: LiteMap<u32, Http>,
    /// The request context created last, with its root, while not in `http`:
    /// a request served from the warm path keeps nothing, so it never enters
    /// the table (its root is taken from here at its request headers). A
    /// second creation before that moves the first into the table.
    pub newest: Option<(u32, u32)>,
}

impl Default for Contexts {
    fn default() -> Contexts {
        Contexts::new()
    }
}

impl Contexts {
    pub const fn new() -> Contexts {
        Contexts {
            roots: LiteMap::new(),
            http: LiteMap::new(),
            newest: None,
        }
    }

    /// Request context `ctx` of root `root` was created.
    #[inline(always)] // once per request: see below
    pub fn create(&mut self, ctx: u32, root: u32) {
        if let Some((older, its_root)) = self.newest.replace((ctx, root)) {
            self.http.insert(older, Http::new(its_root));
        }
    }

    /// The root of request `ctx`, at its request headers; it leaves `newest`.
    #[inline(always)] // once per request: see below
    pub fn take_root(&mut self, ctx: u32) -> Option<u32> {
        match self.newest {
            Some((c, root)) if c == ctx => {
                self.newest = None;
                Some(root)
            }
            _ => self.http.get(&ctx).map(|h| h.root),
        }
    }

    /// Request `ctx`'s state, entered in the table if it is not there yet.
    pub fn entry(&mut self, ctx: u32, root: u32) -> &mut Http {
        self.http.entry(ctx).or_insert_with(|| Http::new(root))
    }

    #[inline(always)] // once per request: see below
    pub fn delete(&mut self, ctx: u32) {
        if matches!(self.newest, Some((c, _)) if c == ctx) {
            self.newest = None;
        } else if self.http_mut(ctx).is_some() {
            self.http.remove(&ctx);
        } else if self.is_root(ctx) {
            self.roots.remove(&ctx);
        }
    }

    // What every request does is inline (one call site each): the table is
    // empty while requests are served warm, and there are few roots.

    #[inline(always)]
    pub fn http_mut(&mut self, ctx: u32) -> Option<&mut Http> {
        if self.http.is_empty() {
            None
        } else {
            self.http.get_mut(&ctx)
        }
    }

    #[inline(always)]
    pub fn is_root(&self, ctx: u32) -> bool {
        for (root, _) in self.roots.as_slice() {
            if *root == ctx {
                return true;
            }
        }
        false
    }
}

/// One HTTP request's state.
pub struct Http {
    /// The root context (configuration) this request belongs to.
    pub root: u32,
    /// Response headers to set, once resumed.
    pub response: Option<Rc<Rendered>>,
    /// Paused by this filter and not yet resumed or answered by it.
    pub paused: bool,
    /// Went through the engine (not the warm path): it may be waiting or own
    /// callouts, so the engine must hear when it ends.
    pub engaged: bool,
}

impl Http {
    pub fn new(root: u32) -> Http {
        Http {
            root,
            response: None,
            paused: false,
            engaged: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_served_warm_never_enters_the_table() {
        let mut c = Contexts::new();
        c.create(7, 1);
        assert_eq!(c.take_root(7), Some(1));
        assert!(c.http.is_empty() && c.newest.is_none());
        assert!(c.http_mut(7).is_none());
        c.delete(7); // after its headers: nothing left to remove
        assert!(c.http.is_empty() && c.newest.is_none());
    }

    #[test]
    fn a_second_creation_moves_the_first_into_the_table() {
        let mut c = Contexts::new();
        c.create(7, 1);
        c.create(8, 2);
        assert_eq!(c.newest, Some((8, 2)));
        assert_eq!(c.http.get(&7).map(|h| h.root), Some(1));
        assert_eq!(c.take_root(7), Some(1), "found in the table");
        assert_eq!(c.take_root(8), Some(2), "still the newest");
        c.delete(7);
        assert!(c.http.is_empty());
    }

    #[test]
    fn entry_keeps_state_for_a_request_and_delete_removes_it() {
        let mut c = Contexts::new();
        c.create(7, 1);
        assert_eq!(c.take_root(7), Some(1));
        c.entry(7, 1).engaged = true;
        assert!(c.http_mut(7).is_some_and(|h| h.engaged && h.root == 1));
        assert!(c.entry(7, 99).root == 1, "not re-entered");
        c.delete(7);
        assert!(c.http_mut(7).is_none());
    }

    #[test]
    fn deleting_a_request_before_its_headers_or_a_root() {
        let mut c = Contexts::new();
        c.roots.insert(1, true);
        c.create(7, 1);
        c.delete(7);
        assert!(c.newest.is_none() && c.http.is_empty());
        assert!(c.is_root(1) && !c.is_root(7));
        c.delete(1);
        assert!(!c.is_root(1));
    }
}
