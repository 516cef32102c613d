//! Private server processes for the dependency tests (Postgres, Redis, NATS), each started by a
//! test on a free port of its own and stopped when the test ends.

#![allow(dead_code)] // each test binary uses part of it

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A server process, stopped when dropped: SIGINT (Postgres' fast shutdown) and a short wait,
/// then SIGKILL.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-INT").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_for(port: u16, server: &mut Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("{what} exited with {status} before listening");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `port` is free again (a stopped server's listener closed), so a server started
/// next on it binds.
pub fn wait_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "port {port} still accepts after its server stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
}
