//! `cim wake --service webhook -- <command>`: the serverless pattern on one machine, what KEDA
//! does in a cluster. Every interval it asks whether work waits for the service (its intake
//! consumers' unacknowledged messages, its due deliveries: `cim_webhook::delivery::idle`); if
//! so and the command is not running, it starts it. The command is the service run with
//! `CIM_WEBHOOK_IDLE_EXIT_SECS`, which exits by itself when idle; nothing is lost in between
//! (the work waits in the streams' durable consumers and in Postgres). A stop signal stops the
//! command too.

use std::process::{Child, Command};
use std::time::Duration;

use super::*;
use crate::backup::connect;

/// The services that can be woken: each says what "work waiting" means for it.
const WAKEABLE: [&str; 1] = ["webhook"];

pub(crate) async fn wake(service: &str, interval: Duration, command: &[String]) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !WAKEABLE.contains(&service) {
        return fail(&format!("--service {service:?}: expected one of {}", WAKEABLE.join(", ")), EXIT_CONFIG);
    }
    let Some((program, args)) = command.split_first() else {
        return fail("no command: cim wake --service webhook -- <command> [args…]", EXIT_CONFIG);
    };
    if config.webhook.idle_exit.is_none() {
        // Started once and never exiting is allowed, but probably not what was meant.
        out("note: CIM_WEBHOOK_IDLE_EXIT_SECS is 0: the command will not exit when idle");
    }
    let pool = match connect(&config, cim_webhook::SCHEMA, 1).await {
        Ok(p) => p,
        Err(e) => return fail(&e, 1),
    };
    let client = match cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: config.nats_url.clone(),
        client_name: "cim-wake".into(),
        connect_timeout: config.connect_timeout,
        security: config.nats_security.clone(),
    })
    .await
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("nats: {e}"), 1),
    };
    let js = cim_runtime::nats::jetstream(client);
    let stop = cim_runtime::Shutdown::new();
    if let Err(e) = stop.listen_for_signals() {
        return fail(&format!("signals: {e}"), 1);
    }
    out(&format!("waking {service} on demand: {}", command.join(" ")));
    let mut running: Option<Child> = None;
    loop {
        if let Some(child) = running.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            out(&format!("{service} exited ({status})"));
            running = None;
        }
        if running.is_none() {
            match cim_webhook::delivery::idle::waiting(&pool, &js, &config.subject_prefix).await {
                Ok(w) if w.any() => match Command::new(program).args(args).spawn() {
                    Ok(child) => {
                        out(&format!(
                            "{service} started (pid {}): {} messages, {} deliveries waiting",
                            child.id(),
                            w.messages,
                            w.due
                        ));
                        running = Some(child);
                    }
                    Err(e) => return fail(&format!("starting {program}: {e}"), 1),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cim wake: could not tell whether work waits"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.wait() => break,
        }
    }
    if let Some(mut child) = running {
        // The service drains on SIGTERM like under any supervisor.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let status = child.wait();
        out(&format!("{service} stopped ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string())));
    }
    ExitCode::SUCCESS
}
