//! The example agent program (examples/agent/agent.py) as a real worker process: started against
//! a test's service as one agent, followed through the lines it prints, killed like a crash.

#![allow(dead_code)] // each test uses part of it

use std::process::Stdio;
use std::time::Duration;

use cim_core::TenantId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use cim_testkit::domain::Running;

use super::Service;

/// How long a worker is given to print what a test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

pub struct Worker {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line printed so far, in order.
    pub seen: Vec<String>,
}

impl Worker {
    /// Starts the example worker for `agent` and waits for its `welcome`.
    pub async fn start(svc: &Service, tenant: TenantId, agent: &str, args: &[&str]) -> Worker {
        Worker::start_at(&svc.running, tenant, agent, args).await
    }

    /// [`Worker::start`] against one replica.
    pub async fn start_at(service: &Running, tenant: TenantId, agent: &str, args: &[&str]) -> Worker {
        let mut worker = Worker::spawn(&service.grpc.to_string(), tenant, agent, args);
        worker.expect("welcome").await;
        worker
    }

    /// Starts the example worker for `agent` against `target` (host:port), without waiting.
    pub fn spawn(target: &str, tenant: TenantId, agent: &str, args: &[&str]) -> Worker {
        let python = std::env::var("CIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/agent/agent.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--target", target, "--tenant", &tenant.to_string(), "--agent-id", agent])
            .args(["--chunk-delay-ms", "5"])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the example worker starts (CIM_TEST_PYTHON with grpcio and grpcio-tools)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Worker { child, lines, seen: Vec::new() }
    }

    /// The first line (printed so far or later) whose words start with `words`.
    pub async fn expect(&mut self, words: &str) -> String {
        let matches = |line: &str| line == words || line.starts_with(&format!("{words} "));
        if let Some(line) = self.seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no line {words:?} within {PATIENCE:?}; saw {:?}", self.seen))
                .unwrap_or_else(|| panic!("the worker exited before {words:?}; saw {:?}", self.seen));
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    /// How many lines printed so far start with `words`.
    pub fn count(&mut self, words: &str) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.iter().filter(|l| l.starts_with(&format!("{words} "))).count()
    }

    /// Kills the process at once, as a crash would (SIGKILL), and reaps it.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("the killed worker is reaped");
    }

    /// Waits for the process to exit by itself (its stream ended) and its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("the worker exits").expect("reaped").code()
    }
}
