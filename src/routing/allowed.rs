//! An account's `allowed_sources`, as built from the config: the blocks it lists, and whether
//! WeChat's callback IP list (fetched at run time by ingress) also admits.

use crate::cidr::Cidr;

/// One account's `allowed_sources`.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    pub blocks: Vec<Cidr>,
    /// `"wechat"` is listed: WeChat's callback IP list also admits.
    pub wechat: bool,
}
