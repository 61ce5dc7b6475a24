//! A fake host for native tests, with Envoy's and Kong's differing semantics.

use std::collections::HashMap;

use super::{SharedStore, StoreError};

#[cfg(not(target_arch = "wasm32"))]
pub mod proxy;

/// Which host's semantics to model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// proxy-wasm-cpp-host: `cas None` writes unconditionally; a cas on a
    /// missing key is accepted.
    Envoy,
    /// ngx_wasm_module: a write succeeds only if cas equals the current cas;
    /// `cas None` (0) means "only if absent".
    Kong,
}

/// Shared data as a host keeps it: value plus a cas that changes on every write.
#[derive(Debug, Clone)]
pub struct FakeStore {
    kind: HostKind,
    map: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl FakeStore {
    pub fn new(kind: HostKind) -> Self {
        FakeStore {
            kind,
            map: HashMap::new(),
            next_cas: 1,
        }
    }

    pub fn kind(&self) -> HostKind {
        self.kind
    }

    /// Keys currently stored (for assertions).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

impl SharedStore for FakeStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let current = self.map.get(key).map(|(_, c)| *c);
        let allowed = match (self.kind, cas, current) {
            (HostKind::Envoy, None, _) => true,
            (HostKind::Envoy, Some(c), Some(cur)) => c == cur,
            (HostKind::Envoy, Some(_), None) => true,
            (HostKind::Kong, None, None) => true,
            (HostKind::Kong, None, Some(_)) => false,
            (HostKind::Kong, Some(c), cur) => Some(c) == cur,
        };
        if !allowed {
            return Err(StoreError::CasMismatch);
        }
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.map.insert(key.to_string(), (value.to_vec(), cas));
        Ok(())
    }
}

/// How a host reports a callout that failed without an HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutFailure {
    Timeout,
    ConnectionRefused,
}

/// Headers (with pseudo-headers) and body as a host hands them over.
pub type HostAnswer = (Vec<(String, String)>, Vec<u8>);

/// The `(headers, body)` a host hands the filter for a failed callout, or
/// `None` when the host never calls back at all (Kong <= 3.8).
pub fn failed_callout(
    kind: HostKind,
    failure: CalloutFailure,
    kong_calls_back: bool,
) -> Option<HostAnswer> {
    let h = |n: &str, v: &str| (n.to_string(), v.to_string());
    match (kind, failure) {
        (HostKind::Envoy, CalloutFailure::Timeout) => Some((
            vec![h(":status", "504"), h("content-type", "text/plain")],
            b"upstream request timeout".to_vec(),
        )),
        (HostKind::Envoy, CalloutFailure::ConnectionRefused) => Some((
            vec![h(":status", "503"), h("content-type", "text/plain")],
            b"upstream connect error or disconnect/reset before headers".to_vec(),
        )),
        (HostKind::Kong, _) if !kong_calls_back => None,
        (HostKind::Kong, CalloutFailure::Timeout) => {
            Some((vec![h(":dispatch_status", "timeout")], Vec::new()))
        }
        (HostKind::Kong, CalloutFailure::ConnectionRefused) => {
            Some((vec![h(":dispatch_status", "broken connection")], Vec::new()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::CalloutResult;
    use crate::host::callout_result;

    #[test]
    fn failed_callouts_map_to_failures_on_both_hosts() {
        for failure in [CalloutFailure::Timeout, CalloutFailure::ConnectionRefused] {
            let (headers, body) = failed_callout(HostKind::Envoy, failure, true).unwrap();
            let r = callout_result(headers, body.len(), 1024, || body.clone());
            assert!(
                matches!(r, CalloutResult::Failed(ref why) if why.contains("from the proxy")),
                "Envoy's synthesized answer is a callout failure: {r:?}"
            );
            let (headers, _) = failed_callout(HostKind::Kong, failure, true).unwrap();
            let r = callout_result(headers, 0, 1024, Vec::new);
            assert!(
                matches!(r, CalloutResult::Failed(ref why) if !why.is_empty()),
                "{r:?}"
            );
            assert!(failed_callout(HostKind::Kong, failure, false).is_none());
        }
        let r = callout_result(vec![(":status".into(), "200".into())], 5000, 1024, Vec::new);
        assert!(matches!(r, CalloutResult::Failed(ref why) if why.contains("too large")));
        let r = callout_result(vec![], 0, 1024, Vec::new);
        assert_eq!(r, CalloutResult::Failed("no response".into()));
        let r = callout_result(
            vec![(":dispatch_status".into(), "ok".into())],
            0,
            1024,
            Vec::new,
        );
        assert_eq!(
            r,
            CalloutResult::Failed("connection closed before a response".into())
        );
        // AWS's own 503 stays an AWS answer.
        let aws = vec![
            (":status".into(), "503".into()),
            ("x-amzn-RequestId".into(), "r".into()),
        ];
        let body = br#"{"__type":"ServiceUnavailable"}"#.to_vec();
        let r = callout_result(aws, body.len(), 1024, || body.clone());
        assert!(matches!(r, CalloutResult::Response(ref resp) if resp.status == 503));
    }

    #[test]
    fn envoy_cas_semantics() {
        let mut s = FakeStore::new(HostKind::Envoy);
        s.set("k", b"a", None).unwrap();
        s.set("k", b"b", None).unwrap();
        let (_, cas) = s.get("k");
        s.set("k", b"c", cas).unwrap();
        assert_eq!(s.set("k", b"d", cas), Err(StoreError::CasMismatch));
        s.set("new", b"x", Some(42)).unwrap();
    }

    #[test]
    fn kong_cas_semantics() {
        let mut s = FakeStore::new(HostKind::Kong);
        s.set("k", b"a", None).unwrap();
        assert_eq!(s.set("k", b"b", None), Err(StoreError::CasMismatch));
        let (_, cas) = s.get("k");
        s.set("k", b"c", cas).unwrap();
        assert_eq!(s.set("k", b"d", cas), Err(StoreError::CasMismatch));
        assert_eq!(s.set("new", b"x", Some(42)), Err(StoreError::CasMismatch));
    }
}
