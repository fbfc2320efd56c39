//! The dashboard (feature `admin`): three static files, embedded, served
//! by [`admin::router`](super::admin::router) at `/ui` without the admin
//! key. The page holds no data: it asks for an admin key, keeps it in the
//! tab's `sessionStorage`, and reads and changes the gateway through the
//! admin API with it, like any other client.
//!
//! Every answer here carries a strict `Content-Security-Policy` (only this
//! origin's script, style and fetches; no inline code, no frames, no
//! forms), `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//! no-referrer` and `Cache-Control: no-store`. The script builds the page
//! with `textContent` and `createElement`, never from HTML strings, so a
//! route or target name cannot inject markup.
//!
//! The page loads `/ui/app.js` and `/ui/app.css` by absolute path: serve
//! the admin router at the root of its listener, not nested under a
//! prefix.

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// What the page may load and do: its own script, style and admin API;
/// images from this origin or `data:` URLs (the charts are inline SVG
/// drawn by the script); no inline code, no `<base>`, no form posts, no
/// framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// `GET /ui` (and `/ui/`), `/ui/app.js`, `/ui/app.css`.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (REFERRER_POLICY, "no-referrer"),
            (CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script's p99 reads the split's latency histogram with the
    /// bucket bounds of `crate::metrics`: the two lists must agree.
    #[test]
    fn script_knows_the_histogram_buckets() {
        let ms: Vec<String> = crate::metrics::BUCKETS_MICROS
            .iter()
            .map(|&us| (us as f64 / 1000.0).to_string())
            .collect();
        let line = format!("const BUCKETS_MS = [{}];", ms.join(", "));
        assert!(APP_JS.contains(&line), "app.js lacks `{line}`");
    }

    /// The CSP forbids inline code: the page must not need any.
    #[test]
    fn page_has_no_inline_code() {
        let html = INDEX_HTML.to_ascii_lowercase();
        assert!(!html.contains("<style"));
        assert!(!html.contains("style="));
        let handler = html.split(" on").skip(1).any(|rest| {
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            rest[name..].trim_start().starts_with('=')
        });
        assert!(!handler, "an event-handler attribute");
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML"));
        assert!(!APP_JS.contains("eval("));
    }
}
