//! A Redis server of a test's own (`BROKER_SESSION_REDIS_SERVER`), which the test may
//! kill and start again without disturbing the other tests' server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A Redis server of this test's own, so killing it does not disturb the other tests.
pub(crate) struct OwnServer {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts one on a free loopback port, in a directory of its own named `name`.
    pub(crate) fn start(binary: PathBuf, name: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            binary,
            dir,
            port,
            child: None,
        };
        server.run();
        server
    }

    /// Runs the server (again, on the same port, with nothing kept).
    pub(crate) fn run(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("BROKER_SESSION_REDIS_SERVER runs");
        self.child = Some(child);
    }

    /// Kills it with SIGKILL: no goodbye to the clients.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL: no goodbye to the clients
            child.wait().unwrap();
        }
    }

    /// Its `redis://` URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
