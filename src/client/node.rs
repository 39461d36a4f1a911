//! The node a connection is on, as recording spans name it:
//! `messaging.nats.server.name`, `messaging.nats.server.id`,
//! `network.peer.address`/`network.peer.port` and `messaging.client.id`, read
//! from the server's INFO and read again after every reconnect.
//!
//! async-nats does not tell which socket address it connected to, and its
//! `Connected` event carries nothing: the INFO of the current connection is the
//! source. `network.peer.*` is the node's listen address from that INFO, set only
//! when it is a concrete IP address (a node listening on all interfaces, the
//! nats-server default, reports `0.0.0.0` and gets no `network.peer.*`).
//! `server.address`/`server.port` stay the address the client was given.
//!
//! Cost: one relaxed atomic load (the connection's connect count) and a shared
//! read lock per recording span; the INFO is read only when the count moved.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use async_nats::client::Statistics;
use async_nats::ServerInfo;
use opentelemetry::KeyValue;

use crate::semconv;

/// The most attributes a node adds to a span.
pub(crate) const NODE_ATTRIBUTES: usize = 5;

/// The current node's span attributes, refreshed when the connection's connect
/// count moves.
pub(crate) struct ServerNode {
    client: async_nats::Client,
    statistics: Arc<Statistics>,
    state: RwLock<NodeState>,
}

struct NodeState {
    /// The connect count the attributes were read at.
    connects: u64,
    /// What identifies one connection to one node.
    server_id: String,
    client_id: u64,
    attributes: Arc<[KeyValue]>,
}

impl std::fmt::Debug for ServerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerNode")
            .field("attributes", &self.attributes())
            .finish_non_exhaustive()
    }
}

impl ServerNode {
    /// The node `client` is connected to now.
    pub(crate) fn new(client: async_nats::Client) -> Self {
        let statistics = client.statistics();
        let connects = statistics.connects.load(Ordering::Acquire);
        let info = client.server_info();
        Self {
            client,
            statistics,
            state: RwLock::new(NodeState::read(connects, &info)),
        }
    }

    /// The attributes naming the node the connection is on now.
    pub(crate) fn attributes(&self) -> Arc<[KeyValue]> {
        let connects = self.statistics.connects.load(Ordering::Acquire);
        if let Ok(state) = self.state.read() {
            if state.connects == connects {
                return state.attributes.clone();
            }
        }
        self.refresh(connects)
    }

    /// Reads the INFO again after a (re)connect. async-nats counts the connect
    /// before it publishes the new INFO: an INFO naming the same connection as
    /// before is the old one, kept without taking the new count, so that a later
    /// span reads it again.
    fn refresh(&self, connects: u64) -> Arc<[KeyValue]> {
        let info = self.client.server_info();
        let mut state = match self.state.write() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.connects != connects
            && (info.server_id != state.server_id || info.client_id != state.client_id)
        {
            *state = NodeState::read(connects, &info);
        }
        state.attributes.clone()
    }
}

impl NodeState {
    fn read(connects: u64, info: &ServerInfo) -> Self {
        Self {
            connects,
            server_id: info.server_id.clone(),
            client_id: info.client_id,
            attributes: node_attributes(info).into(),
        }
    }
}

/// The span attributes `info` gives: what it does not say is left out.
pub(crate) fn node_attributes(info: &ServerInfo) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(NODE_ATTRIBUTES);
    if info.client_id != 0 {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_CLIENT_ID,
            crate::names::attribute_value(&info.client_id.to_string()),
        ));
    }
    if !info.server_name.is_empty() {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_SERVER_NAME,
            crate::names::attribute_value(&info.server_name),
        ));
    }
    if !info.server_id.is_empty() {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_SERVER_ID,
            crate::names::attribute_value(&info.server_id),
        ));
    }
    if let Ok(ip) = info.host.parse::<IpAddr>() {
        if !ip.is_unspecified() && info.port != 0 {
            attributes.push(KeyValue::new(
                semconv::NETWORK_PEER_ADDRESS,
                crate::names::attribute_value(&ip.to_string()),
            ));
            attributes.push(KeyValue::new(
                semconv::NETWORK_PEER_PORT,
                i64::from(info.port),
            ));
        }
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str, port: u16) -> ServerInfo {
        ServerInfo {
            server_id: "NDJ4".to_owned(),
            server_name: "node-1".to_owned(),
            host: host.to_owned(),
            port,
            client_id: 7,
            ..ServerInfo::default()
        }
    }

    fn keys(attributes: &[KeyValue]) -> Vec<String> {
        attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect()
    }

    #[test]
    fn a_node_on_a_concrete_address_is_named_with_its_peer_address() {
        assert_eq!(
            keys(&node_attributes(&info("127.0.0.1", 4333))),
            [
                "messaging.client.id=7",
                "messaging.nats.server.name=node-1",
                "messaging.nats.server.id=NDJ4",
                "network.peer.address=127.0.0.1",
                "network.peer.port=4333",
            ]
        );
    }

    #[test]
    fn a_node_listening_on_every_interface_gets_no_peer_address() {
        for host in ["0.0.0.0", "::", "", "nats.example"] {
            assert_eq!(
                keys(&node_attributes(&info(host, 4222))),
                [
                    "messaging.client.id=7",
                    "messaging.nats.server.name=node-1",
                    "messaging.nats.server.id=NDJ4",
                ],
                "host {host:?}"
            );
        }
    }

    #[test]
    fn no_info_gives_no_attributes() {
        assert_eq!(
            keys(&node_attributes(&ServerInfo::default())),
            Vec::<String>::new()
        );
    }
}
