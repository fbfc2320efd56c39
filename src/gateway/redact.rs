//! Secrets out of a configuration that leaves the process (`GET /config`),
//! and back in when the same document comes back (`PUT /config`).
//!
//! What counts as a secret: plaintext API and admin keys (given back as
//! their `sha256:` digests, which authenticate the same callers), the
//! password of any URL (`redis://user:password@host`, upstream URLs), and
//! the values of credential headers that transform rules set on requests
//! (`authorization`, `x-api-key`, ...), given back as [`REDACTED`].

use super::config::{ApiKeyConfig, GatewayConfig};
use crate::transform::Rules;

/// What a secret reads as in a redacted configuration. A configuration
/// sent back with it in the same place keeps the secret in force there.
pub const REDACTED: &str = "<redacted>";

/// Request headers whose values are credentials.
const CREDENTIAL_HEADERS: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "x-auth-token",
    "x-admin-key",
];

fn is_credential(header: &str) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(header))
}

impl GatewayConfig {
    /// This configuration with its secrets taken out, fit to show (the
    /// admin API's `GET /config`): plaintext keys become their digests,
    /// URL passwords and credential header values become [`REDACTED`].
    /// [`restore_redacted`](Self::restore_redacted) puts them back.
    pub fn redacted(&self) -> GatewayConfig {
        let mut config = self.clone();
        for key in config.api_keys.iter_mut().chain(&mut config.admin.keys) {
            digest_key(key);
        }
        if let Some(redis) = &mut config.redis {
            redis.url = redact_url(&redis.url);
        }
        for upstream in config.upstreams.values_mut() {
            upstream.url = redact_url(&upstream.url);
            for e in &mut upstream.endpoints {
                *e = redact_url(e);
            }
        }
        for route in &mut config.routes {
            if let Some(rules) = &mut route.transform {
                for_credentials(rules, |value, _| *value = REDACTED.to_owned());
            }
        }
        if let Some(uri) = config.jwt.as_mut().and_then(|j| j.jwks_uri.as_mut()) {
            *uri = redact_url(uri);
        }
        // A webhook's headers are there to authenticate to its receiver,
        // and its URL may carry a password.
        for hook in &mut config.rollouts.webhooks {
            hook.url = redact_url(&hook.url);
            for value in hook.headers.values_mut() {
                *value = REDACTED.to_owned();
            }
        }
        config
    }

    /// Puts back the secrets that [`redacted`](Self::redacted) took out,
    /// from `current` (the configuration in force): a URL equal to the
    /// redacted form of the one in the same place takes that one back, and
    /// a credential header value reading [`REDACTED`] takes the value the
    /// same route's same rule has now. A [`REDACTED`] with nothing in its
    /// place stays as it is (and so is sent as written).
    pub fn restore_redacted(&mut self, current: &GatewayConfig) {
        if let (Some(redis), Some(now)) = (&mut self.redis, &current.redis)
            && redis.url == redact_url(&now.url)
        {
            redis.url.clone_from(&now.url);
        }
        for (name, upstream) in &mut self.upstreams {
            let Some(now) = current.upstreams.get(name) else {
                continue;
            };
            if upstream.url == redact_url(&now.url) {
                upstream.url.clone_from(&now.url);
            }
            for e in &mut upstream.endpoints {
                if let Some(real) = now.endpoints.iter().find(|n| *e == redact_url(n)) {
                    e.clone_from(real);
                }
            }
        }
        if let (Some(uri), Some(now)) = (
            self.jwt.as_mut().and_then(|j| j.jwks_uri.as_mut()),
            current.jwt.as_ref().and_then(|j| j.jwks_uri.as_ref()),
        ) && *uri == redact_url(now)
        {
            uri.clone_from(now);
        }
        for hook in &mut self.rollouts.webhooks {
            let Some(now) = current
                .rollouts
                .webhooks
                .iter()
                .find(|n| hook.url == n.url || hook.url == redact_url(&n.url))
            else {
                continue;
            };
            hook.url.clone_from(&now.url);
            for (name, value) in &mut hook.headers {
                if value == REDACTED
                    && let Some(real) = now.headers.get(name)
                {
                    value.clone_from(real);
                }
            }
        }
        for route in &mut self.routes {
            let Some(now) = current
                .routes
                .iter()
                .find(|r| r.name == route.name)
                .and_then(|r| r.transform.as_ref())
            else {
                continue;
            };
            let Some(rules) = &mut route.transform else {
                continue;
            };
            let mut secrets = Vec::new();
            let mut now = now.clone();
            for_credentials(&mut now, |value, place| {
                secrets.push((place, value.clone()))
            });
            for_credentials(rules, |value, place| {
                if value == REDACTED
                    && let Some((_, real)) = secrets.iter().find(|(p, _)| *p == place)
                {
                    value.clone_from(real);
                }
            });
        }
    }
}

/// A plaintext key as its digest.
fn digest_key(key: &mut ApiKeyConfig) {
    if let Some(plain) = key.key.take() {
        key.digest = Some(crate::auth::digest(&plain));
    }
}

/// `url` without the password of its user information
/// (`redis://:secret@host` reads `redis://:<redacted>@host`).
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}@{host}{tail}"),
        // A user name alone is often the secret itself (a token as user).
        None => format!("{scheme}://{REDACTED}@{host}{tail}"),
    }
}

/// Calls `f` on every credential header value the rules set on requests,
/// with its place: (rule set, list, index).
fn for_credentials(rules: &mut Rules, mut f: impl FnMut(&mut String, (usize, u8, usize))) {
    for (i, set) in rules.sets.iter_mut().enumerate() {
        let h = &mut set.request.headers;
        for (list, values) in [(0u8, &mut h.replace), (1, &mut h.add), (2, &mut h.append)] {
            for (j, nv) in values.iter_mut().enumerate() {
                if is_credential(&nv.name) {
                    f(&mut nv.value, (i, list, j));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_go_and_come_back() {
        for (url, shown) in [
            ("redis://:hunter2@r:6379/0", "redis://:<redacted>@r:6379/0"),
            ("redis://u:p@r/", "redis://u:<redacted>@r/"),
            ("https://token@api.x/v1", "https://<redacted>@api.x/v1"),
            ("http://h:1/a@b", "http://h:1/a@b"),
            ("redis://r:6379", "redis://r:6379"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_redacted_config_has_no_secret_and_restores_to_the_original() {
        let config = GatewayConfig::from_toml(
            r#"
            [upstreams.ai]
            url = "https://svc:pw@api.example/v1"
            [[api_keys]]
            key = "plain-secret"
            id = "a"
            [admin]
            keys = [{ key = "admin-secret", id = "root" }]
            [redis]
            url = "redis://:redis-secret@127.0.0.1:6379/"
            [[routes]]
            name = "r"
            split.targets = [{ name = "a", upstream = "ai", weight = 1 }]
            [[routes.transform.sets]]
            request.headers.replace = [{ name = "Authorization", value = "Bearer sk-live" }]
            request.headers.add = [{ name = "x-team", value = "blue" }]
            "#,
        )
        .unwrap();
        let shown = config.redacted();
        let text = serde_json::to_string(&shown).unwrap();
        for secret in [
            "plain-secret",
            "admin-secret",
            "redis-secret",
            "sk-live",
            ":pw@",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("x-team") && text.contains("blue"), "{text}");
        assert_eq!(
            shown.api_keys[0].digest.as_deref(),
            Some(crate::auth::digest("plain-secret").as_str())
        );

        let mut back: GatewayConfig = serde_json::from_str(&text).unwrap();
        back.restore_redacted(&config);
        assert_eq!(back.redis, config.redis);
        assert_eq!(back.upstreams, config.upstreams);
        assert_eq!(back.routes, config.routes);
        // Keys come back as digests, which admit the same callers.
        assert_eq!(back.api_keys[0].key, None);
    }
}
