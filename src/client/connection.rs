//! The connection itself: flushing, a real round trip (`ping`), draining,
//! reconnecting, the server pool and the connection's statistics, as async-nats
//! has them (nothing here is traced).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::client::{
    DrainError, FlushError, ReconnectError, Request, RequestErrorKind, ServerPoolError,
    SetServerPoolError, Statistics,
};
use async_nats::connection::State;
use async_nats::{Server, ServerInfo, ToServerAddrs};

use super::Client;

/// How long [`Client::ping`] waits when the client has no request timeout.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`Client::ping`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PingErrorKind {
    /// The server did not answer within the client's request timeout.
    TimedOut,
    /// A responder answered the ping's inbox subject: not a server round trip.
    Answered,
    /// The request could not be sent, or the server refused it.
    Other,
}

impl std::fmt::Display for PingErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TimedOut => "ping timed out",
            Self::Answered => "ping answered by a responder instead of the server",
            Self::Other => "ping failed",
        })
    }
}

/// The error of [`Client::ping`].
pub type PingError = async_nats::error::Error<PingErrorKind>;

fn ping_error_kind(kind: RequestErrorKind) -> PingErrorKind {
    match kind {
        RequestErrorKind::TimedOut => PingErrorKind::TimedOut,
        _ => PingErrorKind::Other,
    }
}

impl Client {
    /// Flushes the connection's write buffer: resolves once what was published
    /// before has been written to the socket, not when the server has read it. To
    /// know the server has seen everything sent before (a subscription before
    /// announcing readiness, say), await [`ping`](Self::ping).
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.inner.flush().await
    }

    /// A round trip to the server: resolves once the server has processed every
    /// command this connection sent before it (subscriptions included), with the
    /// time the round trip took. Untraced.
    ///
    /// It sends a request to a fresh inbox subject nobody listens on; the server's
    /// no-responders reply is the answer. A server that refuses this client publishing
    /// to its own inbox prefix makes it fail with the refusal (or time out).
    pub async fn ping(&self) -> Result<Duration, PingError> {
        let started = Instant::now();
        let subject = self.inner.new_inbox();
        let request = Request::new().timeout(Some(self.inner.timeout().unwrap_or(PING_TIMEOUT)));
        match self.request_or_refused(subject.into(), request).await {
            Err(err) if err.kind() == RequestErrorKind::NoResponders => Ok(started.elapsed()),
            Err(err) => Err(PingError::with_source(ping_error_kind(err.kind()), err)),
            Ok(_) => Err(PingError::new(PingErrorKind::Answered)),
        }
    }

    /// Drains all subscriptions, stops new publishes, flushes what is buffered, then
    /// closes the connection (async-nats's `Client::drain`).
    pub async fn drain(&self) -> Result<(), DrainError> {
        self.inner.drain().await
    }

    /// Drops the connection and reconnects.
    pub async fn force_reconnect(&self) -> Result<(), ReconnectError> {
        self.inner.force_reconnect().await
    }

    /// Bytes and messages in and out, and connects, since the client was made.
    pub fn statistics(&self) -> Arc<Statistics> {
        self.inner.statistics()
    }

    /// The default request timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.inner.timeout()
    }

    /// The largest payload the server accepts.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    /// Whether the connected server is at least `major.minor.patch`.
    pub fn is_server_compatible(&self, major: i64, minor: i64, patch: i64) -> bool {
        self.inner.is_server_compatible(major, minor, patch)
    }

    /// The servers this client may connect to.
    pub async fn server_pool(&self) -> Result<Vec<Server>, ServerPoolError> {
        self.inner.server_pool().await
    }

    /// Replaces the servers this client may connect to.
    pub async fn set_server_pool<A: ToServerAddrs>(
        &self,
        addrs: A,
    ) -> Result<(), SetServerPoolError> {
        self.inner.set_server_pool(addrs).await
    }

    /// The server's INFO, or `None` before the first connection.
    pub fn try_server_info(&self) -> Option<ServerInfo> {
        self.inner.try_server_info()
    }

    /// A new unique inbox subject.
    pub fn new_inbox(&self) -> String {
        self.inner.new_inbox()
    }

    /// The server's INFO for the current connection.
    pub fn server_info(&self) -> ServerInfo {
        self.inner.server_info()
    }

    /// The state of the connection.
    pub fn connection_state(&self) -> State {
        self.inner.connection_state()
    }
}
