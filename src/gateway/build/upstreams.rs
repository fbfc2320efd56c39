//! What an upstream reads besides its own section: the discovery source
//! that feeds its endpoints, and the TLS files whose contents decide
//! whether a reload rebuilds it.

use std::time::Duration;

use super::Problems;
use crate::gateway::config::UpstreamConfig;

/// The discovery source `[upstreams.NAME] discovery` names, and how
/// often to ask it; `None` (with the problems noted) when it cannot be
/// followed.
pub(super) fn discovery_source(
    name: &str,
    uc: &UpstreamConfig,
    dc: &crate::gateway::config::DiscoveryConfig,
    problems: &mut Problems,
) -> Option<(Box<dyn crate::discovery::Source>, crate::discovery::Refresh)> {
    use crate::discovery::{FileSource, Refresh, Source};
    let at = format!("upstreams.{name}.discovery");
    let before = problems.len();
    if !uc.endpoints.is_empty() {
        problems.push(&at, "cannot be given with `endpoints`");
    }
    let given = [dc.dns.is_some(), dc.srv.is_some(), dc.file.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        problems.push(&at, "give exactly one of `dns`, `srv` and `file`");
    }
    if tokio::runtime::Handle::try_current().is_err() {
        problems.push(&at, "build the gateway inside a Tokio runtime");
    }
    let min = Duration::from_millis(dc.refresh_min_ms.unwrap_or(1000));
    let max = Duration::from_millis(dc.refresh_max_ms.unwrap_or(30_000));
    if min.is_zero() {
        problems.push(format!("{at}.refresh_min_ms"), "must be above 0");
    }
    if max < min {
        problems.push(
            format!("{at}.refresh_max_ms"),
            "must be at least refresh_min_ms",
        );
    }
    if dc.remove_after == Some(0) {
        problems.push(format!("{at}.remove_after"), "must be above 0");
    }
    let mut refresh = Refresh::default()
        .min(min)
        .max(max)
        .max_stale(match dc.max_stale_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => Some(Duration::from_secs(3600)),
        });
    if let Some(n) = dc.remove_after {
        refresh = refresh.remove_after(n);
    }
    let source: Option<Box<dyn Source>> = if let Some(path) = &dc.file {
        Some(Box::new(FileSource::new(path)))
    } else if dc.dns.is_some() || dc.srv.is_some() {
        dns_source(&at, uc, dc, problems)
    } else {
        None
    };
    (problems.len() == before).then_some(())?;
    source.map(|s| (s, refresh))
}

/// `discovery.dns` or `discovery.srv` (feature `dns`).
#[cfg(feature = "dns")]
fn dns_source(
    at: &str,
    uc: &UpstreamConfig,
    dc: &crate::gateway::config::DiscoveryConfig,
    problems: &mut Problems,
) -> Option<Box<dyn crate::discovery::Source>> {
    use crate::discovery::{DnsSource, ResolverConfig};
    let resolver = match &dc.nameserver {
        None => ResolverConfig::system(),
        Some(ns) => match ns.parse::<std::net::SocketAddr>() {
            Ok(addr) => ResolverConfig::nameserver(addr),
            Err(_) => {
                problems.push(
                    format!("{at}.nameserver"),
                    format!("`{ns}` is not an ip:port"),
                );
                return None;
            }
        },
    };
    let source = if let Some(name) = &dc.dns {
        let port = uc.url.parse::<http::Uri>().ok().and_then(|u| {
            u.port_u16().or_else(|| {
                u.scheme().map(|s| {
                    if *s == http::uri::Scheme::HTTPS {
                        443
                    } else {
                        80
                    }
                })
            })
        });
        // An unparsable url is reported as the url's problem.
        let port = port?;
        DnsSource::a(name.clone(), port)
    } else {
        DnsSource::srv(dc.srv.clone().unwrap_or_default())
    };
    Some(Box::new(source.with_resolver(resolver)))
}

#[cfg(not(feature = "dns"))]
fn dns_source(
    at: &str,
    _uc: &UpstreamConfig,
    _dc: &crate::gateway::config::DiscoveryConfig,
    problems: &mut Problems,
) -> Option<Box<dyn crate::discovery::Source>> {
    problems.push(at, "`dns` and `srv` need switchyard's `dns` feature");
    None
}

/// A SHA-256 over the contents of the TLS files `uc` names (`None` when it
/// names none), so that a reload notices a renewed certificate behind an
/// unchanged path. An unreadable file counts as empty here; building the
/// upstream reports it.
pub(super) fn tls_files_digest(uc: &UpstreamConfig) -> Option<[u8; 32]> {
    use sha2::Digest;
    let files = [&uc.ca_file, &uc.client_cert_file, &uc.client_key_file];
    if files.iter().all(|f| f.is_none()) {
        return None;
    }
    let mut hash = sha2::Sha256::new();
    for file in files {
        let bytes = file
            .as_deref()
            .and_then(|path| std::fs::read(path).ok())
            .unwrap_or_default();
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Some(hash.finalize().into())
}

/// `client_cert_file` and `client_key_file` of the section at `at`: both,
/// or neither; one without the other is a problem.
pub(in crate::gateway) fn client_files<'a>(
    cert: &'a Option<String>,
    key: &'a Option<String>,
    at: &str,
    problems: &mut Problems,
) -> Option<(&'a String, &'a String)> {
    match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(
                format!("{at}.client_key_file"),
                "`client_cert_file` needs `client_key_file`",
            );
            None
        }
        (None, Some(_)) => {
            problems.push(
                format!("{at}.client_cert_file"),
                "`client_key_file` needs `client_cert_file`",
            );
            None
        }
    }
}
