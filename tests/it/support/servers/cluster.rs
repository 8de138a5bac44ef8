//! Test servers: three nats-server nodes clustered through routes (`NatsCluster`).

use super::*;

/// Nodes in a [`NatsCluster`]: the smallest cluster that survives losing one (quorum 2).
pub(super) const CLUSTER_NODES: usize = 3;
/// How long a cluster may take to elect a JetStream meta leader, or a restarted node to
/// catch up.
pub(super) const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Three JetStream-enabled `nats-server`s on 127.0.0.1, clustered through routes.
///
/// Each node is a [`NatsServer`] (own client port, store dir, log and unique server name,
/// the same spawn and cleanup), started with `--cluster`, `--cluster_name`, `--routes` to the
/// two others and a monitoring port (`-m`) that the fixture polls for cluster state.
/// [`NatsCluster::start`] returns once every node answers `/healthz` and agrees on a
/// JetStream meta leader, so a replicas-3 stream can be created at once.
///
/// All methods take `&self` and block, like [`NatsServer`]'s. Dropping it kills every node
/// and deletes their dirs.
pub struct NatsCluster {
    pub(super) name: String,
    pub(super) nodes: Vec<NatsServer>,
    pub(super) monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts three clustered nodes and waits until the cluster has a JetStream meta leader.
    /// Panics with the nodes' log tails on failure.
    pub fn start() -> NatsCluster {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "nsready-cluster-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Route and monitoring ports, held open together so that they are distinct. Another
        // process may still take one before its node binds it; that node then fails to start
        // and the test panics with its log (a rare race, as for any fixed-port setup).
        let listeners: Vec<TcpListener> = (0..2 * CLUSTER_NODES)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("listener address").port())
            .collect();
        drop(listeners);
        let (route_ports, monitor_ports) = ports.split_at(CLUSTER_NODES);
        let route_url = |p: &u16| format!("nats://127.0.0.1:{p}");
        // Nodes start one after the other: each is ready (accepts clients) before its peers
        // exist, and keeps dialling the missing routes until they answer.
        let nodes = (0..CLUSTER_NODES)
            .map(|i| {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, p)| route_url(p))
                    .collect();
                let args = [
                    "--cluster".to_string(),
                    route_url(&route_ports[i]),
                    "--cluster_name".to_string(),
                    name.clone(),
                    "--routes".to_string(),
                    routes.join(","),
                    "-m".to_string(),
                    monitor_ports[i].to_string(),
                ];
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                NatsServer::start_with_args(&args)
            })
            .collect();
        let cluster = NatsCluster {
            name,
            nodes,
            monitor_ports: monitor_ports.to_vec(),
        };
        cluster.wait_until_formed();
        cluster
    }

    /// The cluster name (`--cluster_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of nodes (3).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`, for its port, name, log or store dir.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Every node's client URL, comma-separated: `nats://127.0.0.1:<p0>,nats://...`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node called `server_name` (as JetStream names leaders).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == server_name)
    }

    /// SIGKILLs node `i` (no goodbye to its peers).
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill();
    }

    /// Stops node `i` gracefully (SIGTERM: it hands off its leaderships first).
    pub fn stop(&self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again (same ports, store and name) and waits until it has rejoined:
    /// it answers `/healthz` (meta leader known, its streams and consumers caught up).
    pub fn start_again(&self, i: usize) {
        self.nodes[i].start_again();
        self.wait_until_formed();
    }

    /// The node that leads `stream` (a replicated stream), as the running nodes report it
    /// on `/jsz`; `None` while they know no leader, disagree, or name a node that is down
    /// (the report of a leader that was just killed, before the election).
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.leader(stream, None)
    }

    /// The node that leads `consumer` of `stream`; `None` as for [`Self::stream_leader`].
    /// A consumer has its own Raft group, so its leader may be another node.
    pub fn consumer_leader(&self, stream: &str, consumer: &str) -> Option<usize> {
        self.leader(stream, Some(consumer))
    }

    pub(super) fn leader(&self, stream: &str, consumer: Option<&str>) -> Option<usize> {
        let mut leader = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            let (_, body) = http_get(
                self.monitor_ports[i],
                "/jsz?accounts=true&streams=true&consumers=true",
            )?;
            let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
            let stream = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)?;
            let asset = match consumer {
                None => stream,
                Some(consumer) => stream["consumer_detail"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == consumer)?,
            };
            let named = asset["cluster"]["leader"]
                .as_str()
                .and_then(|name| self.index_of(name))?;
            match leader {
                None => leader = Some(named),
                Some(l) if l == named => {}
                Some(_) => return None,
            }
        }
        leader.filter(|&l| self.nodes[l].is_running())
    }

    /// Polls until every running node answers `/healthz` with ok and names a meta leader.
    pub(super) fn wait_until_formed(&self) {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            let formed = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_running())
                .all(|(i, _)| self.node_is_current(i));
            if formed {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "NATS cluster {} not formed within {CLUSTER_READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.logs_for_panic()
                );
            }
            thread::sleep(POLL * 5);
        }
    }

    /// Node `i` is healthy (JetStream current) and knows the meta leader.
    pub(super) fn node_is_current(&self, i: usize) -> bool {
        let port = self.monitor_ports[i];
        let healthy = http_get(port, "/healthz")
            .is_some_and(|(status, body)| status == 200 && body.contains("\"ok\""));
        healthy
            && http_get(port, "/jsz").is_some_and(|(_, body)| {
                serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
                    v["meta_cluster"]["leader"]
                        .as_str()
                        .is_some_and(|l| !l.is_empty())
                })
            })
    }

    /// The log tails of every node, for panic messages.
    pub fn logs_for_panic(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::log_for_panic)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`; `(status, body)`, or `None` when the server
/// does not answer (within a couple of seconds).
pub(super) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
