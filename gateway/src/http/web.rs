//! The browser client (`/herald.js`, `/herald.classic.js`) and the demo pages (`/`, the chat
//! room; `/support.html`, the support desk), compiled into the binary.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{header, Response};

use crate::state::Shared;

use super::{full, Body};

const HERALD_JS: &str = include_str!("../../web/herald.js");
const INDEX_HTML: &str = include_str!("../../web/index.html");
const SUPPORT_HTML: &str = include_str!("../../web/support.html");
const DEMO_JS: &str = include_str!("../../web/demo.js");
const SUPPORT_JS: &str = include_str!("../../web/support.js");

/// The pages' policy: scripts only from this origin (the pages have no inline script, so an
/// injected one cannot run), images only from here or inline, no plugins, no framing. Clients
/// may connect to other gateways (`?gateways=`), so `connect-src` allows any http(s)/ws(s).
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
     connect-src 'self' http: https: ws: wss:; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";
static CLASSIC_JS: LazyLock<String> = LazyLock::new(classic);

/// The page or script at `path`, if there is one.
pub(crate) fn asset(shared: &Shared, path: &str) -> Option<Response<Body>> {
    let (body, kind): (Bytes, &str) = match path {
        "/" | "/index.html" => (
            INDEX_HTML
                .replace("{{MAX_MESSAGE_BYTES}}", &shared.config.max_message_bytes.to_string())
                .into(),
            "text/html; charset=utf-8",
        ),
        "/support" | "/support.html" => (Bytes::from_static(SUPPORT_HTML.as_bytes()), "text/html; charset=utf-8"),
        "/herald.js" => (
            Bytes::from_static(HERALD_JS.as_bytes()),
            "text/javascript; charset=utf-8",
        ),
        "/herald.classic.js" => (
            Bytes::from_static(CLASSIC_JS.as_bytes()),
            "text/javascript; charset=utf-8",
        ),
        "/demo.js" => (Bytes::from_static(DEMO_JS.as_bytes()), "text/javascript; charset=utf-8"),
        "/support.js" => (
            Bytes::from_static(SUPPORT_JS.as_bytes()),
            "text/javascript; charset=utf-8",
        ),
        _ => return None,
    };
    let mut page = Response::builder()
        .header(header::CONTENT_TYPE, kind)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        // Page URLs may carry a token: never send them on as a Referer.
        .header(header::REFERRER_POLICY, "no-referrer");
    if kind.starts_with("text/html") {
        page = page.header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    }
    Some(page.body(full(body)).expect("static response parts"))
}

/// The module as a classic script: no `export`, `window.Herald` instead.
fn classic() -> String {
    let body = HERALD_JS
        .replace("export const Herald =", "const Herald =")
        .replace("export default Herald;", "globalThis.Herald = Herald;");
    format!("(function () {{\n\"use strict\";\n{body}\n}})();\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_classic_build_has_no_exports() {
        let classic = super::classic();
        assert!(!classic.contains("export "));
        assert!(classic.contains("globalThis.Herald = Herald;"));
    }
}
