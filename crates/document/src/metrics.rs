//! Metric names of the document service (commands are counted by the kit's
//! `cim_commands_total{service="document"}`).

pub const UPLOADED_BYTES_TOTAL: &str = "cim_document_uploaded_bytes_total";
pub const UPLOADS_TOTAL: &str = "cim_document_uploads_total";
pub const DOWNLOADED_BYTES_TOTAL: &str = "cim_document_downloaded_bytes_total";
pub const DEDUPLICATED_TOTAL: &str = "cim_document_deduplicated_total";
pub const GC_RUNS_TOTAL: &str = "cim_document_gc_runs_total";
pub const GC_OBJECTS_TOTAL: &str = "cim_document_gc_objects_total";

pub fn describe() {
    metrics::describe_counter!(UPLOADED_BYTES_TOTAL, metrics::Unit::Bytes, "Content bytes received by uploads");
    metrics::describe_counter!(UPLOADS_TOTAL, "Uploads, by outcome (ok or an error code)");
    metrics::describe_counter!(DOWNLOADED_BYTES_TOTAL, metrics::Unit::Bytes, "Content bytes sent by downloads");
    metrics::describe_counter!(DEDUPLICATED_TOTAL, "Uploads whose bytes the tenant already stored (kept once)");
    metrics::describe_counter!(GC_RUNS_TOTAL, "Content sweeper passes, by outcome");
    metrics::describe_counter!(GC_OBJECTS_TOTAL, "Objects the sweeper removed, by kind (blob, staging)");
    // Exported at zero from the start: dashboards and alerts see the series before the
    // sweeper's first pass (minutes after start).
    for outcome in ["ok", "error"] {
        metrics::counter!(GC_RUNS_TOTAL, "outcome" => outcome).increment(0);
    }
    for kind in ["blob", "staging"] {
        metrics::counter!(GC_OBJECTS_TOTAL, "kind" => kind).increment(0);
    }
}
