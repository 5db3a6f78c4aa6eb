//! Which callbacks are resends, on the real binary: a corpus of real event shapes
//! (`tests/fixtures/events.toml`, from WeChat's, WeCom's and the mini program's documentation),
//! each sent as a burst of distinct copies in one second with resends in and after it. A copy
//! WeChat meant as a callback of its own is delivered exactly once; a resend never again.

use std::collections::BTreeMap;

use serde::Deserialize;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::operate::{post_to_binary_account, write_binary_config};
use crate::support::{Binary, Target, Wx, free_addr, settle};

/// The copies of one burst (`{n}` in a corpus body).
const COPIES: [u32; 3] = [1, 2, 3];

#[derive(Debug, Deserialize)]
struct Corpus {
    event: Vec<Shape>,
}

#[derive(Debug, Deserialize)]
struct Shape {
    name: String,
    source: String,
    kind: String,
    body: String,
}

impl Shape {
    fn copy(&self, n: u32) -> String {
        self.body.replace("{n}", &n.to_string())
    }
}

fn corpus() -> Vec<Shape> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/events.toml");
    let text = std::fs::read_to_string(path).expect("read the corpus");
    let corpus: Corpus = toml::from_str(&text).expect("the corpus parses");
    corpus.event
}

/// The account each kind of the corpus is sent to: its id, and WeChat as it sees it (safe mode:
/// a resend is a fresh encryption of the same message, with a fresh timestamp and nonce).
fn accounts() -> [(&'static str, &'static str, Wx); 3] {
    [
        (
            "official_account",
            "oa",
            Wx::new(Kind::OfficialAccount, Mode::Safe),
        ),
        ("wecom", "wecom", Wx::new(Kind::WeCom, Mode::Safe)),
        ("mini_program", "mp", Wx::new(Kind::MiniProgram, Mode::Safe)),
    ]
}

/// Regression (data loss): distinct events that share `FromUserName + CreateTime + Event +
/// EventKey + AgentID` (WeCom's `sys` events, nested `MsgID`s, cards, scans) were answered 200
/// and all but the first dropped as resends. Every distinct copy is delivered once, whichever
/// account kind and format; a resend sent while its burst is handled, and one sent after it
/// was answered, are not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_events_are_each_delivered_once_and_resends_never_again() {
    let corpus = corpus();
    assert!(corpus.len() >= 20, "the corpus has {} shapes", corpus.len());
    let accounts = accounts();
    let mut targets = Vec::new();
    let mut toml = String::new();
    for (_, id, wx) in &accounts {
        // Each target checks and opens every delivery as a stock SDK would.
        let target = Target::start_sdk(wx.credentials.clone()).await;
        toml.push_str(&wx.account(id, ""));
        toml.push_str(&Wx::target("sdk", &target.url(&format!("/{id}")), ""));
        targets.push(target);
    }
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let config = write_binary_config(dir.path(), listen, &toml);
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;

    for shape in &corpus {
        let &(_, id, ref wx) = accounts
            .iter()
            .find(|(kind, _, _)| *kind == shape.kind)
            .unwrap_or_else(|| panic!("{}: unknown kind {}", shape.name, shape.kind));
        // The burst, with a resend of the second copy among it.
        let mut burst: Vec<_> = COPIES.iter().map(|&n| wx.seal(&shape.copy(n))).collect();
        burst.push(wx.seal(&shape.copy(2)));
        let posts: Vec<_> = burst
            .into_iter()
            .map(|sealed| {
                tokio::spawn(async move { post_to_binary_account(listen, id, &sealed).await })
            })
            .collect();
        for post in posts {
            let answer = post.await.unwrap();
            assert_eq!(answer, (200, "success".to_owned()), "{}", shape.name);
        }
        // A resend once the first copy was answered.
        let late = post_to_binary_account(listen, id, &wx.seal(&shape.copy(1))).await;
        assert_eq!(late, (200, "success".to_owned()), "{}", shape.name);
    }

    for ((kind, id, _), target) in accounts.iter().zip(&targets) {
        let shapes: Vec<&Shape> = corpus.iter().filter(|s| s.kind == *kind).collect();
        let expected = shapes.len() * COPIES.len();
        target.wait_for(expected).await;
        settle().await;
        let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
        for received in target.received() {
            let message = match received.verified {
                Some(Ok(message)) => String::from_utf8(message).unwrap(),
                other => panic!("{id}: a delivery the SDK refused: {other:?}"),
            };
            *delivered.entry(message).or_default() += 1;
        }
        for shape in shapes {
            for n in COPIES {
                let count = delivered.get(&shape.copy(n)).copied().unwrap_or(0);
                assert_eq!(
                    count,
                    1,
                    "{} ({}), copy {n}: delivered {count} times\n{}",
                    shape.name,
                    shape.source,
                    binary.log()
                );
            }
        }
        assert_eq!(target.count(), expected, "{id}: nothing else was delivered");
    }
}
