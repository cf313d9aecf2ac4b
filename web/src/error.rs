//! The errors of `spindle web`: starting it ([`WebError`]) and answering
//! one API request ([`ApiError`], an HTTP status and a message).

use spindle_client::ClientError;

/// Why `spindle web` could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The daemon did not answer at `--socket`.
    #[error(
        "cannot reach the daemon at {addr}: {source} (is spindled running? pass --socket PATH)"
    )]
    Daemon {
        /// The address tried.
        addr: String,
        /// The client's error.
        source: ClientError,
    },
    /// `--listen` could not be bound.
    #[error("cannot listen on {addr}: {reason} (pick another --listen ADDR, e.g. 127.0.0.1:0)")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the HTTP server said.
        reason: String,
    },
    /// `--listen` is not `HOST:PORT` with an IP address.
    #[error("--listen {0:?} is not IP:PORT (e.g. 127.0.0.1:8425 or [::1]:8425)")]
    BadListen(String),
    /// A thread (sampler or HTTP worker) could not be started.
    #[error("cannot start a thread: {0} (too many processes or threads?)")]
    Thread(std::io::Error),
    /// No random token could be made for the actions.
    #[error("cannot read /dev/urandom for an action token: {0} (pass --token or --read-only)")]
    Token(std::io::Error),
}

/// One request's failure: the HTTP status and a message for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        match e {
            ClientError::NotFound(m) => ApiError::not_found(m),
            ClientError::InvalidArgument(m) => ApiError::bad_request(m),
            e => ApiError::new(502, format!("daemon: {e}")),
        }
    }
}
