//! [`DnsSource`]: endpoints listed in DNS, A/AAAA or SRV records, asked
//! again when their TTL runs out.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig as HickoryConfig,
    ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record};
use hickory_resolver::{ResolveError, TokioResolver};

use super::{Snapshot, SnapshotFuture, Source, SourceError};
use crate::proxy::EndpointSpec;

/// How long one query waits for its answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a query is sent before the lookup fails.
const ATTEMPTS: usize = 2;

// === impl ResolverConfig ===

/// The DNS servers a [`DnsSource`] asks.
///
/// Either way, each query waits 2 s for its answer and is sent twice
/// before the lookup fails, and nothing is cached between two answers:
/// [`follow`](super::follow) asks when the last answer's TTL runs out,
/// and each time the servers are asked again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverConfig {
    servers: Servers,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Servers {
    #[default]
    System,
    One(SocketAddr),
}

impl ResolverConfig {
    /// The system's servers, search domains and `ndots`, as
    /// `/etc/resolv.conf` lists them (the default; read by hickory's reader
    /// on the source's first answer; a file that cannot be read fails that
    /// answer and is read again on the next). Names in `/etc/hosts` are
    /// answered from it.
    pub fn system() -> Self {
        Self {
            servers: Servers::System,
        }
    }

    /// The one server at `addr`, over UDP (and TCP when an answer is too
    /// long for UDP, or UDP fails to connect); no search domain, and
    /// `/etc/hosts` is not read.
    pub fn nameserver(addr: SocketAddr) -> Self {
        Self {
            servers: Servers::One(addr),
        }
    }

    /// The resolver this configuration describes.
    fn build(&self) -> Result<TokioResolver, SourceError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = TIMEOUT;
        opts.attempts = ATTEMPTS;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // The follower decides when to ask; the cache is also cleared before
        // each answer, and would only hide the records' changes.
        opts.cache_size = 0;
        opts.negative_max_ttl = Some(Duration::ZERO);
        let config = match &self.servers {
            Servers::One(addr) => {
                opts.use_hosts_file = ResolveHosts::Never;
                HickoryConfig::from_parts(
                    None,
                    Vec::new(),
                    NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
                )
            }
            Servers::System => {
                let (config, system) =
                    hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                        SourceError::new(format!(
                            "reading the system's resolver configuration: {e}"
                        ))
                    })?;
                opts.ndots = system.ndots;
                opts.use_hosts_file = ResolveHosts::Auto;
                config
            }
        };
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = opts;
        Ok(builder.build())
    }
}

// === impl DnsSource ===

/// Endpoints listed in DNS ([`follow`](super::follow) asks again when the
/// answer's TTL runs out, within [`Refresh`](super::Refresh)'s bounds):
///
/// * [`DnsSource::a`]: a name's A and AAAA records, each address an
///   endpoint on the one port given;
/// * [`DnsSource::srv`]: a service's SRV records, each record's target's
///   addresses endpoints on the record's port, with its weight.
///
/// Each endpoint's key is its address, `ip:port` (`[ip]:port` for IPv6).
/// An answer that fails (no such name, no record, no answer in time, the
/// server failing) is an error: the upstream keeps its last endpoints, and
/// the log and the status say why. The TTL of the answer is the least of
/// the TTLs of the records it was made from.
///
/// ```no_run
/// use switchyard::discovery::{self, DnsSource, Refresh};
/// use switchyard::proxy::Upstream;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let green = Upstream::new("http://green.internal:8080")?;
/// let following = discovery::follow(
///     &green,
///     DnsSource::a("green.internal", 8080),
///     Refresh::default(),
/// );
/// # Ok(())
/// # }
/// ```
pub struct DnsSource {
    name: String,
    kind: Kind,
    config: ResolverConfig,
    /// Built on the first answer.
    resolver: Option<TokioResolver>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    A { port: u16 },
    Srv,
}

impl fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSource")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("config", &self.config)
            .field("resolved", &self.resolver.is_some())
            .finish()
    }
}

impl DnsSource {
    /// The A and AAAA records of `name`, each address an endpoint on
    /// `port`, of weight 1. Requests to them carry `Host: name:port` (the
    /// service's name, without a trailing dot). A name without a trailing
    /// dot is looked up in the search domains too (`ndots` rules).
    pub fn a(name: impl Into<String>, port: u16) -> Self {
        Self::new(name.into(), Kind::A { port })
    }

    /// The SRV records of `name` (`_http._tcp.green.internal`), each
    /// record's target's addresses endpoints on the record's port.
    ///
    /// Only the records of the lowest priority value in the answer are
    /// used (as RFC 2782 has it, those of higher values are backups; they
    /// are not used here even when the lowest priority's targets fail to
    /// resolve). Each endpoint has its record's weight, a weight of 0
    /// counting as 1 (so that it takes a small share, rather than none).
    /// The targets' addresses are those the server added to its answer,
    /// or else looked up (A and AAAA); a target that does not resolve is
    /// left out, and the answer fails when none does. Requests carry
    /// `Host: target:port`. Two records leading to one address and port
    /// make one endpoint, of their weights added up.
    pub fn srv(name: impl Into<String>) -> Self {
        Self::new(name.into(), Kind::Srv)
    }

    fn new(name: String, kind: Kind) -> Self {
        Self {
            name,
            kind,
            config: ResolverConfig::default(),
            resolver: None,
        }
    }

    /// Asks the servers `config` names (by default,
    /// [`ResolverConfig::system`]).
    pub fn with_resolver(mut self, config: ResolverConfig) -> Self {
        self.config = config;
        self.resolver = None;
        self
    }

    /// The resolver, built if it was not yet.
    async fn resolver(&mut self) -> Result<&TokioResolver, SourceError> {
        if self.resolver.is_none() {
            let config = self.config.clone();
            // The system configuration, and `/etc/hosts`, are files to read.
            let resolver = tokio::task::spawn_blocking(move || config.build())
                .await
                .map_err(|e| SourceError::new(format!("building the resolver: {e}")))??;
            self.resolver = Some(resolver);
        }
        let resolver = self
            .resolver
            .as_ref()
            .ok_or_else(|| SourceError::new("no resolver"))?;
        // The follower decides when to ask: nothing is answered from cache.
        resolver.clear_cache();
        Ok(resolver)
    }
}

impl Source for DnsSource {
    fn snapshot(&mut self) -> SnapshotFuture<'_> {
        Box::pin(async move {
            let name = self.name.clone();
            let kind = self.kind;
            let resolver = self.resolver().await?;
            match kind {
                Kind::A { port } => a_records(resolver, &name, port).await,
                Kind::Srv => srv_records(resolver, &name).await,
            }
        })
    }

    fn describe(&self) -> String {
        match self.kind {
            Kind::A { port } => format!("dns:{}:{port}", self.name),
            Kind::Srv => format!("srv:{}", self.name),
        }
    }
}

/// The snapshot of `name`'s A and AAAA records.
async fn a_records(
    resolver: &TokioResolver,
    name: &str,
    port: u16,
) -> Result<Snapshot, SourceError> {
    let lookup = resolver
        .lookup_ip(name)
        .await
        .map_err(|e| lookup_failed(name, "A or AAAA", &e))?;
    let host = format!("{}:{port}", trim_dot(name));
    let mut listed = Listed::default();
    // Every record of the lookup (CNAMEs too) is on the way to the addresses.
    for record in lookup.as_lookup().records() {
        listed.ttl(record);
        if let Some(ip) = address(record) {
            listed.add(SocketAddr::new(ip, port), 1, &host);
        }
    }
    listed.snapshot(|| format!("{name}: no A or AAAA record"))
}

/// The snapshot of `name`'s SRV records of the lowest priority.
async fn srv_records(resolver: &TokioResolver, name: &str) -> Result<Snapshot, SourceError> {
    let lookup = resolver
        .srv_lookup(name)
        .await
        .map_err(|e| lookup_failed(name, "SRV", &e))?;
    let records = lookup.as_lookup().records();
    let srvs: Vec<(&Record, &hickory_resolver::proto::rr::rdata::SRV)> = records
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(srv) => Some((r, srv)),
            _ => None,
        })
        .collect();
    let Some(priority) = srvs.iter().map(|(_, srv)| srv.priority()).min() else {
        return Err(SourceError::new(format!("{name}: no SRV record")));
    };
    let mut listed = Listed::default();
    let mut targets = tokio::task::JoinSet::new();
    for (record, srv) in srvs.into_iter().filter(|(_, s)| s.priority() == priority) {
        // RFC 2782: a target of "." says the service is not available there.
        if srv.target().is_root() {
            continue;
        }
        listed.ttl(record);
        let target = srv.target().clone();
        let host = format!("{}:{}", trim_dot(&target.to_ascii()), srv.port());
        let weight = u32::from(srv.weight()).max(1);
        let port = srv.port();
        let given: Vec<Record> = records
            .iter()
            .filter(|r| address(r).is_some() && r.name().eq_ignore_root(&target))
            .cloned()
            .collect();
        if given.is_empty() {
            let resolver = resolver.clone();
            targets.spawn(async move {
                let found = resolver.lookup_ip(target.clone()).await;
                let records = found.map(|l| l.as_lookup().records().to_vec());
                (target, port, weight, host, records)
            });
        } else {
            targets.spawn(async move { (target, port, weight, host, Ok(given)) });
        }
    }
    if targets.is_empty() {
        return Err(SourceError::new(format!(
            "{name}: the service is not available (SRV target \".\")"
        )));
    }
    let mut answers = Vec::new();
    while let Some(answer) = targets.join_next().await {
        answers.push(answer.map_err(|e| SourceError::new(format!("{name}: {e}")))?);
    }
    let mut failures = Vec::new();
    for (target, port, weight, host, records) in answers {
        let target = trim_dot(&target.to_ascii()).to_owned();
        match records {
            Ok(records) => {
                let addresses: Vec<IpAddr> = records.iter().filter_map(address).collect();
                if addresses.is_empty() {
                    failures.push(format!("{target}: no A or AAAA record"));
                    continue;
                }
                records.iter().for_each(|r| listed.ttl(r));
                for ip in addresses {
                    listed.add(SocketAddr::new(ip, port), weight, &host);
                }
            }
            Err(e) => failures.push(lookup_failed(&target, "A or AAAA", &e).0),
        }
    }
    if !failures.is_empty() {
        failures.sort();
        tracing::warn!(source = %format!("srv:{name}"), targets = ?failures, "SRV targets left out");
    }
    listed.snapshot(|| {
        format!(
            "{name}: no SRV target of priority {priority} resolves ({})",
            failures.join("; ")
        )
    })
}

/// The endpoints an answer lists, and its TTL so far.
#[derive(Default)]
struct Listed {
    endpoints: Vec<(SocketAddr, EndpointSpec)>,
    ttl: Option<u32>,
}

impl Listed {
    /// Counts `record`'s TTL in the answer's.
    fn ttl(&mut self, record: &Record) {
        self.ttl = Some(self.ttl.map_or(record.ttl(), |t| t.min(record.ttl())));
    }

    /// The endpoint at `addr`, or `weight` more for it if it is listed.
    fn add(&mut self, addr: SocketAddr, weight: u32, host: &str) {
        if let Some((_, spec)) = self.endpoints.iter_mut().find(|(a, _)| *a == addr) {
            spec.weight = spec.weight.saturating_add(weight);
        } else {
            let spec = EndpointSpec::new(authority(addr)).weight(weight).host(host);
            self.endpoints.push((addr, spec));
        }
    }

    /// The snapshot, by address; an error saying `none()` when it lists
    /// no endpoint.
    fn snapshot(mut self, none: impl FnOnce() -> String) -> Result<Snapshot, SourceError> {
        if self.endpoints.is_empty() {
            return Err(SourceError::new(none()));
        }
        self.endpoints.sort_by_key(|(a, _)| *a);
        let endpoints = self
            .endpoints
            .into_iter()
            .map(|(_, spec)| (spec.authority.clone(), spec))
            .collect();
        let ttl = self.ttl.map(|t| Duration::from_secs(u64::from(t)));
        Ok(Snapshot::new(endpoints, ttl))
    }
}

/// The address an A or AAAA record holds.
fn address(record: &Record) -> Option<IpAddr> {
    match record.data() {
        RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(*a))),
        RData::AAAA(aaaa) => Some(IpAddr::V6(Ipv6Addr::from(*aaaa))),
        _ => None,
    }
}

/// `ip:port`, `[ip]:port` for IPv6.
fn authority(addr: SocketAddr) -> String {
    SocketAddr::new(addr.ip(), addr.port()).to_string()
}

/// `name` without its trailing dot.
fn trim_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// Why the lookup of `what` records of `name` failed, said plainly.
fn lookup_failed(name: &str, what: &str, e: &ResolveError) -> SourceError {
    // hickory reports a server's failure codes (SERVFAIL, REFUSED) as "no
    // records found" too: the response code tells them apart.
    let code = match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => Some(*response_code),
        _ => None,
    };
    match code {
        Some(ResponseCode::NXDomain) => {
            SourceError::new(format!("{name}: no such name (NXDOMAIN)"))
        }
        Some(ResponseCode::NoError) => SourceError::new(format!("{name}: no {what} record")),
        Some(code) => {
            let code = match code {
                ResponseCode::ServFail => "SERVFAIL".to_owned(),
                ResponseCode::Refused => "REFUSED".to_owned(),
                code => format!("{code} ({})", u16::from(code)),
            };
            SourceError::new(format!(
                "{name}: {what} lookup failed: the server answered {code}"
            ))
        }
        None => SourceError::new(format!("{name}: {what} lookup failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    #[test]
    fn authorities_and_hosts_are_written_as_http_wants_them() {
        let v4: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        assert_eq!(authority(v4), "10.0.0.5:8080");
        let v6 = SocketAddr::new("fd00::5".parse().unwrap(), 8080);
        assert_eq!(authority(v6), "[fd00::5]:8080");
        // A scope id is no part of an authority.
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0, 3));
        assert_eq!(authority(scoped), "[fe80::1]:80");
        assert_eq!(trim_dot("green.internal."), "green.internal");
        assert_eq!(trim_dot("green.internal"), "green.internal");
    }

    #[test]
    fn endpoints_are_sorted_merged_and_weighted() {
        let mut listed = Listed::default();
        listed.add("10.0.0.6:80".parse().unwrap(), 1, "a:80");
        listed.add("10.0.0.5:80".parse().unwrap(), 2, "a:80");
        listed.add("10.0.0.6:80".parse().unwrap(), 3, "b:80");
        let s = listed.snapshot(|| "none".into()).unwrap();
        assert_eq!(
            s.endpoints,
            vec![
                (
                    "10.0.0.5:80".to_owned(),
                    EndpointSpec::new("10.0.0.5:80").weight(2).host("a:80")
                ),
                (
                    "10.0.0.6:80".to_owned(),
                    EndpointSpec::new("10.0.0.6:80").weight(4).host("a:80")
                ),
            ]
        );
        assert_eq!(s.ttl, None);
        let e = Listed::default()
            .snapshot(|| "nothing here".into())
            .unwrap_err();
        assert_eq!(e.0, "nothing here");
    }

    #[test]
    fn sources_describe_themselves() {
        assert_eq!(
            DnsSource::a("green.internal", 8080).describe(),
            "dns:green.internal:8080"
        );
        assert_eq!(
            DnsSource::srv("_http._tcp.green.internal").describe(),
            "srv:_http._tcp.green.internal"
        );
    }
}
