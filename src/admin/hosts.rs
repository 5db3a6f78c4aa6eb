//! Which `Host` the admin listener answers, against DNS rebinding: a web page the operator opens
//! can point its own name at 127.0.0.1 and then call the admin listener as "itself" (same
//! origin, so `Origin` checks pass). Its requests carry its own name in `Host`, so a name is
//! served only if it is `localhost` or listed in `admin.hosts`.
//!
//! IP literals are always served: rebinding needs a name, and Kubernetes probes, Prometheus
//! scrapes and `wechat-fanout healthcheck` call the listener by address (under another port,
//! too, when a container's port is published elsewhere). A request without `Host` is served
//! too: no browser sends one.

use std::net::{Ipv4Addr, Ipv6Addr};

use http::header::HOST;
use http::{HeaderMap, Uri};

/// The names `admin.hosts` lists, normalised: ASCII lower case, no trailing dot.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    names: Vec<String>,
}

impl Hosts {
    pub fn new(names: &[String]) -> Hosts {
        Hosts {
            names: names.iter().map(|name| normalise(name)).collect(),
        }
    }

    /// Whether a request with these headers and this target may be served. An absolute-form
    /// target's authority is held to the same rule as `Host`.
    pub fn allows(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let mut hosts = headers.get_all(HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (None, _) => None,
            (Some(host), None) => match host.to_str() {
                Ok(host) => Some(host),
                Err(_) => return false,
            },
            // Two `Host` headers: which one a browser's name is in is anyone's guess.
            (Some(_), Some(_)) => return false,
        };
        let authority = uri.authority().map(http::uri::Authority::as_str);
        [host, authority]
            .into_iter()
            .flatten()
            .all(|value| self.allows_host(value))
    }

    /// One `Host` value: `name`, `name:port`, an IPv4 address, `[IPv6]`, with or without port.
    fn allows_host(&self, value: &str) -> bool {
        if value.is_empty() {
            return true;
        }
        if let Some(rest) = value.strip_prefix('[') {
            let Some((ip, after)) = rest.split_once(']') else {
                return false;
            };
            return ip.parse::<Ipv6Addr>().is_ok() && is_port(after);
        }
        let (name, port) = value.rsplit_once(':').unwrap_or((value, ""));
        if !port.is_empty() && !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if name.parse::<Ipv4Addr>().is_ok() {
            return true;
        }
        let name = normalise(name);
        !name.is_empty() && (name == "localhost" || self.names.contains(&name))
    }
}

/// `""` or `:digits` after an IPv6 literal.
fn is_port(after: &str) -> bool {
    after.is_empty()
        || after
            .strip_prefix(':')
            .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()))
}

fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(hosts: &Hosts, host: Option<&str>) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(
                HOST,
                http::HeaderValue::from_str(host)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("unreadable")),
            );
        }
        hosts.allows(&headers, &Uri::from_static("/dead-letters"))
    }

    #[test]
    fn names_need_listing_and_addresses_do_not() {
        let hosts = Hosts::new(&["Admin.Example.".to_owned()]);
        for host in [
            None,
            Some(""),
            Some("127.0.0.1"),
            Some("10.0.0.7:9090"),
            Some("[::1]"),
            Some("[fe80::1]:9090"),
            Some("localhost"),
            Some("LOCALHOST.:9090"),
            Some("admin.example"),
            Some("ADMIN.example.:443"),
        ] {
            assert!(allows(&hosts, host), "{host:?}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "admin.example.evil",
            "127.0.0.1.nip.io",
            "2130706433",
            "127.1",
            "[::1",
            "[::1]x",
            "[not-an-ip]",
            "::1",
            "localhost:x",
            ".",
        ] {
            assert!(!allows(&hosts, Some(host)), "{host:?}");
        }
    }

    #[test]
    fn two_host_headers_or_a_foreign_absolute_target_are_refused() {
        let hosts = Hosts::default();
        let mut headers = HeaderMap::new();
        headers.append(HOST, http::HeaderValue::from_static("127.0.0.1"));
        headers.append(HOST, http::HeaderValue::from_static("evil.example"));
        assert!(!hosts.allows(&headers, &Uri::from_static("/")));
        let mut headers = HeaderMap::new();
        headers.insert(HOST, http::HeaderValue::from_static("127.0.0.1"));
        assert!(!hosts.allows(
            &headers,
            &Uri::from_static("http://evil.example/dead-letters")
        ));
        assert!(hosts.allows(
            &headers,
            &Uri::from_static("http://127.0.0.1:9090/dead-letters")
        ));
    }
}
