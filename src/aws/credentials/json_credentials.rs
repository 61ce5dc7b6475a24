//! The JSON credentials document the container endpoint and IMDS answer.

use serde_json::{Map, Value};

use super::{check_credentials, parse_timestamp, TimedCredentials, MAX_BODY_LEN};
use crate::aws::sigv4::Credentials;

/// The JSON credentials document of the container endpoint and IMDS:
/// `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration` (required), and,
/// with `require_code` (IMDS), `Code` = `Success`. The body holds
/// credentials: errors are fixed texts.
pub fn parse_json_credentials(body: &[u8], require_code: bool) -> Result<TimedCredentials, String> {
    if body.len() > MAX_BODY_LEN {
        return Err("credentials response is larger than 64 KiB".into());
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err("credentials response is not a JSON object".into());
    };
    if require_code {
        check_code(&fields)?;
    }
    let access_key_id = required_field(&fields, "AccessKeyId")?;
    let secret_access_key = required_field(&fields, "SecretAccessKey")?;
    let session_token = string_field(&fields, "Token")?;
    let expiration = required_field(&fields, "Expiration")?;
    let expires_at = parse_timestamp(&expiration)
        .ok_or("credentials response has an invalid Expiration (expected ISO 8601 UTC)")?;
    check_credentials(&access_key_id, &secret_access_key, session_token.as_deref())?;
    Ok(TimedCredentials {
        credentials: Credentials {
            access_key_id,
            secret_access_key,
            session_token,
        },
        expires_at: Some(expires_at),
    })
}

/// A non-empty string field; `None` if absent, null or empty.
#[inline(never)] // see Config::fields
fn string_field(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match fields.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(_)) => Ok(None),
        Some(_) => Err(format!("credentials response: {name} is not a string")),
    }
}

/// A non-empty string field that must be there.
fn required_field(fields: &Map<String, Value>, name: &str) -> Result<String, String> {
    string_field(fields, name)?.ok_or_else(|| format!("credentials response has no {name}"))
}

/// IMDS's `Code` must be `Success`; another code is shown only if it looks
/// like one (the body holds credentials).
#[inline(never)] // see Config::fields
fn check_code(fields: &Map<String, Value>) -> Result<(), String> {
    match string_field(fields, "Code")? {
        Some(code) if code == "Success" => Ok(()),
        Some(code) if looks_like_code(&code) => Err(format!(
            "credentials response has Code '{code}' (expected Success)"
        )),
        Some(_) => Err("credentials response has an unexpected Code".into()),
        None => Err("credentials response has no Code".into()),
    }
}

/// IMDS codes (`Success`, `AssumeRoleUnauthorizedAccess`): letters, digits, `.`, `_`, `-`.
fn looks_like_code(c: &str) -> bool {
    c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn json_credentials() {
        let c = parse_json_credentials(creds_json(T0).as_bytes(), false).unwrap();
        assert_eq!(c.credentials.access_key_id, AKID);
        assert_eq!(c.credentials.secret_access_key, SECRET);
        assert_eq!(c.credentials.session_token.as_deref(), Some(TOKEN));
        assert_eq!(c.expires_at, Some(T0));
        assert!(parse_json_credentials(creds_json(T0).as_bytes(), true)
            .unwrap_err()
            .contains("no Code"));
        let c = parse_json_credentials(imds_json(T0).as_bytes(), true).unwrap();
        assert_eq!(c.expires_at, Some(T0));

        let failed = imds_json(T0).replace("\"Success\"", "\"Failed\"");
        let e = parse_json_credentials(failed.as_bytes(), true).unwrap_err();
        assert!(e.contains("Code 'Failed'"), "{e}");
        assert_clean(&e);
        let weird = imds_json(T0).replace("\"Success\"", &format!("\"{SECRET} x\""));
        let e = parse_json_credentials(weird.as_bytes(), true).unwrap_err();
        assert_eq!(e, "credentials response has an unexpected Code");

        let cases = [
            ("not json".to_string(), "not a JSON object"),
            ("[1]".to_string(), "not a JSON object"),
            (
                creds_json(T0).replace("\"AccessKeyId\"", "\"X\""),
                "no AccessKeyId",
            ),
            (
                creds_json(T0).replace("\"SecretAccessKey\"", "\"X\""),
                "no SecretAccessKey",
            ),
            (
                creds_json(T0).replace("\"Expiration\"", "\"X\""),
                "no Expiration",
            ),
            (
                creds_json(T0).replace("2024-01-01T00:00:00Z", "tomorrow"),
                "invalid Expiration",
            ),
            (
                format!(r#"{{"AccessKeyId":1,"SecretAccessKey":"{SECRET}"}}"#),
                "AccessKeyId is not a string",
            ),
            (
                creds_json(T0).replace(SECRET, "bad secret"),
                "invalid secret access key",
            ),
        ];
        for (body, want) in cases {
            let e = parse_json_credentials(body.as_bytes(), false).unwrap_err();
            assert!(e.contains(want), "{e} !~ {want}");
            assert_clean(&e);
        }
        let big = format!("{}{}", creds_json(T0), " ".repeat(MAX_BODY_LEN));
        assert!(parse_json_credentials(big.as_bytes(), false)
            .unwrap_err()
            .contains("64 KiB"));
        // Without a Token: long-term keys are fine.
        let no_token = creds_json(T0).replace("\"Token\"", "\"X\"");
        let c = parse_json_credentials(no_token.as_bytes(), false).unwrap();
        assert_eq!(c.credentials.session_token, None);
    }
}
