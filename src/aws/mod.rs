//! AWS wire protocols: SigV4 signing, Secrets Manager and STS requests/responses,
//! and the credential providers.
//!
//! Requests are plain data ([`HttpRequest`]); the host shell turns them into
//! proxy-wasm callouts and hands the answer back as an [`HttpResponse`].

pub mod credentials;
pub mod secrets_manager;
pub mod sigv4;
pub mod sts;

/// An HTTP request to send as a host callout. `authority` is what goes into
/// `:authority` (and so `Host`), and is what SigV4 signs.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`, exactly as sent and signed.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Regular (non-pseudo) headers, lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for HttpRequest {
    // Headers may hold a session token or a signature: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A callout's answer as the host reported it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for HttpResponse {
    // The body may hold a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl HttpResponse {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
