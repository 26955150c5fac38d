//! The SSRF guard: callback URLs may not reach loopback, private, link-local, CGNAT,
//! multicast, reserved or cloud-metadata addresses unless an operator allowlisted the range.
//! Checked at registration and again at every connection, on the addresses DNS returned for
//! that connection (`GuardedResolver`), so a name that rebinds to a private address after
//! registration is still refused. Redirects are never followed (see `deliver`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context};

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> anyhow::Result<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().context("not an IP address")?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().context("bad prefix length")?,
            None => max,
        };
        if prefix > max {
            bail!("prefix length over {max}");
        }
        Ok(Cidr { network, prefix })
    }

    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = ((prefix / 8) as usize, prefix % 8);
    if a[..bytes] != b[..bytes] {
        return false;
    }
    bits == 0 || (a[bytes] ^ b[bytes]) >> (8 - bits) == 0
}

/// IPv4 ranges no callback may reach, with the reason shown to the admin.
const DENIED_V4: &[(Cidr, &str)] = &[
    (Cidr::v4(0, 0, 0, 0, 8), "unspecified"),
    (Cidr::v4(10, 0, 0, 0, 8), "private"),
    (Cidr::v4(100, 64, 0, 0, 10), "CGNAT"),
    (Cidr::v4(127, 0, 0, 0, 8), "loopback"),
    (Cidr::v4(169, 254, 0, 0, 16), "link-local / cloud metadata"),
    (Cidr::v4(172, 16, 0, 0, 12), "private"),
    (Cidr::v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (Cidr::v4(192, 168, 0, 0, 16), "private"),
    (Cidr::v4(198, 18, 0, 0, 15), "benchmarking"),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast"),
    (Cidr::v4(240, 0, 0, 0, 4), "reserved"),
];

/// Why `ip` is refused, or None if a callback may reach it.
pub fn refusal(ip: IpAddr, allow: &[Cidr]) -> Option<&'static str> {
    if allow.iter().any(|c| c.contains(ip)) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => DENIED_V4
            .iter()
            .find(|(c, _)| c.contains(IpAddr::V4(v4)))
            .map(|(_, why)| *why),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refusal(IpAddr::V4(v4), allow),
            None => refusal_v6(v6),
        },
    }
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local / cloud metadata)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xff00 == 0xff00 {
        Some("multicast")
    } else if first == 0x64 && ip.segments()[1] == 0xff9b {
        Some("NAT64")
    } else {
        None
    }
}

/// Checks every address a name resolved to; all must be allowed.
pub fn check_addrs(host: &str, addrs: &[IpAddr], allow: &[Cidr]) -> anyhow::Result<()> {
    if addrs.is_empty() {
        bail!("{host} does not resolve to any address");
    }
    for ip in addrs {
        if let Some(why) = refusal(*ip, allow) {
            bail!("{host} resolves to {ip}, a {why} address; callbacks may not go there (see outgoing.allow_cidrs)");
        }
    }
    Ok(())
}

/// Checks a callback URL at registration: scheme, host, and where the host resolves now.
pub async fn check_url(url: &str, allow: &[Cidr]) -> anyhow::Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url).context("callback_url is not a URL")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("callback_url must be http or https");
    }
    let host = parsed
        .host_str()
        .context("callback_url has no host")?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .map(|a| a.ip())
            .collect(),
    };
    check_addrs(&host, &addrs, allow)?;
    Ok(parsed)
}

/// reqwest's resolver for callbacks: resolves, then drops refused addresses. A name with
/// nothing left fails the connection, so a rebinding name cannot reach a private address:
/// the addresses checked are the ones connected to.
pub struct GuardedResolver {
    pub allow: Arc<Vec<Cidr>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|a| refusal(a.ip(), &allow).is_none());
            if allowed.is_empty() {
                let ips: Vec<IpAddr> = refused.iter().map(|a| a.ip()).collect();
                check_addrs(&host, &ips, &allow)?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_metadata_and_friends_are_refused() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "224.0.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "ff02::1",
        ] {
            assert!(refusal(ip(bad), &[]).is_some(), "{bad} should be refused");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(refusal(ip(good), &[]).is_none(), "{good} should pass");
        }
    }

    #[test]
    fn the_allowlist_opens_exactly_its_range() {
        let allow = [Cidr::parse("127.0.0.1/32").unwrap()];
        assert!(refusal(ip("127.0.0.1"), &allow).is_none());
        assert!(refusal(ip("127.0.0.2"), &allow).is_some());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
        assert!(Cidr::parse("10.0.0.0/9")
            .unwrap()
            .contains(ip("10.127.0.1")));
        assert!(!Cidr::parse("10.0.0.0/9")
            .unwrap()
            .contains(ip("10.128.0.1")));
    }

    #[test]
    fn a_name_with_any_private_address_is_refused() {
        // A rebinding name answering one public and one private address must not pass.
        let addrs = [ip("93.184.216.34"), ip("10.0.0.5")];
        assert!(check_addrs("rebind.example", &addrs, &[]).is_err());
    }

    #[tokio::test]
    async fn registration_resolves_names() {
        assert!(check_url("http://localhost:9/x", &[]).await.is_err());
        assert!(check_url("ftp://example.com/", &[]).await.is_err());
        assert!(check_url("http://169.254.169.254/latest", &[])
            .await
            .is_err());
        let allow = [
            Cidr::parse("127.0.0.1/32").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        assert!(check_url("http://127.0.0.1:9/x", &allow).await.is_ok());
    }
}
