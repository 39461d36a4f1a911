//! Connecting as natscli does: flags, the `NATS_*` variables, and natscli
//! contexts (`~/.config/nats/context/NAME.json`, the selected one named in
//! `~/.config/nats/context.txt`; `XDG_CONFIG_HOME` moves `~/.config`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::Fatal;

/// The connection flags natscli users know.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnectArgs {
    /// NATS servers (comma-separated).
    #[arg(short = 's', long = "server", env = "NATS_URL", global = true)]
    pub(crate) server: Option<String>,
    /// A user credentials file.
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub(crate) creds: Option<PathBuf>,
    /// User name (with --password).
    #[arg(long, env = "NATS_USER", global = true)]
    pub(crate) user: Option<String>,
    /// Password.
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// The TLS certificate authority chain (PEM); connects with TLS.
    #[arg(long, env = "NATS_CA", global = true)]
    pub(crate) tlsca: Option<PathBuf>,
    /// The natscli context to use (default: the selected one, if any).
    #[arg(long, env = "NATS_CONTEXT", global = true)]
    pub(crate) context: Option<String>,
    /// Seconds to wait for the server (connecting, requests).
    #[arg(long, env = "NATS_TIMEOUT", default_value_t = 5.0, global = true)]
    pub(crate) timeout: f64,
}

/// A natscli context file: the fields used here.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct NatsContext {
    url: String,
    token: String,
    user: String,
    password: String,
    creds: String,
    nkey: String,
    cert: String,
    key: String,
    ca: String,
    nsc: String,
    inbox_prefix: String,
    tls_first: bool,
    pub(crate) jetstream_domain: String,
    pub(crate) jetstream_api_prefix: String,
}

/// Where natscli keeps its configuration.
fn config_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir).join("nats")),
        None => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/nats")),
    }
}

/// The context `--context` names, or the selected one; `None` when neither.
pub(crate) fn load_context(args: &ConnectArgs) -> Result<Option<NatsContext>, Fatal> {
    let Some(dir) = config_dir() else {
        return match &args.context {
            Some(name) => Err(Fatal(format!(
                "context `{name}`: neither XDG_CONFIG_HOME nor HOME is set"
            ))),
            None => Ok(None),
        };
    };
    let name = match &args.context {
        Some(name) => name.clone(),
        None => match std::fs::read_to_string(dir.join("context.txt")) {
            Ok(selected) if !selected.trim().is_empty() => selected.trim().to_owned(),
            _ => return Ok(None),
        },
    };
    if name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Fatal(format!("context `{name}`: not a context name")));
    }
    let path = dir.join("context").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Fatal(format!(
            "context `{name}`: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let context: NatsContext = serde_json::from_str(&text).map_err(|e| {
        Fatal(format!(
            "context `{name}`: {} is not valid: {e}",
            path.display()
        ))
    })?;
    if !context.nsc.is_empty() {
        return Err(Fatal(format!(
            "context `{name}` uses an nsc:// profile, which needs the nats CLI: set `url` and \
             `creds` in {} instead",
            path.display()
        )));
    }
    Ok(Some(context))
}

/// OTLP export when an endpoint is configured (the replay spans then reach the
/// collector); otherwise only the W3C propagator, so replays still carry the
/// failed message's trace.
pub(crate) fn telemetry() -> Result<Option<nats_otel::otlp::TelemetryGuard>, Fatal> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(None);
    }
    let settings = nats_otel::otlp::Settings::from_env().with_default_service_name("nats-otel");
    nats_otel::otlp::init_with(settings)
        .map(Some)
        .map_err(|e| Fatal(format!("telemetry setup: {e}")))
}

/// Connects with the flags, variables and context; the error names the servers.
pub(crate) async fn connect(args: &ConnectArgs) -> Result<nats_otel::Client, Fatal> {
    let context = load_context(args)?.unwrap_or_default();
    let pick = |flag: &Option<String>, from_context: &str| {
        flag.clone()
            .or_else(|| (!from_context.is_empty()).then(|| from_context.to_owned()))
    };
    let path = |flag: &Option<PathBuf>, from_context: &str| {
        flag.clone()
            .or_else(|| (!from_context.is_empty()).then(|| expand(from_context)))
    };
    let servers =
        pick(&args.server, &context.url).unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            Fatal(format!(
                "--timeout {}: expected a positive number of seconds",
                args.timeout
            ))
        })?;
    let mut options = nats_otel::ConnectOptions::new()
        .name("nats-otel")
        .connection_timeout(timeout)
        .request_timeout(Some(timeout));
    if let Some(creds) = path(&args.creds, &context.creds) {
        options = options
            .credentials_file(&creds)
            .await
            .map_err(|e| Fatal(format!("credentials {}: {e}", creds.display())))?;
    }
    match (
        pick(&args.user, &context.user),
        pick(&args.password, &context.password),
    ) {
        (Some(user), password) => {
            options = options.user_and_password(user, password.unwrap_or_default());
        }
        (None, Some(_)) => return Err(Fatal("--password needs --user".into())),
        (None, None) => {}
    }
    if !context.token.is_empty() {
        options = options.token(context.token.clone());
    }
    if !context.nkey.is_empty() {
        let file = expand(&context.nkey);
        let seed = std::fs::read_to_string(&file)
            .map_err(|e| Fatal(format!("nkey {}: {e}", file.display())))?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(ca) = path(&args.tlsca, &context.ca) {
        options = options.add_root_certificates(ca).require_tls(true);
    }
    if !context.cert.is_empty() && !context.key.is_empty() {
        options = options.add_client_certificate(expand(&context.cert), expand(&context.key));
    }
    if !context.inbox_prefix.is_empty() {
        options = options.custom_inbox_prefix(&context.inbox_prefix);
    }
    if context.tls_first {
        options = options.tls_first();
    }
    let addresses: Vec<async_nats::ServerAddr> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| Fatal(format!("server `{s}`: {e}"))))
        .collect::<Result<_, _>>()?;
    if addresses.is_empty() {
        return Err(Fatal("no server given".into()));
    }
    let inst = nats_otel::Instrumentation::builder()
        .with_propagator(nats_otel::W3cPropagator::new())
        .with_metrics(false)
        .build();
    inst.connect(addresses, options)
        .await
        .map_err(|e| Fatal(format!("cannot connect to {servers}: {e}")))
}

/// The JetStream context the context file asks for (domain or API prefix).
pub(crate) fn jetstream(
    client: &nats_otel::Client,
    args: &ConnectArgs,
) -> Result<nats_otel::jetstream::Context, Fatal> {
    let context = load_context(args)?.unwrap_or_default();
    Ok(if !context.jetstream_domain.is_empty() {
        nats_otel::jetstream::with_domain(client, &context.jetstream_domain)
    } else if !context.jetstream_api_prefix.is_empty() {
        nats_otel::jetstream::with_prefix(client, &context.jetstream_api_prefix)
    } else {
        nats_otel::jetstream::new(client)
    })
}

/// `~/x` → `$HOME/x`, as natscli expands paths in contexts.
fn expand(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}
