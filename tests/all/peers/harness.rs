//! Running the interop peers (`interop/python/peer.py`, `interop/node/peer.mjs`)
//! and reading the spans they made.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use opentelemetry_sdk::trace::SpanData;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::NatsServer;

/// A span a peer made.
#[derive(Debug, Deserialize)]
pub(crate) struct PeerSpan {
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) parent_span_id: Option<String>,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(super) attributes: serde_json::Map<String, serde_json::Value>,
}

impl PeerSpan {
    pub(super) fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(|v| v.as_str())
    }
}

/// The language of an interop peer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lang {
    /// `interop/python/peer.py`: nats-py and the OpenTelemetry Python SDK.
    Python,
    /// `interop/node/peer.mjs`: the `nats` client and OpenTelemetry JS.
    Node,
}

impl Lang {
    /// The command that runs this peer's script, with its dependencies' path.
    fn command(self) -> tokio::process::Command {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        match self {
            Lang::Python => {
                let python =
                    std::env::var("NATS_OTEL_PYTHON").unwrap_or_else(|_| "python3".to_owned());
                let path = std::env::var("NATS_OTEL_PYTHONPATH")
                    .unwrap_or_else(|_| root.join("target/interop/python").display().to_string());
                let mut c = tokio::process::Command::new(python);
                c.arg(root.join("interop/python/peer.py"))
                    .env("PYTHONPATH", path);
                c
            }
            Lang::Node => {
                let mut c = tokio::process::Command::new("node");
                if node_major().is_some_and(|major| major < 22) {
                    // WebSocket is global from Node 22; before, behind this flag.
                    c.arg("--experimental-websocket");
                }
                c.arg(root.join("interop/node/peer.mjs"));
                c
            }
        }
    }

    /// Fails the test: this peer's runtime could not be started.
    fn missing(self, e: std::io::Error) -> ! {
        match self {
            Lang::Python => {
                panic!("cannot run python3 ({e}): the interop tests need Python 3 with pip")
            }
            Lang::Node => {
                panic!("cannot run node ({e}): the interop tests need Node.js 18+ with npm")
            }
        }
    }

    /// Fails the test with the peer's `stderr`, saying what to install when its
    /// dependencies are missing.
    fn failed(self, what: &str, stderr: &str) -> ! {
        if stderr.contains("No module named") || stderr.contains("ERR_MODULE_NOT_FOUND") {
            panic!(
                "the {self:?} peer's dependencies are missing: run `bash scripts/test.sh` \
                 (it installs interop/python/requirements.txt into target/interop/python \
                 and interop/node/package-lock.json into interop/node/node_modules)\n{stderr}"
            );
        }
        panic!("the {self:?} peer {what}: {stderr}");
    }

    /// Runs the contract's test vectors (`interop/vectors.json`) through this
    /// peer's reader: one result per case.
    pub(super) async fn vectors(self) -> Vec<VectorResult> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("vectors.jsonl");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let output = self
            .command()
            .arg("vectors")
            .arg("--file")
            .arg(root.join("interop/vectors.json"))
            .arg("--out")
            .arg(&out)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .expect("the vectors run within 60 s")
            .unwrap_or_else(|e| self.missing(e));
        if !output.status.success() {
            self.failed("failed", &String::from_utf8_lossy(&output.stderr));
        }
        std::fs::read_to_string(&out)
            .expect("the peer's results")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a result as JSON"))
            .collect()
    }
}

/// The major version of `node` (`v20.20.2` → 20), if it runs.
fn node_major() -> Option<u32> {
    static MAJOR: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *MAJOR.get_or_init(|| {
        let output = std::process::Command::new("node")
            .arg("--version")
            .output()
            .ok()?;
        let version = String::from_utf8(output.stdout).ok()?;
        version
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()?
            .parse()
            .ok()
    })
}

/// What a peer extracted from one test vector's headers.
#[derive(Debug, Deserialize)]
pub(super) struct VectorResult {
    pub(super) group: String,
    pub(super) name: String,
    pub(super) got: serde_json::Value,
}

/// A running peer command.
pub(crate) struct Peer {
    lang: Lang,
    child: tokio::process::Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Starts the `lang` peer's `command --subject subject --count count extra…`
    /// against `server` and waits until it says it is ready (subscribed, or about
    /// to send).
    pub(super) async fn start(
        lang: Lang,
        server: &NatsServer,
        command: &str,
        subject: &str,
        count: usize,
        extra: &[&str],
    ) -> Self {
        Self::start_at(lang, &server.url(), command, subject, count, extra).await
    }

    /// [`start`](Self::start) against the server at `url` (a `ws://` one, say).
    pub(crate) async fn start_at(
        lang: Lang,
        url: &str,
        command: &str,
        subject: &str,
        count: usize,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("spans.jsonl");
        let mut command_line = lang.command();
        let mut child = command_line
            .arg(command)
            .args(["--server", url, "--subject", subject])
            .args(["--count", &count.to_string()])
            .arg("--out")
            .arg(&out)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| lang.missing(e));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the peer starts within 30 s")
            .expect("peer stdout");
        if first.as_deref() != Some("ready") {
            let output = child.wait_with_output().await.expect("peer output");
            lang.failed("failed to start", &String::from_utf8_lossy(&output.stderr));
        }
        Self {
            lang,
            child,
            out,
            _dir: dir,
        }
    }

    /// Waits for the command to finish and returns the spans it made.
    pub(crate) async fn finish(self) -> Vec<PeerSpan> {
        let Peer {
            lang,
            child,
            out,
            _dir,
        } = self;
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the peer finishes within 60 s")
            .expect("peer output");
        assert!(
            output.status.success(),
            "the {lang:?} peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_to_string(&out)
            .expect("the peer's spans")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a span as JSON"))
            .collect()
    }
}

pub(crate) fn trace_id(span: &SpanData) -> String {
    format!("{:032x}", span.span_context.trace_id())
}

pub(crate) fn span_id(span: &SpanData) -> String {
    format!("{:016x}", span.span_context.span_id())
}

pub(crate) fn parent_id(span: &SpanData) -> String {
    format!("{:016x}", span.parent_span_id)
}

/// The one span in `spans` of trace `trace` called `name`.
pub(crate) fn in_trace<'a>(spans: &'a [SpanData], trace: &str, name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == name && trace_id(s) == trace)
        .collect();
    assert_eq!(found.len(), 1, "one {name:?} in trace {trace}");
    found[0]
}
