//! Which hosts a webhook may reach: the defence against a job message
//! that makes workers probe the internal network (SSRF).
//!
//! The worker resolves the URL's host itself, keeps the addresses the
//! policy allows, and connects only to those ([`Target`]), so a name that
//! resolves to another address a moment later (DNS rebinding) gains
//! nothing. The policy is `webhook.allowed_hosts` ([`AllowedHost`]): by
//! default (`public`) any public address and no loopback, private,
//! link-local, unique-local, shared, multicast, documentation or otherwise
//! reserved one; entries may add host names (trusted to whatever they
//! resolve to), IP addresses and CIDR ranges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use url::{Host, Url};

use crate::config::AllowedHost;

/// The hosts webhooks may go to.
#[derive(Debug, Clone)]
pub struct Policy {
    entries: Vec<AllowedHost>,
}

/// Where a checked webhook may be sent: the host name (none for an IP
/// address in the URL) and the allowed addresses it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL's host name, to be resolved to `addrs` only.
    pub name: Option<String>,
    /// The checked addresses, with the URL's port.
    pub addrs: Vec<SocketAddr>,
}

/// Why a webhook is not sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The policy does not allow the host: never sent (a sentence).
    Forbidden(String),
    /// The host name did not resolve (DNS may answer later).
    Unresolved(String),
}

impl Policy {
    /// A policy of `entries` (an empty list means `public`).
    pub fn new(entries: Vec<AllowedHost>) -> Policy {
        if entries.is_empty() {
            Policy {
                entries: vec![AllowedHost::Public],
            }
        } else {
            Policy { entries }
        }
    }

    /// Whether the policy allows connecting to `ip` for a URL whose host
    /// is `name` (`None` when the URL gives an address).
    pub fn allows(&self, name: Option<&str>, ip: IpAddr) -> bool {
        self.entries.iter().any(|entry| match entry {
            AllowedHost::Public => reserved(ip).is_none(),
            AllowedHost::Name(allowed) => {
                name.is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(allowed))
            }
            AllowedHost::Net(net) => net.contains(&canonical(ip)) || net.contains(&ip),
        })
    }

    /// Resolves `url`'s host and keeps the addresses the policy allows.
    pub async fn check(&self, url: &Url) -> Result<Target, Refusal> {
        let port = url.port_or_known_default().unwrap_or(80);
        let (name, addrs) = match url.host() {
            Some(Host::Ipv4(ip)) => (None, vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Ipv6(ip)) => (None, vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Domain(domain)) => {
                let found = tokio::net::lookup_host((domain, port))
                    .await
                    .map_err(|e| Refusal::Unresolved(format!("cannot resolve {domain}: {e}")))?;
                let mut addrs: Vec<SocketAddr> = found.collect();
                addrs.dedup();
                if addrs.is_empty() {
                    return Err(Refusal::Unresolved(format!("{domain} has no address")));
                }
                (Some(domain.to_ascii_lowercase()), addrs)
            }
            None => return Err(Refusal::Forbidden("the URL has no host".into())),
        };
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.allows(name.as_deref(), a.ip()))
            .collect();
        if allowed.is_empty() {
            let host = url.host_str().unwrap_or_default();
            let why: Vec<String> = addrs
                .iter()
                .map(|a| match reserved(a.ip()) {
                    Some(kind) => format!("{} is a {kind} address", a.ip()),
                    None => format!("{} is not listed", a.ip()),
                })
                .collect();
            return Err(Refusal::Forbidden(format!(
                "the webhook host {host} is not allowed: {} (webhook.allowed_hosts, env TRANSCODE_WEBHOOK__ALLOWED_HOSTS)",
                why.join(", ")
            )));
        }
        Ok(Target {
            name,
            addrs: allowed,
        })
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// IPv4 ranges that are not public, and what each is.
const RESERVED_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
];

/// IPv6 ranges that are not public, and what each is (anything outside
/// 2000::/3, global unicast, is refused too).
const RESERVED_V6: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "reserved"),
    ("100::/64", "reserved"),
    ("2001::/23", "reserved"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

fn find(table: &[(&str, &'static str)], ip: IpAddr) -> Option<&'static str> {
    table.iter().find_map(|(net, kind)| {
        let net: IpNet = net.parse().expect("a valid range in the table");
        net.contains(&ip).then_some(*kind)
    })
}

/// What kind of non-public address `ip` is (`loopback`, `private`, ...);
/// `None` for a public one. IPv4 addresses inside IPv6 (mapped, NAT64,
/// 6to4) are judged by their IPv4 address.
pub fn reserved(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => find(RESERVED_V4, IpAddr::V4(v4)),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return reserved(IpAddr::V4(v4));
            }
            if let Some(kind) = find(RESERVED_V6, IpAddr::V6(v6)) {
                return Some(kind);
            }
            let global: IpNet = "2000::/3".parse().expect("a valid range");
            if global.contains(&IpAddr::V6(v6)) {
                None
            } else {
                Some("reserved")
            }
        }
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped
/// (`::ffff:0:0/96`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let last = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> Policy {
        Policy::new(entries.iter().map(|e| e.parse().unwrap()).collect())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn by_default_only_public_addresses_are_allowed() {
        let p = policy(&[]);
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("100.127.255.254", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("192.0.2.7", "documentation"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "reserved"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:c0a8:0101::1", "private"),
        ] {
            assert_eq!(reserved(ip(addr)), Some(kind), "{addr}");
            assert!(!p.allows(None, ip(addr)), "{addr}");
            assert!(!p.allows(Some("hooks.example.com"), ip(addr)), "{addr}");
        }
        for addr in [
            "93.184.215.14",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "11.0.0.1",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(reserved(ip(addr)), None, "{addr}");
            assert!(p.allows(None, ip(addr)), "{addr}");
        }
    }

    #[test]
    fn a_cidr_entry_allows_its_range_and_nothing_else() {
        let p = policy(&["10.20.0.0/16"]);
        assert!(p.allows(None, ip("10.20.3.4")));
        assert!(p.allows(Some("hooks.internal"), ip("10.20.255.1")));
        assert!(p.allows(None, ip("::ffff:10.20.3.4")));
        assert!(!p.allows(None, ip("10.21.0.1")));
        // The list replaces the default: public addresses need `public`.
        assert!(!p.allows(None, ip("8.8.8.8")));
        let p = policy(&["10.20.0.0/16", "public"]);
        assert!(p.allows(None, ip("8.8.8.8")));
        assert!(!p.allows(None, ip("127.0.0.1")));
        let p = policy(&["127.0.0.1", "::1"]);
        assert!(p.allows(None, ip("127.0.0.1")));
        assert!(!p.allows(None, ip("127.0.0.2")));
        assert!(p.allows(None, ip("::1")));
    }

    #[test]
    fn a_host_name_entry_allows_that_name_to_any_address() {
        let p = policy(&["Hooks.Internal.example"]);
        assert!(p.allows(Some("hooks.internal.example"), ip("10.0.0.5")));
        assert!(p.allows(Some("HOOKS.internal.example."), ip("127.0.0.1")));
        assert!(!p.allows(Some("other.internal.example"), ip("10.0.0.5")));
        assert!(!p.allows(Some("evil.hooks.internal.example"), ip("10.0.0.5")));
        assert!(!p.allows(None, ip("10.0.0.5")));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "exa mple.com",
            "-x.com",
            "a..b",
            "*.example.com",
        ] {
            assert!(bad.parse::<AllowedHost>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.1.2.3/8".parse::<AllowedHost>().unwrap(),
            AllowedHost::Net("10.0.0.0/8".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn checks_every_resolved_address_and_keeps_the_allowed_ones() {
        let url = |u: &str| Url::parse(u).unwrap();
        let default = policy(&[]);
        let refused = default
            .check(&url("http://127.0.0.1:9/hook"))
            .await
            .unwrap_err();
        let Refusal::Forbidden(why) = refused else {
            panic!("{refused:?}")
        };
        assert!(why.contains("127.0.0.1 is a loopback address"), "{why}");
        assert!(matches!(
            default.check(&url("http://localhost:9/")).await,
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            default.check(&url("http://[::ffff:7f00:1]:9/")).await,
            Err(Refusal::Forbidden(_))
        ));
        // The URL parser reads every IPv4 spelling as the address.
        assert!(matches!(
            default.check(&url("http://0x7f.1:9/")).await,
            Err(Refusal::Forbidden(_))
        ));
        let target = policy(&["127.0.0.0/8"])
            .check(&url("http://localhost:9/"))
            .await
            .unwrap();
        assert_eq!(target.name.as_deref(), Some("localhost"));
        assert!(!target.addrs.is_empty());
        assert!(target
            .addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.is_ipv4() && a.port() == 9));
        let literal = policy(&["127.0.0.1"])
            .check(&url("http://127.0.0.1:8080/x"))
            .await
            .unwrap();
        assert_eq!(literal.name, None);
        assert_eq!(literal.addrs, ["127.0.0.1:8080".parse().unwrap()]);
    }
}
