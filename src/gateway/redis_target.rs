//! `[redis]`: where the gateway's Redis is (one server, a Redis Cluster,
//! or the primary Redis Sentinel names), checked and made into a
//! [`RedisTarget`].

#[cfg(feature = "redis")]
use std::time::Duration;

use super::build::Problems;
#[cfg(feature = "redis")]
use super::build::client_files;
use super::config::RedisConfig;
#[cfg(feature = "redis")]
use crate::redis_conn::RedisTarget;

/// Which of `url`, `cluster` and `sentinel` the section gives, with the
/// URLs to connect to, each with where it is in the config. `None` (and a
/// problem) unless exactly one is given.
fn addresses<'a>(rc: &'a RedisConfig, problems: &mut Problems) -> Option<Vec<(String, &'a str)>> {
    let given = [
        !rc.url.is_empty(),
        !rc.cluster.is_empty(),
        rc.sentinel.is_some(),
    ]
    .into_iter()
    .filter(|g| *g)
    .count();
    match given {
        0 => {
            problems.push("redis", "give `url`, `cluster` or `sentinel`");
            return None;
        }
        1 => {}
        _ => {
            problems.push(
                "redis",
                "give one of `url`, `cluster` and `sentinel`, not several",
            );
            return None;
        }
    }
    if !rc.url.is_empty() {
        return Some(vec![("redis.url".to_owned(), rc.url.as_str())]);
    }
    if !rc.cluster.is_empty() {
        return Some(
            rc.cluster
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("redis.cluster[{i}]"), u.as_str()))
                .collect(),
        );
    }
    let s = rc.sentinel.as_ref()?;
    let mut ok = true;
    if s.master.is_empty() {
        problems.push(
            "redis.sentinel.master",
            "names the service: the name in the sentinels' `sentinel monitor`",
        );
        ok = false;
    }
    if s.urls.is_empty() {
        problems.push("redis.sentinel.urls", "give at least one sentinel");
        ok = false;
    }
    if s.db < 0 {
        problems.push("redis.sentinel.db", "must not be negative");
        ok = false;
    }
    ok.then(|| {
        s.urls
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("redis.sentinel.urls[{i}]"), u.as_str()))
            .collect()
    })
}

/// The target `[redis]` names, every mistake a located problem. For
/// `rediss://` (feature `tls`), `ca_file` and the client certificate are
/// read and checked here, so that a bad file is a problem of this config
/// rather than a connection that never comes up; and rustls's ring
/// provider is installed as the process default unless one is installed
/// already, because the `redis` crate builds its TLS settings from that
/// default (see [`crate::ratelimit::redis`]).
#[cfg(feature = "redis")]
pub(super) fn target(rc: &RedisConfig, problems: &mut Problems) -> Option<RedisTarget> {
    use redis::IntoConnectionInfo;

    let before = problems.len();
    let addresses = addresses(rc, problems)?;
    let client_files = client_files(&rc.client_cert_file, &rc.client_key_file, "redis", problems);
    let mut infos = Vec::new();
    let mut tls = Vec::new();
    for (at, url) in &addresses {
        match url.into_connection_info() {
            Ok(info) => {
                if let redis::ConnectionAddr::TcpTls { insecure, .. } = info.addr() {
                    if *insecure {
                        problems.push(
                            at.as_str(),
                            "`#insecure` (no certificate checks) is not supported",
                        );
                    }
                    tls.push(true);
                } else {
                    tls.push(false);
                }
                infos.push(info);
            }
            Err(e) => {
                let scheme = url.split_once("://").map_or("", |(s, _)| s);
                let tls_scheme =
                    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys");
                if tls_scheme && !cfg!(feature = "tls") {
                    problems.push(
                        at.as_str(),
                        format!("`{scheme}://` needs switchyard's `tls` feature"),
                    );
                } else {
                    problems.push(at.as_str(), format!("invalid Redis URL: {e}"));
                }
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    let any_tls = tls.iter().any(|t| *t);
    if any_tls && !tls.iter().all(|t| *t) {
        problems.push(
            "redis",
            "mixes `redis://` and `rediss://` addresses: use one",
        );
        return None;
    }
    let certs = certificates(rc, any_tls, client_files, problems);
    if problems.len() > before {
        return None;
    }
    let made = if !rc.url.is_empty() {
        let info = infos.pop()?;
        let client = match certs.flatten() {
            #[cfg(feature = "tls")]
            Some(certs) => redis::Client::build_with_tls(info, certs),
            _ => redis::Client::open(info),
        };
        client.map(RedisTarget::single)
    } else if !rc.cluster.is_empty() {
        RedisTarget::cluster(infos).and_then(|t| with_certificates(t, certs.flatten()))
    } else {
        let s = rc.sentinel.as_ref()?;
        RedisTarget::sentinel(s.master.clone(), infos)
            .map(|t| t.sentinel_auth(s.username.clone(), s.password.clone(), s.db))
            .and_then(|t| with_certificates(t, certs.flatten()))
    };
    match made.and_then(|t| t.timeout(Duration::from_millis(rc.timeout_ms.unwrap_or(100)))) {
        Ok(target) => Some(target),
        Err(e) => {
            problems.push("redis", e);
            None
        }
    }
}

#[cfg(all(feature = "redis", feature = "tls"))]
fn with_certificates(
    target: RedisTarget,
    certs: Option<redis::TlsCertificates>,
) -> redis::RedisResult<RedisTarget> {
    match certs {
        Some(certs) => target.certificates(certs),
        None => Ok(target),
    }
}

#[cfg(all(feature = "redis", not(feature = "tls")))]
fn with_certificates(target: RedisTarget, certs: Option<Never>) -> redis::RedisResult<RedisTarget> {
    let _ = certs;
    Ok(target)
}

/// What has no value: the certificates of a build without `tls`.
#[cfg(all(feature = "redis", not(feature = "tls")))]
enum Never {}

/// The certificates `ca_file` and the client certificate give, for TLS
/// addresses (`Some(None)`: TLS with the system's roots and no client
/// certificate; `None`: a problem, or no TLS).
#[cfg(all(feature = "redis", feature = "tls"))]
fn certificates(
    rc: &RedisConfig,
    tls: bool,
    client_files: Option<(&String, &String)>,
    problems: &mut Problems,
) -> Option<Option<redis::TlsCertificates>> {
    if !tls {
        if rc.ca_file.is_some() {
            problems.push("redis.ca_file", "only `rediss://` URLs use a CA file");
        }
        if client_files.is_some() {
            problems.push(
                "redis.client_cert_file",
                "only `rediss://` URLs present a client certificate",
            );
        }
        return None;
    }
    let before = problems.len();
    let mut read = |at: &str, path: &str| {
        std::fs::read(path)
            .map_err(|e| problems.push(at, format!("cannot read `{path}`: {e}")))
            .ok()
    };
    let root_cert = rc
        .ca_file
        .as_deref()
        .and_then(|path| read("redis.ca_file", path));
    let client_pems = client_files.and_then(|(cert, key)| {
        let cert = read("redis.client_cert_file", cert);
        let key = read("redis.client_key_file", key);
        cert.zip(key)
    });
    // The `redis` crate reads these when it connects; check them now, as
    // the upstreams' are.
    if let Some(pem) = &root_cert
        && let Err(e) = crate::tls::roots_from_pem(pem)
    {
        problems.push("redis.ca_file", e);
    }
    if let Some((cert, key)) = &client_pems {
        let roots = std::sync::Arc::new(rustls::RootCertStore::empty());
        if let Err(e) = crate::tls::client_config(roots, Some((cert, key))) {
            problems.push("redis.client_cert_file", e);
        }
    }
    if problems.len() > before {
        return None;
    }
    // `redis` builds its rustls settings with `ClientConfig::builder()`,
    // which takes the process default provider, else the one rustls's
    // features name; with another provider in the build as well, it would
    // panic. Ring is the provider of switchyard's `tls` feature; a default
    // the application installed first is kept.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: then there is a
        // default.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if root_cert.is_none() && client_pems.is_none() {
        return Some(None);
    }
    Some(Some(redis::TlsCertificates {
        client_tls: client_pems.map(|(client_cert, client_key)| redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        root_cert,
    }))
}

/// Without `tls`: a `rediss://` address never parses, and the files are
/// refused.
#[cfg(all(feature = "redis", not(feature = "tls")))]
fn certificates(
    rc: &RedisConfig,
    _tls: bool,
    client_files: Option<(&String, &String)>,
    problems: &mut Problems,
) -> Option<Option<Never>> {
    if let Some(path) = &rc.ca_file {
        problems.push(
            "redis.ca_file",
            format!("`{path}`: needs switchyard's `tls` feature"),
        );
    }
    if let Some((cert, _)) = client_files {
        problems.push(
            "redis.client_cert_file",
            format!("`{cert}`: needs switchyard's `tls` feature"),
        );
    }
    None
}

/// Without `redis`: the section's addresses are checked, and refused.
#[cfg(not(feature = "redis"))]
pub(super) fn refuse(rc: &RedisConfig, problems: &mut Problems) {
    if addresses(rc, problems).is_some() {
        problems.push("redis", "needs switchyard's `redis` feature");
    }
}
