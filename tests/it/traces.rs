//! Traces (issue 25): the real binary exports OTLP over HTTP to a receiver this test runs, which
//! decodes what arrives with the `opentelemetry-proto` types. One callback is one trace: its
//! accept, the store's write, and each delivery attempt, also the one made after a restart by a
//! process with another instance name (the trace context is stored with the callback); the
//! target that opts in gets each attempt's `traceparent`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message as _;
use tokio::net::TcpListener;
use wechat_fanout::config::Mode;
use wechat_fanout::wechat::Kind;

use crate::operate::{post_to_binary, write_binary_config};
use crate::support::binary::Binary;
use crate::support::{Target, Wx, eventually, free_addr, text_xml};

/// A span as received: its ids, name, the instance that sent it, and its attributes.
#[derive(Debug, Clone)]
struct Received {
    trace: String,
    span: String,
    parent: String,
    name: String,
    instance: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let shared = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let spans = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let spans = spans.clone();
                    async move {
                        assert_eq!(request.uri().path(), "/v1/traces");
                        assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        let mut got = spans.lock().unwrap();
                        for resource in export.resource_spans {
                            let attributes = resource.resource.unwrap_or_default().attributes;
                            let instance = attributes
                                .iter()
                                .find(|kv| kv.key == "service.instance.id")
                                .map(text)
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    got.push(Received {
                                        trace: hex(&span.trace_id),
                                        span: hex(&span.span_id),
                                        parent: hex(&span.parent_span_id),
                                        name: span.name.clone(),
                                        instance: instance.clone(),
                                        attributes: span
                                            .attributes
                                            .iter()
                                            .map(|kv| (kv.key.clone(), text(kv)))
                                            .collect(),
                                    });
                                }
                            }
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callback_is_one_trace_across_a_restart_and_into_the_target() {
    let (collector, spans) = receiver().await;
    let crm = Target::start(500).await;
    let quiet = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let accounts = format!(
        "[traces]\notlp_endpoint = \"http://{collector}\"\nexport_interval_ms = 100\n{}{}{}",
        wx.account("main", ""),
        Wx::target(
            "crm",
            &crm.url("/crm"),
            "traceparent = true\nbackoff_initial_ms = 1500\nbackoff_max_ms = 1500"
        ),
        Wx::target("quiet", &quiet.url("/quiet"), ""),
    );
    let config = write_binary_config(dir.path(), listen, &accounts);
    let log = dir.path().join("a.log");
    let name = |n| [("WECHAT_FANOUT_SERVER__INSTANCE_NAME", n)];
    let mut first = Binary::serve_with(&config, listen, &log, &[], &name("fanout-a")).await;
    first.wait_listening().await;

    let (status, answer) = post_to_binary(listen, &wx.seal(&text_xml("traced"))).await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    let refused = crm.wait_for(1).await;
    quiet.wait_for(1).await;
    // A clean stop exports what is queued; the retry waits in the store.
    first.terminate();
    first.wait_exit().await;

    crm.set_status(200);
    let log = dir.path().join("b.log");
    let mut second = Binary::serve_with(&config, listen, &log, &[], &name("fanout-b")).await;
    second.wait_listening().await;
    let delivered = crm.wait_for(2).await;
    second.terminate();
    second.wait_exit().await;

    let got = eventually("the spans of both processes", || {
        let got = spans.lock().unwrap().clone();
        (got.iter().filter(|s| s.name == "attempt").count() >= 3).then_some(got)
    })
    .await;
    let root = got
        .iter()
        .find(|s| s.name == "callback")
        .unwrap_or_else(|| panic!("no callback span: {got:#?}"));
    assert_eq!(root.parent, "", "the callback's span is the root");
    assert_eq!(root.instance, "fanout-a");
    assert_eq!(root.attribute("wechat.account"), Some("main"));
    assert_eq!(root.attribute("wechat_fanout.outcome"), Some("accepted"));
    let store = got.iter().find(|s| s.name == "store").unwrap();
    assert_eq!((&store.trace, &store.parent), (&root.trace, &root.span));

    let attempts: Vec<&Received> = got.iter().filter(|s| s.name == "attempt").collect();
    for attempt in &attempts {
        assert_eq!(
            (&attempt.trace, &attempt.parent),
            (&root.trace, &root.span),
            "every attempt is a child of the callback: {attempt:#?}"
        );
    }
    let crm_attempts: Vec<&&Received> = attempts
        .iter()
        .filter(|a| a.attribute("wechat_fanout.target") == Some("crm"))
        .collect();
    assert_eq!(crm_attempts.len(), 2, "{attempts:#?}");
    let failed = crm_attempts
        .iter()
        .find(|a| a.attribute("wechat_fanout.attempt") == Some("1"))
        .unwrap();
    assert_eq!(failed.instance, "fanout-a");
    assert_eq!(failed.attribute("http.response.status_code"), Some("500"));
    assert_eq!(failed.attribute("wechat_fanout.result"), Some("retry"));
    let later = crm_attempts
        .iter()
        .find(|a| a.attribute("wechat_fanout.attempt") == Some("2"))
        .unwrap();
    assert_eq!(later.instance, "fanout-b", "made by the second process");
    assert_eq!(later.attribute("wechat_fanout.result"), Some("delivered"));

    // The target that opted in got each attempt's own traceparent; the other got none.
    for (request, attempt) in [(&refused[0], failed), (&delivered[1], later)] {
        assert_eq!(
            request.header("traceparent"),
            Some(format!("00-{}-{}-01", root.trace, attempt.span).as_str())
        );
    }
    assert_eq!(quiet.wait_for(1).await[0].header("traceparent"), None);
}
