//! What outside text must look like before it goes into a request or a
//! signature: tokens, header values, STS session names, credentials.

/// Usable as a header value and in a form body: printable ASCII, no spaces.
pub(crate) fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A header value: printable ASCII or spaces, not empty.
pub(crate) fn valid_header_value(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// STS RoleSessionName: 2-64 characters of `[\w+=,.@-]` (web identity's
/// `AWS_ROLE_SESSION_NAME`, AssumeRole's, a vault's `role_session_name`).
pub fn valid_session_name(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

/// Printable ASCII key id, secret and token (what SigV4 can use). Fixed texts.
pub(crate) fn check_credentials(
    access_key_id: &str,
    secret_access_key: &str,
    session_token: Option<&str>,
) -> Result<(), String> {
    if !valid_token(access_key_id) || access_key_id.len() > 128 {
        return Err("credentials have an invalid access key id".into());
    }
    if !valid_token(secret_access_key) {
        return Err("credentials have an invalid secret access key".into());
    }
    if session_token.is_some_and(|t| !valid_token(t)) {
        return Err("credentials have an invalid session token".into());
    }
    Ok(())
}
