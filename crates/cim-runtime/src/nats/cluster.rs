//! NATS as a cluster: every node `CIM_NATS_URL` names answers and sees all the others, and each
//! stream's replicas are current. A cluster on fewer than all its nodes keeps working while a
//! majority of each stream's replicas is up, so nothing else shows the loss until the next one.

use std::time::Duration;

use serde_json::Value;

/// What a stream's info says of its replicas (`config.num_replicas`, and `cluster`: the leader
/// and each other replica with `current` and, while its node is gone, `offline`). A server that
/// is not clustered sends no `cluster`.
pub fn stream_replicas(info: &Value) -> Result<String, String> {
    let wanted = info["config"]["num_replicas"].as_u64().unwrap_or(1).max(1);
    let cluster = &info["cluster"];
    if cluster.is_null() {
        return if wanted == 1 {
            Ok("1 replica".into())
        } else {
            Err(format!("{wanted} replicas configured but the server reports no cluster"))
        };
    }
    let Some(leader) = cluster["leader"].as_str() else {
        return Err(format!("no leader: fewer than a majority of its {wanted} replicas are up, it takes no writes"));
    };
    let others = cluster["replicas"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut lost: Vec<String> = others
        .iter()
        .filter_map(|r| {
            let name = r["name"].as_str().unwrap_or("?");
            if r["offline"].as_bool() == Some(true) {
                Some(format!("{name} offline"))
            } else if r["current"].as_bool() != Some(true) {
                Some(match r["lag"].as_u64().unwrap_or(0) {
                    0 => format!("{name} not current"),
                    lag => format!("{name} not current (lag {lag})"),
                })
            } else {
                None
            }
        })
        .collect();
    let placed = 1 + others.len() as u64;
    if placed < wanted {
        lost.push(format!("{} never placed", wanted - placed));
    }
    if lost.is_empty() {
        Ok(format!("{wanted} replicas current (leader {leader})"))
    } else {
        let count = lost.len() as u64 + wanted.saturating_sub(placed).saturating_sub(1);
        Err(format!("{count} of {wanted} replicas lost: {}", lost.join(", ")))
    }
}

/// One node's INFO, the line a NATS server sends first on every connection, before any
/// credentials or TLS: its name, its cluster and the client URLs of the nodes it is routed to.
async fn node_info(host_port: &str, timeout: Duration) -> Result<Value, String> {
    use tokio::io::AsyncBufReadExt;
    let read = async {
        let stream = tokio::net::TcpStream::connect(host_port).await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream).read_line(&mut line).await.map_err(|e| e.to_string())?;
        let json =
            line.strip_prefix("INFO ").ok_or_else(|| format!("not a NATS server (it said {:?})", line.trim()))?;
        serde_json::from_str(json.trim()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// Every node `CIM_NATS_URL` names answers and is routed to all the others (a node cut off by a
/// partition answers but sees fewer). One server: says whether it is clustered.
pub async fn nodes(urls: &str, timeout: Duration) -> Result<String, String> {
    let nodes: Vec<&str> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    let mut down = Vec::new();
    let mut seen = Vec::new();
    let mut cluster = None;
    for url in &nodes {
        let shown = crate::config::redact_urls(url);
        let Some((_, rest)) = url.split_once("://") else { continue };
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h).trim_end_matches('/');
        match node_info(host_port, timeout).await {
            Err(e) => down.push(format!("{shown} ({e})")),
            Ok(info) => {
                cluster = cluster.or_else(|| info["cluster"].as_str().map(str::to_owned));
                seen.push(Seen {
                    name: info["server_name"].as_str().unwrap_or("?").to_owned(),
                    shown,
                    routed: info["connect_urls"].as_array().map_or(1, Vec::len),
                });
            }
        }
    }
    verdict(nodes.len(), &down, &seen, cluster.as_deref())
}

/// A node that answered: its name, its URL as shown, and how many nodes it is routed to
/// (itself included: the client URLs its INFO lists).
struct Seen {
    name: String,
    shown: String,
    routed: usize,
}

/// What the nodes' answers say. A node routed to fewer than the best-connected one is cut off
/// from it (a partition: it answers here but not to its peers); those that do not answer are
/// down.
fn verdict(configured: usize, down: &[String], seen: &[Seen], cluster: Option<&str>) -> Result<String, String> {
    let most = seen.iter().map(|s| s.routed).max().unwrap_or(0);
    let cut_off: Vec<String> = seen
        .iter()
        .filter(|s| s.routed < most)
        .map(|s| format!("{} at {} sees {} of {configured}", s.name, s.shown, s.routed))
        .collect();
    let names: Vec<&str> = seen.iter().map(|s| s.name.as_str()).collect();
    if !down.is_empty() || !cut_off.is_empty() {
        let mut error = format!("{} of {configured} nodes answer", seen.len());
        if !down.is_empty() {
            error.push_str(&format!("; down: {}", down.join(", ")));
        }
        if !cut_off.is_empty() {
            error.push_str(&format!("; cut off: {}", cut_off.join(", ")));
        }
        return Err(error);
    }
    Ok(match cluster {
        // One address for the whole cluster (a k8s Service): what its node sees.
        Some(c) if configured == 1 => format!("cluster {c}: {} answers, routed to {most} nodes", names.join(", ")),
        Some(c) => {
            format!("cluster {c}: {configured} of {configured} nodes answer, each routed to all ({})", names.join(", "))
        }
        None => format!("{} answers, no cluster", names.join(", ")),
    })
}

/// What to do about a node that is gone or cut off.
pub const NODES_FIX: &str = "start the NATS node named, or heal its network (routes on the cluster port); \
     while a majority of each stream's replicas is up the system keeps working, one more loss stops it";

/// What to do about a stream's lost replicas.
pub const REPLICAS_FIX: &str = "start the NATS node named, or heal its network: JetStream catches the \
     replica up by itself; if the node is gone for good, `nats stream cluster peer-remove` it so a new one is placed";

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes nats-server 2.9 sends (a three-node cluster, n3 killed).
    fn info(replicas: u64, cluster: Value) -> Value {
        serde_json::json!({"config": {"name": "S", "num_replicas": replicas}, "cluster": cluster})
    }

    #[test]
    fn all_replicas_current() {
        let healthy = info(
            3,
            serde_json::json!({"name": "c", "leader": "n1", "replicas": [
                {"name": "n2", "current": true, "active": 430912522u64, "peer": "44jzkV9D"},
                {"name": "n3", "current": true, "active": 431112540u64, "peer": "BXScrY9i"}]}),
        );
        assert_eq!(stream_replicas(&healthy).unwrap(), "3 replicas current (leader n1)");
    }

    #[test]
    fn an_offline_or_lagging_replica_is_lost() {
        let killed = info(
            3,
            serde_json::json!({"name": "c", "leader": "n1", "replicas": [
                {"name": "n2", "current": true, "active": 78624170u64, "peer": "44jzkV9D"},
                {"name": "n3", "current": true, "offline": true, "active": 5078145205u64, "peer": "BXScrY9i"}]}),
        );
        assert_eq!(stream_replicas(&killed).unwrap_err(), "1 of 3 replicas lost: n3 offline");
        let behind = info(
            3,
            serde_json::json!({"name": "c", "leader": "n2", "replicas": [
                {"name": "n1", "current": false, "lag": 12, "active": 1u64},
                {"name": "n3", "current": false, "offline": true, "active": 13389358686u64}]}),
        );
        assert_eq!(stream_replicas(&behind).unwrap_err(), "2 of 3 replicas lost: n1 not current (lag 12), n3 offline");
    }

    #[test]
    fn a_stream_without_leader_or_with_replicas_never_placed() {
        let leaderless = info(3, serde_json::json!({"name": "c"}));
        assert!(stream_replicas(&leaderless).unwrap_err().starts_with("no leader"));
        let short = info(
            3,
            serde_json::json!({"name": "c", "leader": "n1", "replicas": [
            {"name": "n2", "current": true, "active": 1u64}]}),
        );
        assert_eq!(stream_replicas(&short).unwrap_err(), "1 of 3 replicas lost: 1 never placed");
    }

    fn seen(name: &str, routed: usize) -> Seen {
        Seen { name: name.into(), shown: format!("nats://{name}:4222"), routed }
    }

    #[test]
    fn a_node_routed_to_fewer_than_the_others_is_cut_off() {
        let healthy = [seen("n1", 3), seen("n2", 3), seen("n3", 3)];
        assert_eq!(
            verdict(3, &[], &healthy, Some("c")).unwrap(),
            "cluster c: 3 of 3 nodes answer, each routed to all (n1, n2, n3)"
        );
        // Partitioned: n3 still answers here but sees only itself; the others see each other.
        let partitioned = [seen("n1", 2), seen("n2", 2), seen("n3", 1)];
        assert_eq!(
            verdict(3, &[], &partitioned, Some("c")).unwrap_err(),
            "3 of 3 nodes answer; cut off: n3 at nats://n3:4222 sees 1 of 3"
        );
        // Killed: the others see each other only, which is no cut-off of theirs.
        let down = ["nats://n3:4222 (Connection refused)".to_owned()];
        assert_eq!(
            verdict(3, &down, &healthy[..2].iter().map(|s| seen(&s.name, 2)).collect::<Vec<_>>(), Some("c"))
                .unwrap_err(),
            "2 of 3 nodes answer; down: nats://n3:4222 (Connection refused)"
        );
    }

    #[test]
    fn one_address_says_what_its_node_sees() {
        assert_eq!(verdict(1, &[], &[seen("n1", 3)], Some("c")).unwrap(), "cluster c: n1 answers, routed to 3 nodes");
        assert_eq!(verdict(1, &[], &[seen("dev", 1)], None).unwrap(), "dev answers, no cluster");
    }

    #[test]
    fn a_server_without_cluster_sends_none() {
        let single = serde_json::json!({"config": {"name": "S", "num_replicas": 1}, "state": {"messages": 0}});
        assert_eq!(stream_replicas(&single).unwrap(), "1 replica");
        let asked = serde_json::json!({"config": {"name": "S", "num_replicas": 3}});
        assert!(stream_replicas(&asked).is_err());
    }
}
