//! Connecting: `ConnectOptions`, async-nats's builder with the connection's
//! events wired to this crate on every connect path.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{
    Auth, AuthError, ConnectError, Event, ReconnectToServer, Server, ServerInfo, ToServerAddrs,
};

use crate::client::Client;
use crate::health::EventCounters;
use crate::instrumentation::Instrumentation;

/// A user's event callback, kept so it can run after ours.
type EventCallback =
    Arc<dyn Fn(Event) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> + Send + Sync>;

/// Connects to `addrs` with default options and the default [`Instrumentation`]
/// (global tracer, meter and propagator), built for this connection; to connect
/// many clients, connect them through one [`Instrumentation`].
pub async fn connect<A: ToServerAddrs>(addrs: A) -> Result<Client, ConnectError> {
    ConnectOptions::new().connect(addrs).await
}

/// Connects with `options` and the default [`Instrumentation`].
pub async fn connect_with_options<A: ToServerAddrs>(
    addrs: A,
    options: ConnectOptions,
) -> Result<Client, ConnectError> {
    options.connect(addrs).await
}

impl Instrumentation {
    /// Connects with `options` and these settings.
    pub async fn connect<A: ToServerAddrs>(
        &self,
        addrs: A,
        options: ConnectOptions,
    ) -> Result<Client, ConnectError> {
        options.connect_instrumented(addrs, self.clone()).await
    }

    /// Connects with `options`, running `callback` on every connection event
    /// after this crate has counted it.
    #[deprecated(
        since = "0.2.0",
        note = "every connect path now chains callbacks: use `ConnectOptions::event_callback` and `Instrumentation::connect`"
    )]
    pub async fn connect_with_event_callback<A, F, Fut>(
        &self,
        addrs: A,
        options: ConnectOptions,
        callback: F,
    ) -> Result<Client, ConnectError>
    where
        A: ToServerAddrs,
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + Sync + 'static,
    {
        self.connect(addrs, options.event_callback(callback)).await
    }
}

/// Connection options: the same builder as [`async_nats::ConnectOptions`] (same
/// methods, same arguments), whose connections are instrumented.
///
/// Every connection made from it hands the connection's events to this crate
/// first (reconnect, slow-consumer and permission-violation counters; requests to
/// a subject the server refuses fail at once instead of waiting for their
/// timeout), then to the callback you set with
/// [`event_callback`](Self::event_callback), which keeps receiving every event.
///
/// Moving from async-nats is a change of the `use` line:
///
/// ```no_run
/// # async fn run() -> Result<(), async_nats::ConnectError> {
/// use nats_otel::ConnectOptions; // was: use async_nats::ConnectOptions;
///
/// let client = ConnectOptions::new()
///     .name("orders")
///     .event_callback(|event| async move { eprintln!("nats: {event}") })
///     .connect("127.0.0.1:4222")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct ConnectOptions {
    inner: async_nats::ConnectOptions,
    event_callback: Option<EventCallback>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("inner", &self.inner)
            .field("event_callback", &self.event_callback.is_some())
            .finish()
    }
}

/// Methods that take `self` and plain arguments, passed to async-nats's builder.
macro_rules! pass_through {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(self, $($arg: $ty),*) -> Self {
                self.map(|inner| inner.$name($($arg),*))
            }
        )*
    };
}

impl ConnectOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(
        mut self,
        f: impl FnOnce(async_nats::ConnectOptions) -> async_nats::ConnectOptions,
    ) -> Self {
        self.inner = f(self.inner);
        self
    }

    fn from_inner(inner: async_nats::ConnectOptions) -> Self {
        Self {
            inner,
            event_callback: None,
        }
    }

    /// Connects to `addrs` with the default [`Instrumentation`].
    pub async fn connect<A: ToServerAddrs>(self, addrs: A) -> Result<Client, ConnectError> {
        self.connect_instrumented(addrs, Instrumentation::default())
            .await
    }

    pub(crate) async fn connect_instrumented<A: ToServerAddrs>(
        self,
        addrs: A,
        instrumentation: Instrumentation,
    ) -> Result<Client, ConnectError> {
        let first = addrs
            .to_server_addrs()
            .ok()
            .and_then(|mut it| it.next())
            .map(|addr| (addr.host().to_owned(), addr.port()));
        let counters = Arc::new(EventCounters::default());
        let ours = counters.clone();
        let theirs = self.event_callback;
        let inner = self
            .inner
            .event_callback(move |event| {
                ours.record(&event);
                let theirs = theirs.clone();
                async move {
                    if let Some(callback) = theirs {
                        callback(event).await;
                    }
                }
            })
            .connect(addrs)
            .await?;
        Ok(Client::build(inner, instrumentation, first, Some(counters)))
    }

    /// Options authenticating through `callback`, which receives the server's
    /// nonce (see async-nats's `ConnectOptions::with_auth_callback`).
    pub fn with_auth_callback<F, Fut>(callback: F) -> Self
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Auth, AuthError>> + 'static + Send + Sync,
    {
        Self::from_inner(async_nats::ConnectOptions::with_auth_callback(callback))
    }

    /// Options authenticating with `token`.
    pub fn with_token(token: String) -> Self {
        Self::from_inner(async_nats::ConnectOptions::with_token(token))
    }

    /// Options authenticating with a user and password.
    pub fn with_user_and_password(user: String, pass: String) -> Self {
        Self::from_inner(async_nats::ConnectOptions::with_user_and_password(
            user, pass,
        ))
    }

    /// Options authenticating with an NKey seed.
    pub fn with_nkey(seed: String) -> Self {
        Self::from_inner(async_nats::ConnectOptions::with_nkey(seed))
    }

    /// Options authenticating with a JWT whose nonce `sign_cb` signs.
    pub fn with_jwt<F, Fut>(jwt: String, sign_cb: F) -> Self
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, AuthError>> + 'static + Send + Sync,
    {
        Self::from_inner(async_nats::ConnectOptions::with_jwt(jwt, sign_cb))
    }

    /// Authenticates with a JWT whose nonce `sign_cb` signs.
    pub fn jwt<F, Fut>(self, jwt: String, sign_cb: F) -> Self
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, AuthError>> + 'static + Send + Sync,
    {
        self.map(|inner| inner.jwt(jwt, sign_cb))
    }

    /// Options authenticating with the credentials file at `path`.
    pub async fn with_credentials_file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map(Self::from_inner)
    }

    /// Authenticates with the credentials file at `path`.
    pub async fn credentials_file(mut self, path: impl AsRef<Path>) -> std::io::Result<Self> {
        self.inner = self.inner.credentials_file(path).await?;
        Ok(self)
    }

    /// Options authenticating with credentials given as a string.
    pub fn with_credentials(creds: &str) -> std::io::Result<Self> {
        async_nats::ConnectOptions::with_credentials(creds).map(Self::from_inner)
    }

    /// Authenticates with credentials given as a string.
    pub fn credentials(mut self, creds: &str) -> std::io::Result<Self> {
        self.inner = self.inner.credentials(creds)?;
        Ok(self)
    }

    pass_through! {
        /// Authenticates with `token`.
        fn token(token: String);
        /// Authenticates with a user and password.
        fn user_and_password(user: String, pass: String);
        /// Authenticates with an NKey seed.
        fn nkey(seed: String);
        /// Trusts the root certificates in the PEM file at `path`.
        fn add_root_certificates(path: PathBuf);
        /// Presents this client certificate and key (PEM files).
        fn add_client_certificate(cert: PathBuf, key: PathBuf);
        /// Requires TLS.
        fn require_tls(is_required: bool);
        /// Starts TLS before the server's INFO (servers configured for it).
        fn tls_first();
        /// How often the client pings the server.
        fn ping_interval(ping_interval: Duration);
        /// Does not receive this connection's own publishes.
        fn no_echo();
        /// Messages buffered per subscription before it is a slow consumer.
        fn subscription_capacity(capacity: usize);
        /// How long a connection attempt may take.
        fn connection_timeout(timeout: Duration);
        /// The default request timeout (`None`: no timeout).
        fn request_timeout(timeout: Option<Duration>);
        /// Commands buffered between the client and its connection task.
        fn client_capacity(capacity: usize);
        /// Retries the first connect in the background instead of failing.
        fn retry_on_initial_connect();
        /// Accepts subjects without validating them.
        fn skip_subject_validation(skip: bool);
        /// Connects only to the given servers, not to those the cluster announces.
        fn ignore_discovered_servers();
        /// Tries servers in the order given instead of shuffled.
        fn retain_servers_order();
        /// Uses this TLS client configuration.
        fn tls_client_config(config: async_nats::rustls::ClientConfig);
        /// The read buffer's size.
        fn read_buffer_capacity(size: u16);
        /// Binds the client's socket to this local address.
        fn local_address(address: SocketAddr);
    }

    /// Receives every connection event (connected, disconnected, server errors,
    /// slow consumers …), after this crate has counted it. Unlike async-nats's,
    /// this callback does not replace the crate's own.
    pub fn event_callback<F, Fut>(mut self, callback: F) -> Self
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static + Send + Sync,
    {
        self.event_callback = Some(Arc::new(move |event| Box::pin(callback(event))));
        self
    }

    /// How long to wait before reconnect attempt number `attempts`.
    pub fn reconnect_delay_callback<F>(self, callback: F) -> Self
    where
        F: Fn(usize) -> Duration + Send + Sync + 'static,
    {
        self.map(|inner| inner.reconnect_delay_callback(callback))
    }

    /// Chooses the server of each reconnect attempt.
    pub fn reconnect_to_server_callback<F, Fut>(self, callback: F) -> Self
    where
        F: Fn(Vec<Server>, ServerInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<ReconnectToServer>> + Send + Sync + 'static,
    {
        self.map(|inner| inner.reconnect_to_server_callback(callback))
    }

    /// The prefix of this client's inbox subjects (default `_INBOX`).
    pub fn custom_inbox_prefix<T: ToString>(self, prefix: T) -> Self {
        self.map(|inner| inner.custom_inbox_prefix(prefix))
    }

    /// The connection's name, shown by the server.
    pub fn name<T: ToString>(self, name: T) -> Self {
        self.map(|inner| inner.name(name))
    }

    /// How many reconnect attempts before giving up (`None`: never).
    pub fn max_reconnects<T: Into<Option<usize>>>(self, max_reconnects: T) -> Self {
        self.map(|inner| inner.max_reconnects(max_reconnects))
    }
}
