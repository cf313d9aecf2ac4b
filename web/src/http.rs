//! The HTTP side: tiny_http workers that read a request, check it
//! (`guard.rs`), route it (`api.rs`) or serve an embedded asset, and write
//! the response with headers that keep the page to its own origin.

use std::io::Read;
use std::sync::Arc;

use serde_json::json;
use tiny_http::{Header, Method, Request, Response};

use crate::api::{self, Reply, Req};
use crate::assets;
use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::guard::{Guard, Seen, TOKEN_HEADER};
use crate::history::SharedHistory;

/// The largest action body read.
const MAX_BODY: u64 = 64 * 1024;

/// Headers on every response: no caching, no sniffing, no framing, and
/// a content security policy that runs only the page's own script (so a
/// payload that slipped into the DOM as markup still could not run).
const SECURITY: [(&str, &str); 5] = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
];

/// What every worker shares.
pub(crate) struct Shared {
    pub guard: Guard,
    pub history: SharedHistory,
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn find<'a>(req: &'a Request, name: &'static str) -> Option<&'a str> {
    req.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str())
}

fn respond(req: Request, status: u16, ctype: &str, body: Vec<u8>, extra: Option<Header>) {
    let mut r = Response::from_data(body).with_status_code(status);
    for h in SECURITY
        .iter()
        .filter_map(|(n, v)| header(n, v))
        .chain(header("Content-Type", ctype))
        .chain(extra)
    {
        r.add_header(h);
    }
    if let Err(e) = req.respond(r) {
        tracing::debug!("spindle web: writing a response failed: {e}");
    }
}

fn error(req: Request, e: &ApiError) {
    let body = json!({ "error": e.message }).to_string().into_bytes();
    respond(req, e.status, "application/json", body, None);
}

/// Answers one request.
pub(crate) fn serve(mut req: Request, shared: &Arc<Shared>, d: &mut Daemon) {
    let post = match req.method() {
        Method::Get | Method::Head => false,
        Method::Post => true,
        _ => return error(req, &ApiError::new(405, "only GET and POST")),
    };
    let path = req.url().split(['?', '#']).next().unwrap_or("/").to_string();
    let result = {
        let seen = Seen {
            host: find(&req, "Host"),
            origin: find(&req, "Origin"),
            fetch_site: find(&req, "Sec-Fetch-Site"),
            content_type: find(&req, "Content-Type"),
            token: find(&req, TOKEN_HEADER),
        };
        shared.guard.check_host(&seen).and_then(|()| {
            if post {
                shared.guard.check_action(&seen)
            } else {
                Ok(())
            }
        })
    };
    if let Err(e) = result {
        return error(req, &e);
    }
    if !post {
        if let Some((ctype, body)) = assets::get(&path) {
            return respond(req, 200, ctype, body.as_bytes().to_vec(), None);
        }
    }
    let mut body = Vec::new();
    if post {
        if let Err(e) = req.as_reader().take(MAX_BODY).read_to_end(&mut body) {
            return error(req, &ApiError::bad_request(format!("reading the body: {e}")));
        }
    }
    let r = Req {
        post,
        path: path.split('/').filter(|s| !s.is_empty()).map(api::percent_decode).collect(),
        body: &body,
    };
    match api::route(&r, d, &shared.history, shared.guard.read_only()) {
        Ok(Reply::Json(v)) => {
            respond(req, 200, "application/json", v.to_string().into_bytes(), None)
        }
        Ok(Reply::Text(ctype, s)) => respond(req, 200, ctype, s.into_bytes(), None),
        Ok(Reply::Download(bytes, name)) => {
            let cd = header("Content-Disposition", &format!("attachment; filename=\"{name}\""));
            respond(req, 200, "application/octet-stream", bytes, cd)
        }
        Err(e) => error(req, &e),
    }
}
