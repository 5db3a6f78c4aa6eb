//! A fake WeChat server API on a local port: `POST /cgi-bin/stable_token` and `GET
//! /cgi-bin/gettoken` (official accounts and WeCom) hand out an access token for the right app
//! id and secret, and `GET /cgi-bin/getcallbackip` answers the callback IP list for the current
//! token, else errcode 40001 as WeChat does. `POST /cgi-bin/message/custom/send` takes a
//! customer-service message for the current token (else 40001), unless the test scripted its
//! next answers (an HTTP status, or an errcode such as -1, 42001, 45015). The test sets the list,
//! rotates the token, and reads how often each endpoint was called and what was sent. Dropping
//! it stops it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) const APP_SECRET: &str = "fake-app-secret-0123456789";

#[derive(Debug, Default)]
struct State {
    /// The token handed out last; older ones are refused with 40001.
    token: Option<String>,
    issued: u32,
    ip_list: Vec<String>,
    /// Every request: the path, and the query or JSON body.
    calls: Vec<(String, String)>,
    /// The next answers of the custom-send endpoint, before it accepts messages again.
    send_script: VecDeque<Scripted>,
    /// The customer-service messages accepted, in order.
    sent: Vec<Value>,
}

/// A scripted answer of the custom-send endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scripted {
    /// This HTTP status, no JSON.
    Status(u16),
    /// HTTP 200 with this errcode (42001 also expires the current token, as WeChat's would be).
    Errcode(i64),
}

#[derive(Debug)]
pub(crate) struct FakeWechatApi {
    pub(crate) addr: SocketAddr,
    app_id: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl FakeWechatApi {
    /// Serves `app_id` (secret [`APP_SECRET`]) with this callback IP list.
    pub(crate) async fn start(app_id: &str, ip_list: &[&str]) -> FakeWechatApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            ip_list: ip_list.iter().map(|s| (*s).to_owned()).collect(),
            ..State::default()
        }));
        let stop = CancellationToken::new();
        let (app, shared, stopped) = (app_id.to_owned(), state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                let (app, shared) = (app.clone(), shared.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (app, shared) = (app.clone(), shared.clone());
                        async move { Ok::<_, Infallible>(answer(&app, &shared, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeWechatApi {
            addr,
            app_id: app_id.to_owned(),
            state,
            stop,
        }
    }

    /// `http://127.0.0.1:port`, for `wechat_api_base`.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The account lines that make the proxy use this API: `allowed_sources` comes from the test.
    pub(crate) fn account_lines(&self, allowed: &str) -> String {
        format!("allowed_sources = {allowed}\n{}", self.credential_lines())
    }

    /// The account lines that give the proxy this API and its secret: `app_secret` and
    /// `wechat_api_base`.
    pub(crate) fn credential_lines(&self) -> String {
        format!(
            "app_secret = \"{APP_SECRET}\"\nwechat_api_base = \"{}\"",
            self.base()
        )
    }

    /// WeChat invalidates the current token (as when it is fetched elsewhere).
    pub(crate) fn rotate_token(&self) {
        self.state.lock().unwrap().token = Some("revoked-elsewhere".into());
    }

    /// How many requests each path got.
    pub(crate) fn calls(&self, path: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.calls.iter().filter(|(p, _)| p == path).count()
    }

    /// The query or body of every request to `path`.
    pub(crate) fn requests(&self, path: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .calls
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The custom-send endpoint's next answers, in order; then it accepts again.
    pub(crate) fn script_send(&self, answers: &[Scripted]) {
        self.state.lock().unwrap().send_script.extend(answers);
    }

    /// The customer-service messages accepted so far.
    pub(crate) fn sent(&self) -> Vec<Value> {
        self.state.lock().unwrap().sent.clone()
    }

    pub(crate) fn app_id(&self) -> &str {
        &self.app_id
    }
}

impl Drop for FakeWechatApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(
    app: &str,
    state: &Mutex<State>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut state = state.lock().unwrap();
    let seen = if body.is_empty() {
        query.clone()
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    state.calls.push((path.clone(), seen));
    let issue = |state: &mut State, id: Option<String>, secret: Option<String>| {
        if id.as_deref() != Some(app) || secret.as_deref() != Some(APP_SECRET) {
            return json!({"errcode": 40125, "errmsg": "invalid appsecret"});
        }
        state.issued += 1;
        let token = format!("ACCESS_TOKEN_{}", state.issued);
        state.token = Some(token.clone());
        json!({"access_token": token, "expires_in": 7200})
    };
    let reply: Value = match path.as_str() {
        "/cgi-bin/stable_token" => {
            let body: Value = serde_json::from_slice(&body).unwrap_or_default();
            let text = |k: &str| body[k].as_str().map(str::to_owned);
            issue(&mut state, text("appid"), text("secret"))
        }
        "/cgi-bin/gettoken" => issue(&mut state, param("corpid"), param("corpsecret")),
        "/cgi-bin/getcallbackip" => {
            if param("access_token").is_some() && param("access_token") == state.token {
                json!({"ip_list": state.ip_list})
            } else {
                json!({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"})
            }
        }
        "/cgi-bin/message/custom/send" => {
            if param("access_token").is_none() || param("access_token") != state.token {
                json!({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"})
            } else {
                match state.send_script.pop_front() {
                    Some(Scripted::Status(status)) => {
                        let mut response = Response::new(Full::new(Bytes::from("busy")));
                        *response.status_mut() =
                            http::StatusCode::from_u16(status).expect("a status");
                        return response;
                    }
                    Some(Scripted::Errcode(code)) => {
                        if code == 42001 {
                            state.token = Some("expired".into());
                        }
                        let message = match code {
                            -1 => "system error",
                            42001 => "access_token expired",
                            45015 => "response out of time limit or subscription is canceled",
                            _ => "scripted error",
                        };
                        json!({"errcode": code, "errmsg": message})
                    }
                    None => {
                        let message: Value = serde_json::from_slice(&body).unwrap_or_default();
                        state.sent.push(message);
                        json!({"errcode": 0, "errmsg": "ok"})
                    }
                }
            }
        }
        _ => json!({"errcode": 40066, "errmsg": "invalid url"}),
    };
    Response::new(Full::new(Bytes::from(reply.to_string())))
}
