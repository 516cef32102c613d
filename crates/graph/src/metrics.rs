//! Metric names of the graph service (its commands are counted by the kit:
//! `cim_commands_total{service="graph"}`, `cim_one_statement_writes_total`, `cim_write_group_size`).

pub const GRAPH_SIZE_NODES: &str = "cim_graph_size_nodes";
pub const QUERY_DURATION_SECONDS: &str = "cim_graph_query_duration_seconds";

pub fn describe() {
    metrics::describe_histogram!(GRAPH_SIZE_NODES, "Node count of the graph a command changed, at command time");
    metrics::describe_histogram!(
        QUERY_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of graph queries (neighbors, traverse, shortest_path, at_version)"
    );
}
