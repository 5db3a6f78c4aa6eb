//! Address blocks (`101.226.103.0/25`, `2001:db8::/32`, or one address), as `allowed_sources`,
//! `server.trusted_proxies` and WeChat's callback IP lists write them.

use std::net::IpAddr;

/// An address block: `101.226.103.0/25`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix.parse::<u8>().ok()?)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().ok()?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether any block of `list` holds `ip`.
pub fn listed(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_only() {
        let block = Cidr::parse("101.226.103.0/25").unwrap();
        assert!(block.contains(ip("101.226.103.0")) && block.contains(ip("101.226.103.127")));
        assert!(!block.contains(ip("101.226.103.128")));
        assert!(
            block.contains(ip("::ffff:101.226.103.5")),
            "IPv4-mapped peers"
        );
        let one = Cidr::parse("203.0.113.7").unwrap();
        assert!(one.contains(ip("203.0.113.7")) && !one.contains(ip("203.0.113.8")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("2001:db8::1"))
        );
        for bad in [
            "",
            "1.2.3.4/33",
            "1.2.3/24",
            "wechat",
            "::1/129",
            "1.2.3.4/x",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }
}
