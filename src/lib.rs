//! wechat-fanout: one WeChat callback URL, many downstream services.
#![forbid(unsafe_code)]

pub mod wechat;
