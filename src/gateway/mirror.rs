//! A route's `mirror`: a share of its requests copied to another
//! upstream, the answers compared (see [`crate::mirror`]).

use std::collections::HashMap;
use std::time::Duration;

use http::Method;

use super::build::{Change, Changes, Problems};
use super::config::{MirrorConfig, UpstreamConfig};
use crate::mirror::MirrorLayer;
use crate::proxy::Upstream;

/// A route's mirror, with the configuration it was built from.
#[derive(Clone)]
pub(crate) struct BuiltMirror {
    pub(crate) config: MirrorConfig,
    pub(crate) layer: MirrorLayer<Upstream>,
}

/// Differing answers kept by default.
const SAMPLES: usize = 10;

/// The mirror of `mc` at `at`: `old`'s (its counters and samples, and its
/// live share unless the configuration changed it) when only `percent`
/// changed and its upstream is the same; a new one otherwise.
pub(crate) fn build(
    mc: &MirrorConfig,
    at: &str,
    old: Option<&BuiltMirror>,
    upstreams: &HashMap<String, (UpstreamConfig, Upstream)>,
    rebuilt: &[String],
    problems: &mut Problems,
    changes: &mut Changes,
) -> Option<BuiltMirror> {
    let before = problems.len();
    let Some((_, upstream)) = upstreams.get(&mc.upstream) else {
        problems.push(
            format!("{at}.upstream"),
            format!("unknown upstream \"{}\"", mc.upstream),
        );
        return None;
    };
    if !mc.percent.is_finite() || !(0.0..=100.0).contains(&mc.percent) {
        problems.push(format!("{at}.percent"), "a percentage, 0 to 100");
    }
    let methods = match &mc.methods {
        None => None,
        Some(list) if list.iter().any(|m| m == "*") => Some(None),
        Some(list) => {
            let mut methods = Vec::new();
            for (i, m) in list.iter().enumerate() {
                match Method::from_bytes(m.as_bytes()) {
                    Ok(m) => methods.push(m),
                    Err(_) => problems.push(
                        format!("{at}.methods[{i}]"),
                        format!("`{m}` is not a method"),
                    ),
                }
            }
            Some(Some(methods))
        }
    };
    for (name, v) in [
        ("body_limit", mc.body_limit),
        ("max_concurrent", mc.max_concurrent),
    ] {
        if v == Some(0) {
            problems.push(format!("{at}.{name}"), "must be above 0");
        }
    }
    if mc.shadow_timeout_ms == Some(0) {
        problems.push(format!("{at}.shadow_timeout_ms"), "must be above 0");
    }
    if problems.len() > before {
        return None;
    }
    if let Some(old) = old {
        let mut same = old.config.clone();
        same.percent = mc.percent;
        if same == *mc && !rebuilt.contains(&mc.upstream) {
            if old.config.percent != mc.percent {
                changes.push(Change::MirrorPercent(old.layer.handle(), mc.percent));
            }
            return Some(BuiltMirror {
                config: mc.clone(),
                layer: old.layer.clone(),
            });
        }
    }
    let mut builder = MirrorLayer::builder(upstream.clone())
        .percent(mc.percent)
        .compare_json(mc.compare_json)
        .keep_samples(mc.samples.unwrap_or(SAMPLES));
    match methods {
        None => {}
        Some(None) => builder = builder.all_methods(),
        Some(Some(m)) => builder = builder.methods(m),
    }
    if let Some(n) = mc.body_limit {
        builder = builder.body_limit(n);
    }
    if let Some(n) = mc.max_concurrent {
        builder = builder.max_concurrent(n);
    }
    if let Some(ms) = mc.shadow_timeout_ms {
        builder = builder.shadow_timeout(Duration::from_millis(ms));
    }
    Some(BuiltMirror {
        config: mc.clone(),
        layer: builder.build(),
    })
}
