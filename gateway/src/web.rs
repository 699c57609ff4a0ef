//! The browser client (`/herald.js`, `/herald.classic.js`) and the demo pages (`/`, the chat
//! room; `/support.html`, the support desk), compiled into the binary.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{header, Response};

use crate::server::{full, Body, Shared};

const HERALD_JS: &str = include_str!("../web/herald.js");
const INDEX_HTML: &str = include_str!("../web/index.html");
const SUPPORT_HTML: &str = include_str!("../web/support.html");
static CLASSIC_JS: LazyLock<String> = LazyLock::new(classic);

/// The page or script at `path`, if there is one.
pub fn asset(shared: &Shared, path: &str) -> Option<Response<Body>> {
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
        _ => return None,
    };
    Some(
        Response::builder()
            .header(header::CONTENT_TYPE, kind)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(full(body))
            .expect("static response parts"),
    )
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
