//! `cim doctor` against a real three-node NATS cluster (nats-server processes on free ports):
//! healthy, it says so; with one node killed, it names the node that is gone and the stream
//! replica it held, while the cluster itself still works on two.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Node {
    name: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    nodes: Vec<Node>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    fn start() -> Self {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_urls = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let tag = uuid_suffix();
        let nodes = (0..3)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let port = free_port();
                let dir = std::env::temp_dir().join(format!("cim-doctor-cluster-{tag}-{name}"));
                let child = Command::new(bin)
                    .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "--server_name", &name])
                    .args([
                        "--cluster_name",
                        &format!("c{tag}"),
                        "--cluster",
                        &format!("nats://127.0.0.1:{}", routes[i]),
                    ])
                    .args(["--routes", &route_urls, "-sd"])
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (scripts/infra.sh up installs it)"));
                Node { name, port, dir, child: Some(child) }
            })
            .collect();
        Cluster { nodes }
    }

    fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
            let _ = std::fs::remove_dir_all(&self.nodes[i].dir);
        }
    }
}

/// The graph domain's stream with three replicas, as a graph service with
/// `CIM_STREAM_REPLICAS=3` makes it; retried while the cluster elects its first leaders.
fn create_stream(url: &str, prefix: &cim_core::SubjectPrefix) -> String {
    let name = prefix.stream_name(cim_core::Domain::Graph);
    let config = serde_json::json!({
        "name": name,
        "subjects": [prefix.domain_events(cim_core::Domain::Graph)],
        "num_replicas": 3,
        "storage": "file",
    });
    rt().block_on(async {
        let started = Instant::now();
        loop {
            let answer = async {
                let servers: Vec<async_nats::ServerAddr> = url.split(',').map(|u| u.parse().unwrap()).collect();
                let client = async_nats::connect(servers).await.map_err(|e| e.to_string())?;
                let subject = format!("$JS.API.STREAM.CREATE.{name}");
                let reply = client.request(subject, config.to_string().into()).await.map_err(|e| e.to_string())?;
                let value: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
                match value.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(()),
                }
            };
            match answer.await {
                Ok(()) => return name.clone(),
                Err(e) if started.elapsed() > Duration::from_secs(30) => panic!("no R3 stream on the cluster: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    })
}

/// Runs `cim doctor --before-start` until `done` holds for its report (up to 30 s); the last one.
fn doctor_until(env: &[(&str, String)], done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let out = cim().args(["doctor", "--before-start"]).envs(env.iter().map(|(k, v)| (k, v))).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&stdout) || started.elapsed() > Duration::from_secs(30) {
            return stdout;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn doctor_names_a_lost_nats_node_and_the_stream_replicas_it_held() {
    let mut cluster = Cluster::start();
    let prefix = format!("tdoc{}", uuid_suffix());
    let stream = create_stream(&cluster.url(), &prefix.parse().unwrap());
    let env = [
        ("CIM_DATABASE_URL", test_db_admin()),
        ("CIM_NATS_URL", cluster.url()),
        ("CIM_REDIS_URL", test_redis()),
        ("CIM_SUBJECT_PREFIX", prefix),
        ("CIM_CONNECT_TIMEOUT_MS", "1000".into()),
    ];

    let healthy_stream = format!("ok    stream    {stream}: 0 messages");
    let stdout = doctor_until(&env, |s| s.contains(&healthy_stream) && s.contains("3 replicas current (leader n"));
    assert!(stdout.contains("ok    cluster   cluster c"), "{stdout}");
    assert!(stdout.contains(": 3 of 3 nodes answer, each routed to all (n1, n2, n3)"), "{stdout}");
    assert!(stdout.contains(&healthy_stream) && stdout.contains("3 replicas current (leader n"), "{stdout}");

    // n3 killed: the cluster goes on with two, and doctor says which node and which replica.
    let (gone, port) = (cluster.nodes[2].name.clone(), cluster.nodes[2].port);
    cluster.kill(2);
    // The stream's leader marks the replica offline, or first only not current.
    let lost = format!("FAIL  stream    {stream}: 1 of 3 replicas lost: {gone} ");
    let stdout = doctor_until(&env, |s| s.contains(&lost));
    let down = format!("FAIL  cluster   2 of 3 nodes answer; down: nats://127.0.0.1:{port} (");
    assert!(stdout.contains(&down), "{stdout}");
    assert!(stdout.contains(&lost), "{stdout}");
    assert!(stdout.contains("fix: start the NATS node named"), "{stdout}");
    assert!(stdout.contains("ok    nats"), "the cluster still answers on two nodes:\n{stdout}");
}

/// One server, as in development: no cluster, said as such.
#[test]
fn doctor_says_a_single_nats_server_is_no_cluster() {
    let env = [
        ("CIM_DATABASE_URL", test_db_admin()),
        ("CIM_NATS_URL", test_nats()),
        ("CIM_REDIS_URL", test_redis()),
        ("CIM_SUBJECT_PREFIX", format!("tdoc{}", uuid_suffix())),
    ];
    let stdout = doctor_until(&env, |_| true);
    let line = stdout.lines().find(|l| l.starts_with("ok    cluster   ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.ends_with(" answers, no cluster"), "{stdout}");
}
