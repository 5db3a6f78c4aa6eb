//! Lanes (`order = "per_user"`): which of an account's callbacks a lane-ordered target gets one
//! at a time, in the order received. A lane is a user, by the rule of the account's kind:
//!
//! * official accounts and mini programs: the sender's openid (`FromUserName`);
//! * WeCom: the sender's UserID (`FromUserName`), and WeCom's own events (`FromUserName` is
//!   `sys`: contact and customer changes) one lane for the account;
//! * the open platform: the authorizer (its app id) a callback concerns; the platform's own
//!   events (`component_verify_ticket`) one lane for the account;
//! * WeChat Pay: the order (`out_trade_no`), where the APIv3 key decrypts it; else one lane for
//!   the account.
//!
//! A callback without what its rule needs is in the account's lane. The store keeps the lane as
//! a keyed hash (`privacy::UserHash`, the hash log lines show), never the user, a letter of the
//! rule before it (`u`, `a`, `o`; `account`), and no `:` (it is part of a Redis key).

use crate::config::AccountKind;
use crate::privacy::UserHash;
use crate::wechat::Envelope;

/// The lane of the callbacks every rule leaves without one of their own.
const ACCOUNT_LANE: &str = "account";

/// How one account's callbacks are put in lanes.
#[derive(Debug, Clone)]
pub struct Lanes {
    kind: AccountKind,
    hash: UserHash,
}

/// Whose lane a callback is in, by its account's kind, before it is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whose<'a> {
    User(&'a str),
    Authorizer(&'a str),
    Order(&'a str),
    Account,
}

impl Lanes {
    /// For an account of `kind`, hashing with a key derived from `secret` (its token).
    pub fn new(kind: AccountKind, secret: &str) -> Lanes {
        Lanes {
            kind,
            hash: UserHash::new(secret),
        }
    }

    /// The lane of a callback (about `authorizer`, on the open platform).
    pub fn of(&self, envelope: &Envelope, authorizer: Option<&str>) -> String {
        let (letter, value) = match whose(self.kind, envelope, authorizer) {
            Whose::User(user) => ('u', user),
            Whose::Authorizer(appid) => ('a', appid),
            Whose::Order(number) => ('o', number),
            Whose::Account => return ACCOUNT_LANE.to_owned(),
        };
        format!("{letter}{}", self.hash.hex(value))
    }
}

/// The rule of each kind (see the module's doc).
fn whose<'a>(kind: AccountKind, envelope: &'a Envelope, authorizer: Option<&'a str>) -> Whose<'a> {
    let nonempty = |value: Option<&'a str>| value.filter(|v| !v.is_empty());
    let sender = nonempty(envelope.from_user_name.as_deref());
    match kind {
        AccountKind::OfficialAccount | AccountKind::MiniProgram => {
            sender.map_or(Whose::Account, Whose::User)
        }
        AccountKind::Wecom => match sender {
            Some("sys") | None => Whose::Account,
            Some(user) => Whose::User(user),
        },
        AccountKind::OpenPlatform => nonempty(authorizer).map_or(Whose::Account, Whose::Authorizer),
        AccountKind::WechatPay => {
            nonempty(envelope.out_trade_no.as_deref()).map_or(Whose::Account, Whose::Order)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(from: Option<&str>, out_trade_no: Option<&str>) -> Envelope {
        Envelope {
            from_user_name: from.map(str::to_owned),
            out_trade_no: out_trade_no.map(str::to_owned),
            ..Envelope::default()
        }
    }

    #[test]
    fn each_kind_has_its_rule() {
        use AccountKind::*;
        let user = envelope(Some("oUser1"), None);
        assert_eq!(whose(OfficialAccount, &user, None), Whose::User("oUser1"));
        assert_eq!(whose(MiniProgram, &user, None), Whose::User("oUser1"));
        assert_eq!(whose(Wecom, &user, None), Whose::User("oUser1"));
        assert_eq!(
            whose(Wecom, &envelope(Some("sys"), None), None),
            Whose::Account
        );
        assert_eq!(
            whose(OpenPlatform, &user, Some("wxapp")),
            Whose::Authorizer("wxapp")
        );
        assert_eq!(whose(OpenPlatform, &user, None), Whose::Account);
        let paid = envelope(None, Some("T1001"));
        assert_eq!(whose(WechatPay, &paid, None), Whose::Order("T1001"));
        assert_eq!(
            whose(WechatPay, &envelope(None, None), None),
            Whose::Account
        );
        assert_eq!(
            whose(OfficialAccount, &envelope(Some(""), None), None),
            Whose::Account
        );
    }

    /// A lane names its user by hash only, the same on every instance (same token), another
    /// for another user or token, and fits in a Redis key part (no `:`).
    #[test]
    fn a_lane_is_a_keyed_hash_of_its_user() {
        let lanes = Lanes::new(AccountKind::OfficialAccount, "token");
        let one = lanes.of(&envelope(Some("oUser1"), None), None);
        assert_eq!(
            one,
            Lanes::new(AccountKind::OfficialAccount, "token")
                .of(&envelope(Some("oUser1"), None), None)
        );
        assert_ne!(one, lanes.of(&envelope(Some("oUser2"), None), None));
        assert_ne!(
            one,
            Lanes::new(AccountKind::OfficialAccount, "other")
                .of(&envelope(Some("oUser1"), None), None)
        );
        assert!(
            one.starts_with('u') && one.len() == 17 && !one.contains("oUser1"),
            "{one}"
        );
        assert!(!one.contains(':'));
        assert_eq!(lanes.of(&envelope(None, None), None), ACCOUNT_LANE);
    }
}
