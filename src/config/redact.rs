//! Values that may carry a secret, and how they are shown.
//!
//! A connection URL is the classic leak: `postgres://drctl:hunter2@db/drctl`
//! ends up in a log line, an error, a drill report. [`SecretUrl`] holds such a
//! URL and has no way to print it except redacted; code that needs the real
//! value asks for it by name ([`SecretUrl::expose`]), which is easy to review.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// What replaces a secret in anything drctl prints.
pub const REDACTED: &str = "****";

/// Query parameters that carry a password in libpq-style URLs.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "sslkey"];

/// A URL that may contain a password. Displays, debugs and serialises redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The real value, for handing to a client library. Never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value with passwords replaced by `****`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    pub(super) fn validate_postgres(&self, key: &str) -> Result<(), ConfigError> {
        // The parse error may quote the input, so it is not passed on.
        let url = url::Url::parse(&self.0).map_err(|_| {
            ConfigError::new(
                key,
                "not a valid URL (value not shown: it may contain a password); expected \
                 postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
            )
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::new(
                key,
                &format!(
                    "scheme `{}` is not postgres; expected postgres://USER@HOST[:PORT]/DATABASE",
                    url.scheme()
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor of our own, so a type error never quotes the value.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SecretUrl;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretUrl, E> {
                Ok(SecretUrl::new(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// `url` with any password (userinfo or libpq query parameter) replaced by
/// `****`. A value that does not parse as a URL is not shown at all.
pub fn redact_url(raw: &str) -> String {
    // Without a host, the userinfo is not where a URL parser finds it
    // (`postgres:user:pw@db`), so the value cannot be redacted reliably.
    let Some(mut url) = url::Url::parse(raw).ok().filter(|u| u.host().is_some()) else {
        return "<not a URL; value not shown>".to_string();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some(REDACTED));
    }
    if url
        .query_pairs()
        .any(|(k, _)| SECRET_PARAMS.contains(&k.as_ref()))
    {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if SECRET_PARAMS.contains(&k.as_ref()) {
                    REDACTED.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_everywhere() {
        let u =
            SecretUrl::new("postgres://drctl:hunter2@db:5432/drctl?sslmode=require&password=x9");
        for shown in [
            u.to_string(),
            format!("{u:?}"),
            serde_json::to_string(&u).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("x9"), "{shown}");
            assert!(shown.contains("sslmode=require"), "{shown}");
        }
        assert!(u.expose().contains("hunter2"));
    }

    #[test]
    fn url_without_password_is_shown_as_is() {
        assert_eq!(
            redact_url("postgres://drctl@db:5432/drctl"),
            "postgres://drctl@db:5432/drctl"
        );
    }

    #[test]
    fn unparseable_value_is_not_echoed() {
        assert!(!redact_url("drctl:hunter2@@@").contains("hunter2"));
    }
}
