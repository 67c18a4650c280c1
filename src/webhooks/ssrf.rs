//! Where a webhook may be sent: the SSRF guard.
//!
//! An endpoint URL comes from a merchant, and the delivery runs inside our network, so a URL
//! must never reach an address a merchant could not reach from the internet: private ranges,
//! loopback, link-local (cloud metadata at 169.254.169.254), CGNAT, unique-local, multicast,
//! reserved and documentation ranges, unspecified and broadcast, in v4 and v6, including v4
//! addresses wrapped in v6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4).
//!
//! * The check runs at registration (every resolved address) and again at every delivery.
//! * At delivery the HTTP client resolves through [`GuardedResolver`], which refuses a host when
//!   any of its addresses is forbidden and otherwise hands reqwest exactly the addresses it
//!   checked. reqwest connects to those, so a DNS answer that changes between the check and the
//!   connection (rebinding) has nothing to slip through. IP-literal hosts skip DNS, so
//!   [`AddressPolicy::check_url`] checks them before the request.
//! * Redirects are not followed (a 3xx is a failed attempt), and no system proxy is used.
//! * `WEBHOOK_ALLOWED_NETWORKS` re-allows ranges (tests allow 127.0.0.0/8); `WEBHOOK_HTTPS_ONLY`
//!   refuses plain http.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

use crate::error::{Error, Result};

/// The longest URL accepted (the column's width).
pub const MAX_URL_LEN: usize = 2048;
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an IPv4 address is not a public unicast destination, or `None` when it is.
fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if o[0] == 0 {
        "unspecified (0.0.0.0/8)"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if o[0] == 100 && o[1] & 0xc0 == 64 {
        "carrier-grade NAT (100.64.0.0/10)"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_documentation() {
        "documentation"
    } else if o[0] == 198 && o[1] & 0xfe == 18 {
        "benchmarking (198.18.0.0/15)"
    } else if o[0] >= 240 {
        "reserved (240.0.0.0/4)"
    } else if o[..3] == [192, 0, 0] || o[..3] == [192, 88, 99] {
        "reserved for protocol use"
    } else {
        return None;
    })
}

/// The IPv4 address a v6 address carries, for the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix.
        Some(tail())
    } else if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        // IPv4-translated (::ffff:0:0/96, SIIT).
        Some(tail())
    } else if s[0] == 0x2002 {
        // 6to4.
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return v4_reason(v4).map(|_| "an IPv4 address wrapped in IPv6 that is not public");
    }
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if s[..6] == [0; 6] {
        "IPv4-compatible (deprecated)"
    } else if s[..3] == [0x64, 0xff9b, 1] {
        "NAT64 local-use"
    } else if s[..4] == [0x100, 0, 0, 0] {
        "discard-only (100::/64)"
    } else if ip.is_multicast() {
        "multicast"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique-local (fc00::/7)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local (deprecated)"
    } else if s[..2] == [0x2001, 0xdb8] || s[0] & 0xfff0 == 0x3ff0 {
        "documentation"
    } else if s[..2] == [0x2001, 0] {
        "Teredo tunnel"
    } else if s[..3] == [0x2001, 2, 0] {
        "benchmarking"
    } else if s[0] == 0x2001 && (s[1] & 0xfff0 == 0x10 || s[1] & 0xfff0 == 0x20) {
        "ORCHID"
    } else if s[0] == 0x5f00 {
        "an SRv6 segment identifier (5f00::/16)"
    } else {
        return None;
    })
}

/// Why `ip` is not a public unicast destination, or `None` when it is.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// The rules for one process: which networks are re-allowed, and whether http is refused.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
    https_only: bool,
}

impl AddressPolicy {
    pub fn new(allowed: Vec<IpNet>, https_only: bool) -> Self {
        Self {
            allowed,
            https_only,
        }
    }

    pub fn https_only(&self) -> bool {
        self.https_only
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed
            .iter()
            .any(|n| n.contains(&ip) || v4.is_some_and(|v4| n.contains(&v4)))
    }

    /// `Err(why)` when deliveries may not reach `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> std::result::Result<(), String> {
        if self.allowed(ip) {
            return Ok(());
        }
        match forbidden_reason(ip) {
            Some(why) => Err(format!(
                "{ip} is {why}; webhooks may only reach public addresses"
            )),
            None => Ok(()),
        }
    }

    /// Parses an endpoint URL and checks what can be checked without DNS: the scheme, no
    /// credentials, a host, and an IP-literal host's address. VALIDATION on `url` otherwise.
    pub fn check_url(&self, url: &str) -> Result<Url> {
        let bad = |m: String| Error::validation("url", m);
        let url = url.trim();
        if url.is_empty() || url.len() > MAX_URL_LEN {
            return Err(bad(format!("url must have 1 to {MAX_URL_LEN} characters")));
        }
        let parsed = Url::parse(url).map_err(|e| bad(format!("url is not a valid URL: {e}")))?;
        match parsed.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            "http" => return Err(bad("url must use https (WEBHOOK_HTTPS_ONLY is set)".into())),
            other => return Err(bad(format!("url must be http or https, not {other}"))),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("url must not carry credentials".into()));
        }
        if parsed.port() == Some(0) {
            return Err(bad("url port must be 1 to 65535".into()));
        }
        match parsed.host() {
            None => return Err(bad("url must name a host".into())),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)).map_err(bad)?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)).map_err(bad)?,
            Some(url::Host::Domain(_)) => {}
        }
        Ok(parsed)
    }

    /// [`check_url`](Self::check_url), then resolves a host name and checks every address
    /// (registration). A name that does not resolve is refused too.
    pub async fn check_destination(&self, url: &str) -> Result<Url> {
        let parsed = self.check_url(url)?;
        if let Some(url::Host::Domain(host)) = parsed.host() {
            let addrs = resolve(host)
                .await
                .map_err(|e| Error::validation("url", format!("url host {host:?}: {e}")))?;
            for a in addrs {
                self.check_ip(a.ip()).map_err(|why| {
                    Error::validation("url", format!("url host {host:?} resolves to {why}"))
                })?;
            }
        }
        Ok(parsed)
    }
}

/// The system resolver (getaddrinfo, off the async threads), bounded in time.
async fn resolve(host: &str) -> std::result::Result<Vec<SocketAddr>, String> {
    let lookup = tokio::net::lookup_host((host, 0));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| "DNS lookup timed out".to_owned())?
        .map_err(|e| format!("does not resolve ({e})"))?
        .collect();
    if addrs.is_empty() {
        return Err("resolves to no address".into());
    }
    Ok(addrs)
}

/// reqwest's resolver for deliveries: resolves, refuses the host when any address is forbidden,
/// and returns exactly the checked addresses, which are the ones reqwest connects to.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }

    /// The checked addresses of `host`, or why it is refused.
    pub async fn lookup(&self, host: &str) -> std::result::Result<Vec<SocketAddr>, String> {
        let addrs = resolve(host).await?;
        for a in &addrs {
            self.policy
                .check_ip(a.ip())
                .map_err(|why| format!("refused: {host} resolves to {why}"))?;
        }
        Ok(addrs)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.lookup(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The delivery client: guarded DNS, no redirects, no proxy, the configured timeout.
pub fn client(policy: Arc<AddressPolicy>, timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(policy.https_only())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("Smartbot-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        forbidden_reason(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn every_non_public_range_is_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a00:1",
            "5f00::1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(ip), "{ip} is public");
        }
    }

    #[test]
    fn allowed_networks_re_allow_and_cover_mapped_forms() {
        let p = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], false);
        assert!(p.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check_ip("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check_ip("10.0.0.1".parse().unwrap()).is_err());
        assert!(p.check_ip("::1".parse().unwrap()).is_err());
        let strict = AddressPolicy::default();
        assert!(strict.check_ip("127.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn urls_are_checked_before_any_lookup() {
        let p = AddressPolicy::default();
        let field = |u: &str| p.check_url(u).unwrap_err().field().map(str::to_owned);
        for u in [
            "http://10.0.0.1/hook",
            "http://[::ffff:10.0.0.1]/",
            "http://[::1]:8080/",
            "http://0x7f.1/",
            "http://2130706433/",
            "ftp://example.com/",
            "http://user:pw@example.com/",
            "http://1.1.1.1:0/",
            "http://[::ffff:0:127.0.0.1]/",
            "not a url",
            "",
        ] {
            assert_eq!(field(u).as_deref(), Some("url"), "{u}");
        }
        assert!(p.check_url("https://example.com/hook").is_ok());
        let https = AddressPolicy::new(vec![], true);
        assert!(https.check_url("http://example.com/").is_err());
        assert!(https.check_url("https://example.com/").is_ok());
        assert!(
            p.check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN)))
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_for_a_loopback_address() {
        let strict = GuardedResolver::new(Arc::new(AddressPolicy::default()));
        let err = strict.lookup("localhost").await.unwrap_err();
        assert!(err.contains("refused"), "{err}");
        let p = AddressPolicy::default();
        let err = p
            .check_destination("http://localhost:9/")
            .await
            .unwrap_err();
        assert_eq!(err.field(), Some("url"));
        let open = GuardedResolver::new(Arc::new(AddressPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            false,
        )));
        let addrs = open.lookup("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
