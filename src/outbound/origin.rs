//! Where a plain `http://` URL's requests go, parsed once per target rather than per request.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use super::with_query;

/// Where a plain `http://` target's requests go, taken from its URL once rather than for every
/// request: the address to connect to, the `Host` header, and the path (with any query of its
/// own) that each callback's query is appended to.
#[derive(Debug, Clone)]
pub struct Origin {
    pub(super) address: Authority,
    host: Option<HeaderValue>,
    path: String,
}

impl Origin {
    /// `None` for a URL that is not `http://` with an address (those go through the pooled
    /// client with their whole URL).
    pub fn parse(url: &str) -> Option<Origin> {
        let uri = Uri::try_from(url).ok()?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        let address = uri.authority()?.clone();
        Some(Origin {
            host: host_header(&address),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            address,
        })
    }

    /// The `Host` header of its requests.
    pub fn host(&self) -> Option<HeaderValue> {
        self.host.clone()
    }

    /// The request target in origin form: the path, then `query` (after `&` when the path has a
    /// query of its own). Checked as a URI's path and query would be.
    pub(super) fn target(&self, query: &str) -> Result<PathAndQuery, http::Error> {
        Ok(PathAndQuery::try_from(with_query(&self.path, query))?)
    }
}

/// The `Host` header for `address`: its host and port as the URL has them, without the default
/// port (nor any user info).
fn host_header(address: &Authority) -> Option<HeaderValue> {
    match address.port_u16() {
        Some(80) | None => HeaderValue::from_str(address.host()).ok(),
        Some(port) => HeaderValue::from_str(&format!("{}:{port}", address.host())).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_of(url: &str, query: &str) -> String {
        Origin::parse(url)
            .unwrap()
            .target(query)
            .unwrap()
            .as_str()
            .to_owned()
    }

    #[test]
    fn the_callback_query_follows_the_path_or_the_urls_own_query() {
        assert_eq!(target_of("http://127.0.0.1:9000/wx", "a=1"), "/wx?a=1");
        assert_eq!(
            target_of("http://127.0.0.1:9000/crm?t=7", "a=1"),
            "/crm?t=7&a=1"
        );
        assert_eq!(target_of("http://127.0.0.1:9000", "a=1"), "/?a=1");
        assert_eq!(target_of("http://127.0.0.1:9000/wx", ""), "/wx");
    }

    #[test]
    fn host_is_the_urls_address_without_the_default_port() {
        let host = |url: &str| Origin::parse(url).unwrap().host.unwrap();
        assert_eq!(host("http://127.0.0.1:9000/wx"), "127.0.0.1:9000");
        assert_eq!(host("http://crm.internal:80/wx"), "crm.internal");
        assert_eq!(host("http://crm.internal/wx"), "crm.internal");
    }

    #[test]
    fn only_plain_http_urls_have_an_origin() {
        assert!(Origin::parse("https://crm.internal/wx").is_none());
        assert!(Origin::parse("/wx").is_none());
    }

    #[test]
    fn a_query_a_request_line_cannot_carry_is_refused() {
        let origin = Origin::parse("http://127.0.0.1:9000/wx").unwrap();
        assert!(origin.target("a=1 HTTP/1.1\r\nx: y").is_err());
    }
}
