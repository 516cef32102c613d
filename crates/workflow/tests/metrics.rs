//! The step metrics against the events the service wrote: a step that fails, is retried and
//! then succeeds, and a timer after it. Every retry and every ended attempt shows once in
//! `cim_workflow_retries_total` and `cim_workflow_step_duration_seconds` (the only test of this
//! binary, so the process's metrics are this run's).

#[path = "support/service.rs"]
mod support;

use std::time::Duration;

use cim_core::TenantId;
use cim_proto::workflow as pb;
use cim_testkit::domain::req;
use serde_json::json;
use support::*;

/// The sum of `name`'s samples carrying every label of `labels`, as this process renders them.
fn sample(name: &str, labels: &[(&str, &str)]) -> f64 {
    let rendered = cim_runtime::metrics::handle().render();
    rendered
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ended(kind: &str, outcome: &str) -> f64 {
    sample("cim_workflow_step_duration_seconds_count", &[("kind", kind), ("outcome", outcome)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_then_retried_step_moves_the_retry_counter_and_the_step_durations() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let definition = json!({"name": "flaky", "steps": [
        {"id": "calc", "kind": "automated", "set": {"double": "price * 2"},
         "retry": {"max_attempts": 20, "initial_backoff_ms": 200, "max_backoff_ms": 1000}},
        {"id": "nap", "kind": "timer", "depends_on": ["calc"], "sleep_ms": 300}
    ]});
    let (flaky, _) = define(&mut c, tenant, definition).await;
    let id = start(&mut c, tenant, &flaky, json!({})).await;
    // Failing (no price yet) and retried until the price is set.
    until(&mut c, tenant, &id, Duration::from_secs(20), |w| step(w, "calc").attempts >= 2).await;
    let r = pb::SetContextVariableRequest {
        instance_id: id.clone(),
        key: "price".into(),
        value: Some(cim_proto::json::json_to_value(&json!(21))),
        options: None,
    };
    c.set_context_variable(req(tenant, r)).await.unwrap();
    until_status(&mut c, tenant, &id, "completed").await;

    // Once per written event: each retry scheduled, each failed attempt, the one that
    // succeeded and the timer.
    let retries = svc.count("retry_scheduled").await;
    let failures = svc.count("step_execution_failed").await;
    assert!(retries >= 1 && failures == retries, "{retries} retries, {failures} failures");
    assert_eq!(sample("cim_workflow_retries_total", &[("kind", "automated")]), retries as f64);
    assert_eq!(ended("automated", "failed"), failures as f64);
    assert_eq!(ended("automated", "completed"), 1.0);
    assert_eq!(ended("timer", "completed"), 1.0);
    // The timer ran its 300 ms at least, and its histogram has the long buckets (up to a day).
    let slept = sample("cim_workflow_step_duration_seconds_sum", &[("kind", "timer")]);
    assert!((0.3..20.0).contains(&slept), "{slept}");
    let day = sample("cim_workflow_step_duration_seconds_bucket", &[("kind", "timer"), ("le", "86400")]);
    assert_eq!(day, 1.0);
    svc.stop().await;
}
