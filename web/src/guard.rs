//! Who may do what: every request must name an allowed `Host` (when bound
//! to loopback, so a DNS-rebinding page cannot read the API), and an
//! action (`POST`) must come from the page itself: no `--read-only`, the
//! token in `X-Spindle-Token`, a JSON body, and an `Origin` (when the
//! browser sends one) equal to the page's own. A cross-site form or
//! `fetch` cannot set that header without a CORS preflight, which this
//! server never grants.

use std::net::SocketAddr;

use crate::error::ApiError;

/// The header that carries the action token.
pub(crate) const TOKEN_HEADER: &str = "X-Spindle-Token";

/// The request's headers that matter here.
#[derive(Debug, Default)]
pub(crate) struct Seen<'a> {
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub fetch_site: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub token: Option<&'a str>,
}

/// The checks, configured once.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    token: Option<String>,
    read_only: bool,
    /// `Host` values accepted; None: any (bound to a non-loopback address,
    /// where the operator chose the names).
    hosts: Option<Vec<String>>,
}

/// Constant-time comparison, so the token cannot be guessed by timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Guard {
    pub(crate) fn new(token: Option<String>, read_only: bool, bound: SocketAddr) -> Guard {
        let hosts = bound.ip().is_loopback().then(|| {
            let p = bound.port();
            vec![
                format!("127.0.0.1:{p}"),
                format!("localhost:{p}"),
                format!("[::1]:{p}"),
                bound.to_string(),
            ]
        });
        Guard { token, read_only, hosts }
    }

    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// Every request: the `Host` must be one this server answers to.
    pub(crate) fn check_host(&self, seen: &Seen<'_>) -> Result<(), ApiError> {
        match (&self.hosts, seen.host) {
            (Some(ok), Some(h)) if !ok.iter().any(|x| x.eq_ignore_ascii_case(h)) => {
                Err(ApiError::forbidden(format!(
                    "Host {h:?} is not this server's (open it as http://{}/)",
                    ok.first().map_or("127.0.0.1", String::as_str)
                )))
            }
            _ => Ok(()),
        }
    }

    /// An action: allowed only from the page, with the token.
    pub(crate) fn check_action(&self, seen: &Seen<'_>) -> Result<(), ApiError> {
        if self.read_only {
            return Err(ApiError::forbidden("spindle web runs with --read-only: no actions"));
        }
        if let Some(site) = seen.fetch_site {
            if site != "same-origin" && site != "none" {
                return Err(ApiError::forbidden(format!("cross-site request refused ({site})")));
            }
        }
        if let Some(origin) = seen.origin {
            let own = seen.host.map(|h| format!("http://{h}"));
            if own.as_deref() != Some(origin) {
                return Err(ApiError::forbidden(format!(
                    "cross-origin request refused (Origin {origin:?})"
                )));
            }
        }
        if !seen.content_type.is_some_and(|c| c.starts_with("application/json")) {
            return Err(ApiError::bad_request(
                "actions take a JSON body (Content-Type: application/json)",
            ));
        }
        let Some(want) = &self.token else {
            return Err(ApiError::forbidden("no action token configured"));
        };
        match seen.token {
            Some(t) if same(t.as_bytes(), want.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::forbidden("wrong action token")),
            None => Err(ApiError::forbidden(format!(
                "actions need the token (header {TOKEN_HEADER}; the page asks for it)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn guard(read_only: bool) -> Guard {
        Guard::new(Some("s3cret".into()), read_only, "127.0.0.1:8425".parse().unwrap())
    }

    fn ok_action() -> Seen<'static> {
        Seen {
            host: Some("127.0.0.1:8425"),
            origin: Some("http://127.0.0.1:8425"),
            fetch_site: Some("same-origin"),
            content_type: Some("application/json"),
            token: Some("s3cret"),
        }
    }

    #[test]
    fn the_page_may_act_with_its_token() {
        assert_eq!(guard(false).check_action(&ok_action()), Ok(()));
    }

    #[test]
    fn cross_site_wrong_token_and_read_only_are_refused() {
        let g = guard(false);
        let s = Seen { origin: Some("http://evil.example"), ..ok_action() };
        assert_eq!(g.check_action(&s).unwrap_err().status, 403);
        let s = Seen { fetch_site: Some("cross-site"), ..ok_action() };
        assert_eq!(g.check_action(&s).unwrap_err().status, 403);
        let s = Seen { token: Some("s3cres"), ..ok_action() };
        assert_eq!(g.check_action(&s).unwrap_err().status, 403);
        let s = Seen { token: None, ..ok_action() };
        assert_eq!(g.check_action(&s).unwrap_err().status, 403);
        let s = Seen { content_type: Some("text/plain"), ..ok_action() };
        assert_eq!(g.check_action(&s).unwrap_err().status, 400);
        assert_eq!(guard(true).check_action(&ok_action()).unwrap_err().status, 403);
    }

    #[test]
    fn a_rebound_host_is_refused_on_loopback() {
        let g = guard(false);
        assert!(g.check_host(&Seen { host: Some("localhost:8425"), ..Seen::default() }).is_ok());
        let s = Seen { host: Some("evil.example:8425"), ..Seen::default() };
        assert_eq!(g.check_host(&s).unwrap_err().status, 403);
    }
}
