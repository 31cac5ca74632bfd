//! Worker processes for the fleet tests: this test binary started again, running only
//! one test (the worker) with the environment the test gives it, its stdout and
//! stderr read line by line (stderr lines prefixed `STDERR `, so that a secrets scan
//! covers what a worker logs too).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a worker may take to print an expected line.
const PATIENCE: Duration = Duration::from_secs(20);

/// A worker process and the lines it printed.
pub(crate) struct Worker {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, for failure messages and scans.
    pub(crate) seen: Vec<String>,
}

impl Worker {
    /// Runs test `worker` of this binary in a new process with `env` set.
    pub(crate) fn spawn(worker: &str, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args(["--exact", worker, "--nocapture", "--test-threads=1"]);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err_tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(format!("STDERR {line}")).is_err() {
                    return;
                }
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; returns it.
    pub(crate) fn expect(&mut self, prefix: &str) -> String {
        let end = Instant::now() + PATIENCE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {prefix:?} line from the worker; it said {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// The `ok` and `err` counts of the `DONE` line, once the worker has ended and
    /// everything else it printed is read.
    pub(crate) fn done(&mut self) -> (usize, usize) {
        let line = self.expect("DONE");
        let field = |name: &str| -> usize {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        let counts = (field("ok="), field("err="));
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        counts
    }

    /// Sends `signal` (`-KILL`, `-STOP`, `-CONT`) to the worker.
    #[allow(dead_code)] // not every test binary signals its workers
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
