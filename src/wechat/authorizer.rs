//! Open platform: which authorized account (`authorizer_appid`) a callback concerns, carried
//! from ingress to every delivery.
//!
//! The message URL of a third-party platform is `/wechat/{id}/{authorizer_appid}` (WeChat fills
//! the console's `$APPID$` placeholder); an authorization event names it in `AuthorizerAppid`.
//! Targets get it in their URL (`{authorizer}` in a configured URL is replaced) and in the
//! `X-WeChat-Fanout-Authorizer` header. Ingress finds it; the store keeps it beside the callback
//! (a field of the stored callback, see `store::shape`), so every delivery has it. This module
//! keeps only what is protocol: what an app id looks like, and the header's name.

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tag's half of what was `a_tag_comes_off_exactly` is now the store's
    /// (`store::shape`'s tests); what an app id looks like stays here.
    #[test]
    fn app_ids_are_told_apart() {
        assert!(is_app_id("wx1234567890abcdef") && !is_app_id("wx#1") && !is_app_id(""));
    }
}
