//! Per-target credentials: a team whose service cannot share the account's token and key (an
//! SDK shared by several accounts, a vendor) gets every callback re-signed, and re-encrypted,
//! for its own token and key. Here the real binary, with the secrets in its environment, serves
//! an official account in safe mode and WeCom; each target plays a stock SDK set up with its own
//! credentials ([`Target::start_sdk`]), and must verify and decrypt what it gets.

use wechat_fanout::config::Mode;
use wechat_fanout::wechat::envelope::encrypted_reply;
use wechat_fanout::wechat::{AesKey, Credentials, Kind, Sealed, Security, msg_signature};

use crate::operate::{post_to_binary_account, write_binary_config};
use crate::support::binary::run_async_with_env;
use crate::support::wx::{AES_KEY, RECEIVE_ID, TOKEN};
use crate::support::{Binary, StoreView, Target, Wx, free_addr, no_jobs_left, text_xml};

const VENDOR_TOKEN: &str = "vendor-own-token";
const VENDOR_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn vendor(wx: &Wx, own_key: bool) -> Credentials {
    let mut credentials = wx.credentials.clone();
    credentials.token = VENDOR_TOKEN.to_owned();
    if own_key {
        credentials.security = Security::Safe(AesKey::from_encoding_aes_key(VENDOR_KEY).unwrap());
    }
    credentials
}

/// Three targets per account: `same` shares the account's token and key (byte-identical copy),
/// `vendor` has its own token and key, `partner` its own token only. Each verifies and decrypts
/// its copy with what it was given; the vendor and partner copies differ from WeChat's bytes,
/// the shared one does not. The primary, `vendor`, answers with a reply sealed with its own
/// token and key, and WeChat gets it sealed with the account's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_with_their_own_credentials_verify_and_decrypt_their_copies() {
    for (kind, id) in [(Kind::OfficialAccount, "main"), (Kind::WeCom, "work")] {
        let wx = Wx::new(kind, Mode::Safe);
        let same = Target::start_sdk(wx.credentials.clone()).await;
        let vendor_creds = vendor(&wx, true);
        let vendor_target = Target::start_sdk(vendor_creds.clone()).await;
        let partner = Target::start_sdk(vendor(&wx, false)).await;
        // The primary: answers a passive reply sealed for its own credentials.
        let bot = Target::start(200).await;
        let reply = "<xml><ToUserName><![CDATA[o1]]></ToUserName><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi from the vendor]]></Content></xml>";
        let encrypt = AesKey::from_encoding_aes_key(VENDOR_KEY).unwrap().encrypt(
            reply.as_bytes(),
            RECEIVE_ID,
            rand::random(),
        );
        let sig = msg_signature(VENDOR_TOKEN, "1714037059", "77", &encrypt);
        let sealed_reply = Sealed {
            encrypt: &encrypt,
            msg_signature: sig.as_str(),
            timestamp: "1714037059",
            nonce: "77",
        }
        .reply_xml();
        bot.set_reply("application/xml", &sealed_reply);

        let own =
            "resign = { token_env = \"VENDOR_TOKEN\", encoding_aes_key_env = \"VENDOR_KEY\" }";
        let dir = tempfile::tempdir().unwrap();
        let listen = free_addr();
        let accounts = format!(
            "{}{}{}{}{}",
            wx.account(id, "primary = \"bot\""),
            Wx::target("same", &same.url("/same"), ""),
            Wx::target("vendor", &vendor_target.url("/v?team=x"), own),
            Wx::target(
                "partner",
                &partner.url("/p"),
                "resign = { token_env = \"VENDOR_TOKEN\" }"
            ),
            Wx::target("bot", &bot.url("/bot"), own),
        );
        let config = write_binary_config(dir.path(), listen, &accounts);
        let log = dir.path().join("serve.log");
        let env = [("VENDOR_TOKEN", VENDOR_TOKEN), ("VENDOR_KEY", VENDOR_KEY)];
        let mut binary = Binary::serve_with(&config, listen, &log, &[], &env).await;

        let message = text_xml("re-signed for the vendor");
        let sealed = wx.seal(&message);
        let (status, answer) = post_to_binary_account(listen, id, &sealed).await;
        assert_eq!(status, 200, "{answer}");
        // WeChat's view: the reply verifies with the account's token and decrypts with its key.
        let fields = encrypted_reply(answer.as_bytes()).unwrap_or_else(|| panic!("{answer}"));
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert!(
            msg_signature(TOKEN, &get("TimeStamp"), &get("Nonce"), &get("Encrypt"))
                .matches(&get("MsgSignature")),
            "{answer}"
        );
        let opened = AesKey::from_encoding_aes_key(AES_KEY)
            .unwrap()
            .decrypt(&get("Encrypt"), RECEIVE_ID)
            .unwrap();
        assert_eq!(opened, reply.as_bytes());

        for target in [&same, &vendor_target, &partner] {
            let got = target.wait_for(1).await;
            let verified = got[0].verified.clone().unwrap();
            assert_eq!(
                verified.as_deref(),
                Ok(message.as_bytes()),
                "{kind:?}: {:?}",
                got[0]
            );
        }
        let same_got = &same.received()[0];
        assert_eq!(
            same_got.body,
            sealed.body.as_bytes(),
            "shared: byte-identical"
        );
        assert!(same_got.path_and_query.ends_with(&sealed.query));
        let vendor_got = &vendor_target.received()[0];
        assert_ne!(vendor_got.body, sealed.body.as_bytes(), "its own key");
        assert!(vendor_got.path_and_query.starts_with("/v?team=x&"));
        if kind == Kind::OfficialAccount {
            assert!(
                vendor_got
                    .path_and_query
                    .contains("&openid=oUpF8uMuAJO_M2pxb1Q9zNjWeS6o&"),
                "other parameters are kept: {}",
                vendor_got.path_and_query
            );
        }
        // The partner has the account's key: only the query changes, the body is WeChat's.
        assert_eq!(partner.received()[0].body, sealed.body.as_bytes());
        assert_ne!(
            partner.received()[0].path_and_query,
            format!("/p?{}", sealed.query)
        );

        // probe signs for each target's own credentials.
        let config_arg = config.to_string_lossy();
        let ran = run_async_with_env(&["--config", &config_arg, "probe"], &env).await;
        // The three SDKs echo; the bot (a fixed answer) does not.
        assert!(ran.stdout.contains("3 of 4 targets ok"), "{ran:#?}");
        assert!(
            ran.stdout.contains(" bot              wrong echo"),
            "{ran:#?}"
        );
        no_jobs_left(&StoreView::admin_of(&config), "all delivered").await;
        binary.terminate();
        binary.wait_exit().await;
    }
}
