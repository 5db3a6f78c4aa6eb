//! Open platform: which authorized account (`authorizer_appid`) a callback concerns, carried
//! from ingress to every delivery.
//!
//! The message URL of a third-party platform is `/wechat/{id}/{authorizer_appid}` (WeChat fills
//! the console's `$APPID$` placeholder); an authorization event names it in `AuthorizerAppid`.
//! Targets get it in their URL (`{authorizer}` in a configured URL is replaced) and in the
//! `X-WeChat-Fanout-Authorizer` header. The store keeps a callback's request as query, content
//! type and body, so the authorizer travels in front of the stored query as `#{appid}#`: `#`
//! can never start a query the server received (it begins a fragment, which is never sent),
//! and [`split`] takes it off again before anything is sent. A query without it is WeChat's own.

/// Names the authorized account an open platform callback concerns.
pub const AUTHORIZER_HEADER: &str = "x-wechat-fanout-authorizer";

/// Is `text` shaped like an app id (`wx…`): the only thing the path segment may be.
pub fn is_app_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The query to store: `raw`, tagged with the authorizer when there is one.
pub fn tag(authorizer: Option<&str>, raw: &str) -> String {
    match authorizer {
        Some(appid) => format!("#{appid}#{raw}"),
        None => raw.to_owned(),
    }
}

/// A stored query split into the authorizer (if tagged) and WeChat's own query.
pub fn split(stored: &str) -> (Option<&str>, &str) {
    stored
        .strip_prefix('#')
        .and_then(|rest| rest.split_once('#'))
        .map_or((None, stored), |(appid, query)| (Some(appid), query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_comes_off_exactly() {
        let query = "signature=a&timestamp=1&nonce=2&encrypt_type=aes&msg_signature=b";
        assert_eq!(split(&tag(Some("wxabc"), query)), (Some("wxabc"), query));
        assert_eq!(split(&tag(None, query)), (None, query));
        assert_eq!(split(""), (None, ""));
        assert!(is_app_id("wx1234567890abcdef") && !is_app_id("wx#1") && !is_app_id(""));
    }
}
