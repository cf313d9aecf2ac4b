//! One connection to the daemon per HTTP worker thread (and one for the
//! sampler), opened on first use and opened again after an error left it
//! broken, so a daemon restart costs one failed request, not the process.

use std::time::Duration;

use spindle_client::{Client, ClientError, ConnectOptions};

/// How long one command may wait on the daemon before the request fails
/// (502): the page must not hang on a stuck daemon.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazily (re)connected [`Client`].
pub(crate) struct Daemon {
    addr: String,
    opts: ConnectOptions,
    client: Option<Client>,
    /// Whether the daemon speaks Spindle's extensions, once known.
    extensions: Option<bool>,
}

impl Daemon {
    pub(crate) fn new(addr: &str, opts: ConnectOptions) -> Daemon {
        Daemon { addr: addr.to_string(), opts, client: None, extensions: None }
    }

    /// The address it talks to.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    fn client(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.as_ref().is_none_or(Client::is_broken) {
            let mut c = Client::connect_with(&self.addr, self.opts)?;
            c.set_io_timeout(Some(IO_TIMEOUT))?;
            self.client = Some(c);
        }
        self.client.as_mut().ok_or_else(|| ClientError::InvalidArgument("no connection".into()))
    }

    /// Runs `f` on the connection, reconnecting first if needed.
    pub(crate) fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let c = self.client()?;
        let r = f(c);
        if c.is_broken() {
            self.client = None;
        }
        r
    }

    /// Whether the daemon has Spindle's extension commands (`stats-tube-ext`,
    /// `clear-tube`, ...): spindled does, beanstalkd does not.
    pub(crate) fn extensions(&mut self) -> Result<bool, ClientError> {
        if let Some(x) = self.extensions {
            return Ok(x);
        }
        let x = self.with(Client::supports_extensions)?;
        self.extensions = Some(x);
        Ok(x)
    }
}
