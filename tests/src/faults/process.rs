//! One `keel-bench node` process: start it, talk to it on stdin/stdout, signal it, and make sure
//! it dies with its owner.
//!
//! The process prints a `ready` line once it serves, then answers each admin command line with
//! exactly one JSON line. Answers are read by a thread into a channel, so every wait has a
//! deadline; a command whose answer comes too late leaves that answer owed, and it is skipped
//! when it arrives. Its stderr goes to a log file that survives restarts, whose tail the harness
//! prints when a scenario fails.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use keel_engine::core::NodeId;
use serde_json::Value;

use super::binary::keel_bench;
use super::HarnessError;

/// How long a node may take from spawn to `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A node process, running or not. Dropping it kills the process.
#[derive(Debug)]
pub struct NodeProcess {
    id: NodeId,
    config: PathBuf,
    log: PathBuf,
    running: Option<Running>,
    /// Exit status of the last process, once it is gone.
    last_exit: Option<ExitStatus>,
    starts: u32,
}

#[derive(Debug)]
struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// Answers still to come for commands that timed out.
    owed: usize,
    paused: bool,
}

impl NodeProcess {
    /// A node that will run with `config`, logging to `log`. Not started.
    pub fn new(id: NodeId, config: PathBuf, log: PathBuf) -> Self {
        Self {
            id,
            config,
            log,
            running: None,
            last_exit: None,
            starts: 0,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Whether a process exists (it may be paused, or have exited without being reaped yet).
    pub fn is_running(&mut self) -> bool {
        self.reap();
        self.running.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.paused)
    }

    /// The exit status of the process that ran last, once it exited (or was killed).
    pub fn last_exit(&mut self) -> Option<ExitStatus> {
        self.reap();
        self.last_exit
    }

    /// Starts the process and waits until it says it is ready.
    pub fn start(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Err(self.fail("start", "already running"));
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| HarnessError::io(&self.log, e))?;
        writeln!(
            log,
            "=== harness: start #{} of node {}",
            self.starts, self.id
        )
        .map_err(|e| HarnessError::io(&self.log, e))?;
        let mut child = Command::new(keel_bench())
            .arg("node")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| self.fail("spawn", &e.to_string()))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("node-{}-stdout", self.id))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| self.fail("spawn a reader thread", &e.to_string()))?;
        self.last_exit = None;
        self.running = Some(Running {
            child,
            stdin,
            lines,
            owed: 0,
            paused: false,
        });
        let ready = self.next_line(READY_TIMEOUT, "ready")?;
        match ready.get("event").and_then(Value::as_str) {
            Some("ready") => Ok(()),
            _ => Err(self.fail("start", &format!("expected a ready line, got {ready}"))),
        }
    }

    /// Sends an admin command and waits up to `timeout` for its answer's fields (`ok: false` is
    /// an error carrying the node's message).
    pub fn admin(&mut self, command: &str, timeout: Duration) -> Result<Value, HarnessError> {
        self.reap();
        let Some(running) = self.running.as_mut() else {
            return Err(self.fail(command, "not running"));
        };
        if running.paused {
            return Err(self.fail(command, "paused"));
        }
        if writeln!(running.stdin, "{command}")
            .and_then(|()| running.stdin.flush())
            .is_err()
        {
            return Err(self.fail(command, "stdin closed"));
        }
        let answer = self.next_line(timeout, command)?;
        if answer.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(answer)
        } else {
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("?");
            Err(HarnessError::Refused {
                id: self.id,
                command: command.to_string(),
                error: error.to_string(),
            })
        }
    }

    /// The next JSON line from the process, skipping answers owed to earlier timeouts.
    fn next_line(&mut self, timeout: Duration, what: &str) -> Result<Value, HarnessError> {
        let deadline = Instant::now() + timeout;
        let running = self.running.as_mut().expect("checked by the caller");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match running.lines.recv_timeout(left) {
                Ok(line) if running.owed > 0 => {
                    running.owed -= 1;
                    tracing::debug!(id = self.id, line, "skipped a late answer");
                }
                Ok(line) => {
                    return serde_json::from_str(&line).map_err(|e| HarnessError::Protocol {
                        id: self.id,
                        line: format!("{line} ({e})"),
                    })
                }
                Err(RecvTimeoutError::Timeout) => {
                    running.owed += 1;
                    return Err(HarnessError::Timeout {
                        what: format!("node {}: {what}", self.id),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(what, "the process closed its stdout (exited?)"));
                }
            }
        }
    }

    /// SIGKILL, and reap it. Nothing it wrote is lost (the page cache survives).
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            self.last_exit = running.child.wait().ok();
        }
    }

    /// SIGSTOP: the process freezes, its clocks keep running.
    pub fn pause(&mut self) -> Result<(), HarnessError> {
        self.signal(libc::SIGSTOP, true)
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<(), HarnessError> {
        self.signal(libc::SIGCONT, false)
    }

    fn signal(&mut self, signal: libc::c_int, paused: bool) -> Result<(), HarnessError> {
        let Some(running) = self.running.as_mut() else {
            return Err(self.fail("signal", "not running"));
        };
        send_signal(running.child.id(), signal)
            .map_err(|e| HarnessError::io(Path::new("kill(2)"), e))?;
        running.paused = paused;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.last_exit() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Notices a process that exited by itself.
    fn reap(&mut self) {
        let exited = match self.running.as_mut() {
            Some(r) => r.child.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = exited {
            self.running = None;
            self.last_exit = Some(status);
        }
    }

    /// The last `lines` lines of the node's stderr, across its restarts.
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(file) = File::open(&self.log) else {
            return String::from("(no log)");
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn fail(&self, what: &str, reason: &str) -> HarnessError {
        HarnessError::Node {
            id: self.id,
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` to the child process `pid`.
#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) takes no pointers, so it cannot touch this process's memory. The pid is
    // our own child's and it has not been reaped (the caller holds its `Child`), so the pid
    // cannot have been reused by another process.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
