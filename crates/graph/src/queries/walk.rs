//! Walks over the edges: breadth-first levels, traversal and shortest path, each level one
//! query on the covering indexes `edges_out`/`edges_in`.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Out,
    In,
    Both,
}

impl Dir {
    /// A request's `direction`: unset means OUT; a number the enum does not define is refused.
    pub fn from_proto(d: i32) -> Result<Dir, ServiceError> {
        match pb::Direction::try_from(d) {
            Ok(pb::Direction::Unspecified | pb::Direction::Out) => Ok(Dir::Out),
            Ok(pb::Direction::In) => Ok(Dir::In),
            Ok(pb::Direction::Both) => Ok(Dir::Both),
            Err(_) => Err(ServiceError::invalid("direction", format!("{d} is not a Direction (0 to 3)"))),
        }
    }
}

/// One breadth-first level: the nodes first reached from `frontier` that are not in `seen`,
/// each once, with the edge that reaches it first. "First" is the BFS order this service
/// promises: frontier order, then edge id. The answer is in that order (a node equal to
/// `prefer` ahead of all others), at most `limit` rows of `(parent, node, edge)`.
///
/// Every edge of the frontier is considered before the limit applies: a limit on edges instead
/// of new nodes let self-loops and edges back into `seen` crowd out the nodes the walk needed.
#[allow(clippy::too_many_arguments)]
async fn level(
    pool: &PgPool,
    graph: AggregateId,
    frontier: &[String],
    seen: &[String],
    dir: Dir,
    types: &[String],
    prefer: Option<&str>,
    limit: i64,
) -> Result<Vec<(String, String, String)>, ServiceError> {
    let arm = |near: &str, far: &str| {
        format!(
            "SELECT f.ord, e.{near} AS a, e.{far} AS b, e.edge_id FROM f \
             JOIN edges e ON e.graph_id = $1 AND e.{near} = f.id \
             WHERE (cardinality($3::text[]) = 0 OR e.edge_type = ANY($3))"
        )
    };
    let hops = match dir {
        Dir::Out => arm("source", "target"),
        Dir::In => arm("target", "source"),
        Dir::Both => format!("{} UNION ALL {}", arm("source", "target"), arm("target", "source")),
    };
    let sql = format!(
        "WITH f AS (SELECT id, ord FROM unnest($2::text[]) WITH ORDINALITY AS f(id, ord)), \
              hop AS ({hops}), \
              reached AS ( \
                  SELECT DISTINCT ON (b) ord, a, b, edge_id FROM hop \
                  WHERE NOT EXISTS (SELECT 1 FROM unnest($4::text[]) AS s(id) WHERE s.id = hop.b) \
                  ORDER BY b, ord, edge_id) \
         SELECT a, b, edge_id FROM reached ORDER BY coalesce(b = $5, false) DESC, ord, edge_id LIMIT $6"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(graph.as_uuid())
        .bind(frontier)
        .bind(types)
        .bind(seen)
        .bind(prefer)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| Ok((r.try_get("a")?, r.try_get("b")?, r.try_get("edge_id")?))).collect()
}

async fn nodes_by_id(
    pool: &PgPool,
    graph: AggregateId,
    ids: &[String],
) -> Result<HashMap<String, pb::Node>, ServiceError> {
    let rows =
        sqlx::query("SELECT node_id, node_type, properties FROM nodes WHERE graph_id = $1 AND node_id = ANY($2)")
            .bind(graph.as_uuid())
            .bind(ids)
            .fetch_all(pool)
            .await?;
    let g = graph.to_string();
    rows.iter().map(|r| node_from_row(&g, r).map(|n| (n.id.clone(), n))).collect()
}

async fn edges_by_id(
    pool: &PgPool,
    graph: AggregateId,
    ids: &[String],
) -> Result<HashMap<String, pb::Edge>, ServiceError> {
    let rows = sqlx::query(
        "SELECT edge_id, edge_type, source, target, properties FROM edges WHERE graph_id = $1 AND edge_id = ANY($2)",
    )
    .bind(graph.as_uuid())
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let g = graph.to_string();
    rows.iter().map(|r| edge_from_row(&g, r).map(|e| (e.id.clone(), e))).collect()
}

/// How a traversal may move: direction, edge types, and its bounds.
#[derive(Debug, Clone)]
pub struct Walk {
    pub dir: Dir,
    pub types: Vec<String>,
    pub max_depth: u32,
    pub max_nodes: u32,
}

/// Breadth-first from `start`, one query per level: the first `max_nodes` nodes in BFS order
/// (see [`level`]), and `truncated` exactly when a node within `max_depth` was left out.
pub async fn traverse(
    pool: &PgPool,
    graph: AggregateId,
    start: &str,
    walk: &Walk,
) -> Result<pb::TraverseResponse, ServiceError> {
    let Walk { dir, types, max_depth, max_nodes } = walk.clone();
    let mut seen: HashMap<String, (u32, String)> = HashMap::from([(start.to_owned(), (0, String::new()))]);
    let mut order = vec![start.to_owned()];
    let mut frontier = vec![start.to_owned()];
    let mut truncated = false;
    for depth in 1..=max_depth {
        if frontier.is_empty() {
            break;
        }
        let room = (max_nodes as usize).saturating_sub(order.len());
        // One row more than there is room for tells whether anything is left out.
        let mut reached = level(pool, graph, &frontier, &order, dir, &types, None, room as i64 + 1).await?;
        truncated = reached.len() > room;
        reached.truncate(room);
        frontier = Vec::with_capacity(reached.len());
        for (parent, node, _) in reached {
            seen.insert(node.clone(), (depth, parent));
            order.push(node.clone());
            frontier.push(node);
        }
        if truncated {
            break;
        }
    }
    let nodes = nodes_by_id(pool, graph, &order).await?;
    let visits = order
        .iter()
        .filter_map(|id| {
            let (depth, parent) = seen.get(id)?;
            Some(pb::Visit { node: Some(nodes.get(id)?.clone()), depth: *depth, parent_id: parent.clone() })
        })
        .collect();
    Ok(pb::TraverseResponse { visits, truncated })
}

/// Fewest hops from `from` to `to`, by breadth-first search up to `max_depth`, holding at
/// most `max_nodes` nodes. When that bound stops the search first, the answer says so
/// (`truncated`) instead of claiming there is no path.
pub async fn shortest_path(
    pool: &PgPool,
    graph: AggregateId,
    from: &str,
    to: &str,
    walk: &Walk,
) -> Result<pb::ShortestPathResponse, ServiceError> {
    let Walk { dir, types, max_depth, max_nodes } = walk.clone();
    let mut parent: HashMap<String, (String, String)> = HashMap::new();
    let mut seen: Vec<String> = vec![from.to_owned()];
    let mut frontier = vec![from.to_owned()];
    let mut found = from == to;
    let mut truncated = false;
    for _ in 0..max_depth {
        if found || frontier.is_empty() {
            break;
        }
        let room = (max_nodes as usize).saturating_sub(seen.len());
        // `to` comes first when this level reaches it, whatever the room.
        let mut reached = level(pool, graph, &frontier, &seen, dir, &types, Some(to), room as i64 + 1).await?;
        if let Some((a, b, edge)) = reached.first()
            && b == to
        {
            parent.insert(b.clone(), (a.clone(), edge.clone()));
            found = true;
            break;
        }
        truncated = reached.len() > room;
        reached.truncate(room);
        frontier = Vec::with_capacity(reached.len());
        for (a, b, edge) in reached {
            parent.insert(b.clone(), (a, edge));
            seen.push(b.clone());
            frontier.push(b);
        }
        if truncated {
            break;
        }
    }
    if !found {
        return Ok(pb::ShortestPathResponse { found: false, nodes: vec![], edges: vec![], truncated });
    }
    let mut path_nodes = VecDeque::from([to.to_owned()]);
    let mut path_edges = VecDeque::new();
    let mut cursor = to.to_owned();
    while let Some((prev, edge)) = parent.get(&cursor) {
        path_nodes.push_front(prev.clone());
        path_edges.push_front(edge.clone());
        cursor = prev.clone();
    }
    let node_ids: Vec<String> = path_nodes.into_iter().collect();
    let edge_ids: Vec<String> = path_edges.into_iter().collect();
    let (nodes, edges) = tokio::try_join!(nodes_by_id(pool, graph, &node_ids), edges_by_id(pool, graph, &edge_ids))?;
    Ok(pb::ShortestPathResponse {
        found: true,
        truncated: false,
        nodes: node_ids.iter().filter_map(|id| nodes.get(id).cloned()).collect(),
        edges: edge_ids.iter().filter_map(|id| edges.get(id).cloned()).collect(),
    })
}
