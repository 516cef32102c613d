//! A real S3-compatible server for tests: moto's (PyPI `moto[server]`, installed from
//! tests/python/requirements.txt by scripts/test.sh), one per test, on a free port.

/// moto's S3 server (PyPI `moto[server]`, from tests/python/requirements.txt) on a free port,
/// with the Python of CIM_TEST_PYTHON; killed when dropped.
#[derive(Debug)]
pub struct MotoS3 {
    child: std::process::Child,
    port: u16,
    pub endpoint: String,
}

impl MotoS3 {
    pub fn start() -> Self {
        let python = std::env::var("CIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} -m moto.server: {e}"));
        let s3 = MotoS3 { child, port, endpoint: format!("http://127.0.0.1:{port}") };
        for _ in 0..300 {
            if s3.http("GET", "/").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return s3;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "moto S3 server never answered on port {port}: `{python} -m pip install -r tests/python/requirements.txt`"
        );
    }

    /// One unsigned request (moto does not check signatures): the response, or None.
    pub fn http(&self, method: &str, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        Some(response)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let response = self.http("PUT", &format!("/{bucket}")).unwrap_or_default();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    pub fn count_objects(&self, bucket: &str) -> usize {
        self.count_objects_under(bucket, "")
    }

    /// Objects whose key starts with `prefix` (up to 1,000, one listing page).
    pub fn count_objects_under(&self, bucket: &str, prefix: &str) -> usize {
        let path = format!("/{bucket}?list-type=2&prefix={}", prefix.replace('/', "%2F"));
        self.http("GET", &path).unwrap_or_default().matches("<Key>").count()
    }
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
