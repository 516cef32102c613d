//! Metric names of the graph service.

pub const COMMANDS_TOTAL: &str = "cim_graph_commands_total";
pub const GRAPH_SIZE_NODES: &str = "cim_graph_size_nodes";
pub const QUERY_DURATION_SECONDS: &str = "cim_graph_query_duration_seconds";
pub const FAST_WRITES_TOTAL: &str = "cim_graph_fast_writes_total";
pub const WRITE_GROUP_SIZE: &str = "cim_graph_write_group_size";

pub fn describe() {
    metrics::describe_counter!(COMMANDS_TOTAL, "Graph commands handled, by command and outcome (ok or an error code)");
    metrics::describe_counter!(
        FAST_WRITES_TOTAL,
        "One-statement writes tried: hit (written) or miss (head or facts differed; took the locked path)"
    );
    metrics::describe_histogram!(
        WRITE_GROUP_SIZE,
        "Commands written together by one statement of the one-statement path (group commit)"
    );
    metrics::describe_histogram!(GRAPH_SIZE_NODES, "Node count of the graph a command changed, at command time");
    metrics::describe_histogram!(
        QUERY_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of graph queries (neighbors, traverse, shortest_path, at_version)"
    );
}
