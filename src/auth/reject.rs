//! The 400, 401 and 403 answers of the authentication layers, with
//! `WWW-Authenticate` as RFC 6750 describes it.

use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, StatusCode};

use crate::future::Rejection;
use crate::problem::Problem;

/// `Bearer realm="…"` plus an optional error, precomputed per layer.
#[derive(Clone, Debug)]
pub(crate) struct Challenge {
    realm: String,
}

impl Challenge {
    pub(crate) fn new(realm: &str) -> Self {
        // A quoted-string: keep it to visible ASCII without quotes or
        // backslashes so the header is always valid.
        let realm = realm
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
            .collect();
        Self { realm }
    }

    fn header(&self, error: Option<&str>, scope: Option<&str>) -> HeaderValue {
        let mut v = format!("Bearer realm=\"{}\"", self.realm);
        if let Some(error) = error {
            v.push_str(&format!(", error=\"{error}\""));
        }
        if let Some(scope) = scope {
            // A quoted-string: escape what would end or break it.
            let scope = scope.replace('\\', "\\\\").replace('"', "\\\"");
            v.push_str(&format!(", scope=\"{scope}\""));
        }
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// No credentials where some are required.
    pub(crate) fn missing(&self) -> Rejection {
        Rejection::new(
            Problem::new(StatusCode::UNAUTHORIZED).detail("this resource requires credentials"),
        )
        .header(WWW_AUTHENTICATE, self.header(None, None))
    }

    /// Credentials that are not valid. The answer is the same whether the
    /// key is unknown, disabled, expired or revoked, or the token's
    /// signature, expiry, issuer or audience is wrong.
    pub(crate) fn invalid(&self) -> Rejection {
        Rejection::new(
            Problem::new(StatusCode::UNAUTHORIZED)
                .detail("the credentials presented are not valid"),
        )
        .header(WWW_AUTHENTICATE, self.header(Some("invalid_token"), None))
    }

    /// Credentials that could not even be read.
    pub(crate) fn malformed(&self, why: &str) -> Rejection {
        Rejection::new(Problem::new(StatusCode::BAD_REQUEST).detail(why))
            .header(WWW_AUTHENTICATE, self.header(Some("invalid_request"), None))
    }

    /// A valid caller without the scopes the route needs.
    /// The 403 for a caller without the scopes: `all` of `missing`, or
    /// any one of them.
    pub(crate) fn insufficient(&self, required: &str, missing: &[&str], all: bool) -> Rejection {
        let detail = match (all, missing) {
            (true, _) | (false, [_]) => format!("missing scope: {}", missing.join(", ")),
            (false, _) => format!("needs one of the scopes: {}", missing.join(", ")),
        };
        Rejection::new(
            Problem::new(StatusCode::FORBIDDEN)
                .detail(detail)
                .with("missing_scopes", missing.to_vec()),
        )
        .header(
            WWW_AUTHENTICATE,
            self.header(Some("insufficient_scope"), Some(required)),
        )
    }
}
