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
    /// A configuration file given first (a Sentinel needs one it can rewrite).
    config: Option<PathBuf>,
    /// More arguments after the usual ones.
    extra: Vec<String>,
}

impl OwnServer {
    /// Starts one on a free loopback port, in a directory of its own named `name`.
    #[allow(dead_code)] // not every test binary uses every form
    pub(crate) fn start(binary: PathBuf, name: &str) -> Self {
        Self::start_with(binary, name, None, &[])
    }

    /// Starts one with `config` written to a file given first, and `extra`
    /// arguments (`{port}` in either stands for the server's port).
    #[allow(dead_code)]
    pub(crate) fn start_with(
        binary: PathBuf,
        name: &str,
        config: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = config.map(|text| {
            let path = dir.join("server.conf");
            std::fs::write(&path, text.replace("{port}", &port.to_string())).unwrap();
            path
        });
        let mut server = Self {
            binary,
            dir,
            port,
            child: None,
            config,
            extra: extra
                .iter()
                .map(|a| a.replace("{port}", &port.to_string()))
                .collect(),
        };
        server.run();
        server
    }

    /// Its port.
    #[allow(dead_code)]
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Runs the server (again, on the same port, with nothing kept).
    #[allow(dead_code)]
    pub(crate) fn run(&mut self) {
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg(config);
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("BROKER_SESSION_REDIS_SERVER runs");
        self.child = Some(child);
    }

    /// Kills it with SIGKILL: no goodbye to the clients.
    #[allow(dead_code)]
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL: no goodbye to the clients
            child.wait().unwrap();
        }
    }

    /// Its `redis://` URL.
    #[allow(dead_code)]
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
