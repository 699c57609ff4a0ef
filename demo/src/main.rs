//! The support desk's app backend, as `cargo xtask up` runs it: what an application's own
//! server does with Herald's server API. The agent page calls it with the agent's Herald
//! token; it checks the token, then calls fanout's HTTP API with the API key, which never
//! reaches a browser.
//!
//! - `POST /desk/end` `{"company", "customer"}`: ends the customer's session on every gateway
//!   and transport (`disconnect`, told not to reconnect, the tokens issued until now revoked).
//! - `POST /desk/move` `{"company", "customer", "to"}`: moves the customer from the calling
//!   agent's room to agent `to`'s (`subscribe` both to it, a system message in it,
//!   `unsubscribe` both from the old one); answers `{"room"}`, the new room.
//!
//! Rooms are `support:<company>:<customer>:<agent>`, one customer's conversation with one
//! agent. An agent's token grants `support:<company>:*`; a customer's grants
//! `support:<company>:<customer>:*`. Which agents a company has is this backend's own data
//! (`--agent company:agent`, as an app keeps it in its database): a caller must be one of
//! them, and may act only on a customer in its own room now (asked of Herald's presence).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use herald_proto::claims::Claims;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where the agent page reaches this backend.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:9400")]
    listen: SocketAddr,
    /// fanout's `--api-listen`.
    #[arg(long, env = "DEMO_HERALD_API", default_value = "127.0.0.1:9300")]
    api: SocketAddr,
    /// One of fanout's `--api-key`s.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: String,
    /// The gateways' `--auth-hs256-secret`: agents' tokens are checked with it.
    #[arg(long, env = "HERALD_AUTH_HS256_SECRET", hide_env_values = true)]
    auth_hs256_secret: String,
    /// The desk's agents, `company:agent` (repeat, or a comma list).
    #[arg(long = "agent", env = "DEMO_AGENTS", value_delimiter = ',', required = true)]
    agents: Vec<String>,
}

/// What the desk's requests may carry.
const MAX_BODY: usize = 4 * 1024;
/// How long one call of the server API may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// The close code a customer whose session an agent ended sees (4000–4999: the app's own).
const ENDED: u16 = 4001;
/// How long one desk request may take, body and server API calls included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Desk requests in hand at once; more are answered 503.
const MAX_IN_HAND: usize = 64;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut agents = HashSet::new();
    for a in &args.agents {
        match a.split_once(':') {
            Some((company, agent)) if name(company) && name(agent) => {
                agents.insert((company.to_owned(), agent.to_owned()));
            }
            _ => anyhow::bail!("--agent {a:?}: expected company:agent, plain names"),
        }
    }
    let desk = Arc::new(Desk {
        api: args.api,
        api_key: HeaderValue::from_str(&args.api_key).context("--api-key is not a header value")?,
        key: jsonwebtoken::DecodingKey::from_secret(args.auth_hs256_secret.as_bytes()),
        agents,
        in_hand: tokio::sync::Semaphore::new(MAX_IN_HAND),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(listen = %args.listen, api = %args.api, "Support desk backend ready");
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "Accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let desk = Arc::clone(&desk);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let desk = Arc::clone(&desk);
                async move {
                    let Ok(_held) = desk.in_hand.try_acquire() else {
                        return Ok::<_, Infallible>(cors(refused(Refused(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "busy; retry".into(),
                        ))));
                    };
                    let answer = tokio::time::timeout(REQUEST_TIMEOUT, desk.route(req)).await;
                    Ok(cors(answer.unwrap_or_else(|_| {
                        refused(Refused(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "the request took too long".into(),
                        ))
                    })))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "Connection ended with an error");
            }
        });
    }
}

struct Desk {
    api: SocketAddr,
    api_key: HeaderValue,
    key: jsonwebtoken::DecodingKey,
    /// (company, agent) pairs.
    agents: HashSet<(String, String)>,
    in_hand: tokio::sync::Semaphore,
}

/// A desk request's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    company: String,
    customer: String,
    /// `move`: the agent who takes the customer.
    #[serde(default)]
    to: Option<String>,
}

/// A refused or failed desk request: its status and the error body Herald's API uses.
struct Refused(StatusCode, &'static str, String);

type Answer = Response<Full<Bytes>>;

impl Desk {
    async fn route(&self, req: Request<Incoming>) -> Answer {
        let path = req.uri().path().to_owned();
        let done = match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz" | "/readyz") => Ok(json!({"ready": true})),
            // A browser's preflight: answered by `cors` alone.
            (&Method::OPTIONS, _) => return respond(StatusCode::NO_CONTENT, None),
            (&Method::POST, "/desk/end") => match self.check(req).await {
                Ok((agent, ask)) => self.end(&agent, ask).await,
                Err(refused) => Err(refused),
            },
            (&Method::POST, "/desk/move") => match self.check(req).await {
                Ok((agent, ask)) => self.move_customer(&agent, ask).await,
                Err(refused) => Err(refused),
            },
            _ => Err(Refused(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint {path}"),
            )),
        };
        match done {
            Ok(result) => respond(StatusCode::OK, Some(json!({ "result": result }))),
            Err(r) => refused(r),
        }
    }

    /// The calling agent's id and the request's body, checked.
    async fn check(&self, req: Request<Incoming>) -> Result<(String, Ask), Refused> {
        let agent = self.agent(req.headers().get(AUTHORIZATION))?;
        let body = Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| bad(format!("the body: {e}")))?
            .to_bytes();
        let ask: Ask = serde_json::from_slice(&body).map_err(|e| bad(format!("the body: {e}")))?;
        let fields = [
            ("company", Some(&ask.company)),
            ("customer", Some(&ask.customer)),
            ("to", ask.to.as_ref()),
        ];
        for (field, value) in fields {
            if value.is_some_and(|v| !name(v)) {
                return Err(bad(format!("`{field}` must be 1–32 letters, digits, `-` or `_`")));
            }
        }
        let company_wide = format!("support:{}:*", ask.company);
        let is_agent = |who: &str| self.agents.contains(&(ask.company.clone(), who.to_owned()));
        if !agent.herald.as_ref().is_some_and(|g| g.sub.contains(&company_wide)) || !is_agent(&agent.sub) {
            return Err(forbidden(format!("not an agent of {}", ask.company)));
        }
        if let Some(to) = ask.to.as_deref() {
            if to == agent.sub {
                return Err(bad(format!("{} is with {to} already", ask.customer)));
            }
            if !is_agent(to) {
                return Err(forbidden(format!("{to} is not an agent of {}", ask.company)));
            }
        }
        // The customer is in the caller's room now: an agent acts on its own customers only.
        let room = format!("support:{}:{}:{}", ask.company, ask.customer, agent.sub);
        let presence = self.api("presence", json!({ "room": room })).await?;
        let here = presence["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["user"] == ask.customer.as_str()));
        if !here {
            return Err(forbidden(format!("{} is not in your room", ask.customer)));
        }
        Ok((agent.sub, ask))
    }

    /// The calling agent's claims, from `Authorization: Bearer <token>`.
    fn agent(&self, header: Option<&HeaderValue>) -> Result<Claims, Refused> {
        let unauthorized = |why: String| Refused(StatusCode::UNAUTHORIZED, "unauthorized", why);
        let token = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("send the agent's token as `Authorization: Bearer <token>`".into()))?;
        // As strict as the gateways: no leeway, `nbf` honoured.
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<Claims>(token, &self.key, &validation)
            .map(|t| t.claims)
            .map_err(|e| unauthorized(format!("the agent's token: {e}")))
    }

    async fn end(&self, agent: &str, ask: Ask) -> Result<Value, Refused> {
        let reached = self
            .api(
                "disconnect",
                json!({
                    "user": ask.customer,
                    "code": ENDED,
                    "reason": "Your support session was ended by the agent",
                    "reconnect": false,
                    "revoke": true,
                }),
            )
            .await?;
        info!(%agent, company = %ask.company, customer = %ask.customer, "Session ended");
        Ok(reached)
    }

    async fn move_customer(&self, from: &str, ask: Ask) -> Result<Value, Refused> {
        let to = ask
            .to
            .as_deref()
            .ok_or_else(|| bad("`to`: the agent who takes the customer".into()))?;
        if to == from {
            return Err(bad(format!("{} is with {to} already", ask.customer)));
        }
        let (company, customer) = (&ask.company, &ask.customer);
        let old = format!("support:{company}:{customer}:{from}");
        let new = format!("support:{company}:{customer}:{to}");
        // Both into the new room first, then the note in it (both get it live), then both out
        // of the old one: the customer is never without a room.
        self.api("subscribe", json!({"user": to, "room": new})).await?;
        self.api("subscribe", json!({"user": customer, "room": new})).await?;
        let note = format!("{from} handed this conversation to {to}");
        // With a key: a retried move stores its note once.
        let key = format!("moved-from-{from}");
        self.api(
            "publish",
            json!({"room": new, "type": "system", "data": {"text": note}, "key": key}),
        )
        .await?;
        self.api("unsubscribe", json!({"user": customer, "room": old})).await?;
        self.api("unsubscribe", json!({"user": from, "room": old})).await?;
        info!(%company, %customer, %from, %to, "Customer moved");
        Ok(json!({ "room": new }))
    }

    /// `POST /api/<method>` on fanout; the answer's `result`, or its error as this request's.
    async fn api(&self, method: &str, body: Value) -> Result<Value, Refused> {
        let unavailable = |e: String| {
            warn!(%method, error = %e, "Server API call failed");
            Refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("Herald's server API: {e}"),
            )
        };
        let call = async {
            let io = tokio::net::TcpStream::connect(self.api)
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = Request::post(format!("/api/{method}"))
                .header(hyper::header::HOST, self.api.to_string())
                .header("x-api-key", self.api_key.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|e| e.to_string())?;
            let res = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let bytes = Limited::new(res.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let answer: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{status}: {e}"))?;
            Ok::<_, String>((status, answer))
        };
        let (status, mut answer) = tokio::time::timeout(API_TIMEOUT, call)
            .await
            .map_err(|_| unavailable(format!("no answer within {API_TIMEOUT:?}")))?
            .map_err(unavailable)?;
        if status.is_success() {
            return Ok(answer["result"].take());
        }
        let message = answer["error"]["message"].as_str().unwrap_or("no message").to_owned();
        // What the request asked is refused as it is; anything else is this backend's trouble.
        if status == StatusCode::BAD_REQUEST {
            return Err(bad(format!("{method}: {message}")));
        }
        Err(unavailable(format!("{method}: {status} {message}")))
    }
}

/// A name that fits a room name's part: 1–32 letters, digits, `-` or `_`.
fn name(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn forbidden(message: String) -> Refused {
    Refused(StatusCode::FORBIDDEN, "forbidden", message)
}

fn bad(message: String) -> Refused {
    Refused(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn refused(Refused(status, code, message): Refused) -> Answer {
    respond(status, Some(json!({"error": {"code": code, "message": message}})))
}

fn respond(status: StatusCode, body: Option<Value>) -> Answer {
    let json = body.is_some();
    let mut res = Response::new(Full::new(body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()))));
    *res.status_mut() = status;
    if json {
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    res
}

/// The agent page comes from a gateway's origin, and authenticates with a bearer token (no
/// cookies): any origin may call.
fn cors(mut res: Answer) -> Answer {
    let h = res.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    res
}

#[cfg(test)]
mod tests {
    use super::name;

    #[test]
    fn names_fit_a_room_part() {
        for ok in ["ann", "agent-7", "a_b", &"x".repeat(32)] {
            assert!(name(ok), "{ok}");
        }
        for bad in ["", "a:b", "a b", "ann\n", "é", "*", &"x".repeat(33)] {
            assert!(!name(bad), "{bad:?}");
        }
    }
}
