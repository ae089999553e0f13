//! A real high-availability formation for failover tests: pg_auto_failover's monitor and
//! two data nodes on loopback ports, the secondary a synchronous standby of the primary.
//!
//! It runs from Debian's `postgresql-<version>-auto-failover` package (`pg_autoctl`) and
//! this machine's PostgreSQL binaries, as the `postgres` user when this process is root,
//! everything (data directories and `pg_autoctl`'s own files) under one temporary
//! directory. The monitor's health checks are tightened from their defaults (a 20-second
//! failure detection) to about 3 seconds, so that a test sees a failover in seconds. Every
//! process of the formation is killed and the directory removed when the [`Formation`] is
//! dropped, or when the process that started it exits, however it exits.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{Binaries, ClusterError, Runner, free_port, spawn_watchdog, unique};

/// The monitor's health checks, tightened for tests: a node is failed over after about
/// 3 seconds without an answer (the defaults take about 20).
const MONITOR_SETTINGS: [(&str, &str); 6] = [
    ("pgautofailover.health_check_period", "1000"),
    ("pgautofailover.health_check_timeout", "1000"),
    ("pgautofailover.health_check_max_retries", "1"),
    ("pgautofailover.health_check_retry_delay", "500"),
    ("pgautofailover.node_considered_unhealthy_timeout", "3000"),
    ("pgautofailover.primary_demote_timeout", "5000"),
];

/// How long the formation may take to reach a state a test waits for.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A running pg_auto_failover formation: a monitor and two data nodes.
pub struct Formation {
    binaries: Binaries,
    runner: Runner,
    autoctl: PathBuf,
    dir: PathBuf,
    monitor_port: u16,
    nodes: [u16; 2],
    /// The process groups of the `pg_autoctl` processes started, each with its server.
    groups: Vec<u32>,
}

impl fmt::Debug for Formation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Formation")
            .field("dir", &self.dir)
            .field("monitor_port", &self.monitor_port)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl Formation {
    /// Creates and starts the monitor, then a primary, then its synchronous standby, and
    /// waits until the standby streams synchronously (about 15 seconds).
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoAutoFailover`] when `pg_autoctl` is not installed; otherwise a
    /// command failing or the formation not settling within two minutes.
    pub fn start() -> Result<Self, ClusterError> {
        let binaries = Binaries::find().ok_or(ClusterError::NoBinaries)?;
        let autoctl = find_autoctl(&binaries).ok_or_else(|| ClusterError::NoAutoFailover {
            package: format!("postgresql-{}-auto-failover", binaries.major),
        })?;
        let runner = Runner::new()?;
        let dir = std::env::temp_dir().join(format!("pgbatch-formation-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)
            .map_err(|source| ClusterError::Io { what: format!("creating {}", dir.display()), source })?;
        runner.own(&dir)?;
        watch_owner(&dir)?;
        let mut formation = Formation {
            binaries,
            runner,
            autoctl,
            dir,
            monitor_port: free_port()?,
            nodes: [free_port()?, free_port()?],
            groups: Vec::new(),
        };
        formation.start_monitor()?;
        formation.start_node(0)?;
        formation.wait_until("the first node to run alone", |f| f.is_writable(f.nodes[0]))?;
        formation.start_node(1)?;
        formation.wait_until_replicating()?;
        Ok(formation)
    }

    /// The data nodes' ports, on 127.0.0.1.
    pub fn node_ports(&self) -> [u16; 2] {
        self.nodes
    }

    /// A URL listing both data nodes, for database `postgres` as user `postgres`, with
    /// `options` (`key=value&...`) appended.
    pub fn url(&self, options: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?sslmode=disable&{options}",
            self.nodes[0], self.nodes[1]
        )
    }

    /// The port of the node that accepts writes now, if one does.
    pub fn primary_port(&self) -> Option<u16> {
        self.nodes.into_iter().find(|&port| self.is_writable(port))
    }

    /// Kills the primary's `pg_autoctl` and its server with SIGKILL, as a machine losing
    /// power would; the monitor then promotes the standby. Returns the killed node's port.
    ///
    /// # Errors
    ///
    /// When no node is primary, or its processes cannot be signalled.
    pub fn kill_primary(&mut self) -> Result<u16, ClusterError> {
        let port = self.primary_port().ok_or_else(|| self.failure("no node is primary"))?;
        let node = self.node_index(port);
        let data = self.node_dir(node);
        // Its keeper's process group holds the server too; the server's own children end
        // when they find their postmaster gone.
        for pid in pids_of(&data) {
            let mut kill = Command::new("kill");
            kill.args(["-KILL", "--", &format!("-{pid}")]);
            let _ = kill.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        let mut kill = Command::new("pkill");
        kill.args(["-KILL", "-f"]).arg(&data);
        let _ = kill.status();
        Ok(port)
    }

    /// Starts a killed node's `pg_autoctl` again: it rejoins as the standby of the new
    /// primary (rewinding what it had that the new primary has not). Waits until it streams
    /// synchronously.
    ///
    /// # Errors
    ///
    /// When the node cannot be started or does not rejoin within two minutes.
    pub fn rejoin(&mut self, port: u16) -> Result<(), ClusterError> {
        let node = self.node_index(port);
        let _ = std::fs::remove_file(self.node_dir(node).join("postmaster.pid"));
        let mut run = self.autoctl_command();
        run.arg("run").arg("--pgdata").arg(self.node_dir(node));
        self.spawn(run, &format!("node{node}-rejoin"))?;
        self.wait_until_replicating()
    }

    /// Switches the roles over with `pg_autoctl perform switchover` and waits until the
    /// old primary streams synchronously from the new one.
    ///
    /// # Errors
    ///
    /// When the switchover fails or does not settle within two minutes.
    pub fn switchover(&self) -> Result<(), ClusterError> {
        let before = self.primary_port();
        let mut switchover = self.autoctl_command();
        switchover.args(["perform", "switchover", "--wait", "120", "--pgdata"]).arg(self.dir.join("monitor"));
        self.runner.run(switchover)?;
        self.wait_until("a new primary", |f| f.primary_port().is_some_and(|p| Some(p) != before))?;
        self.wait_until_replicating()
    }

    /// Waits until a primary has a standby streaming synchronously.
    fn wait_until_replicating(&self) -> Result<(), ClusterError> {
        self.wait_until("a synchronous standby", |f| {
            f.primary_port().is_some_and(|port| {
                f.query(port, "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')")
                    .as_deref()
                    == Some("1")
            })
        })
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) -> Result<(), ClusterError> {
        let started = Instant::now();
        while started.elapsed() < SETTLE_TIMEOUT {
            if done(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(self.failure(&format!("waited {SETTLE_TIMEOUT:?} for {what}")))
    }

    fn start_monitor(&mut self) -> Result<(), ClusterError> {
        let data = self.dir.join("monitor");
        let mut create = self.autoctl_command();
        create.args(["create", "monitor", "--pgdata"]).arg(&data);
        create.args(["--pgport", &self.monitor_port.to_string(), "--hostname", "127.0.0.1"]);
        create.args(["--auth", "trust", "--no-ssl", "--pgctl"]).arg(self.binaries.bin("pg_ctl"));
        self.runner.run(create)?;
        let mut run = self.autoctl_command();
        run.arg("run").arg("--pgdata").arg(&data);
        self.spawn(run, "monitor")?;
        self.wait_until("the monitor", |f| f.query(f.monitor_port, "SELECT 1").is_some())?;
        for (name, value) in MONITOR_SETTINGS {
            self.query(self.monitor_port, &format!("ALTER SYSTEM SET {name} = {value}"))
                .ok_or_else(|| self.failure(&format!("setting {name} on the monitor")))?;
        }
        self.query(self.monitor_port, "SELECT pg_reload_conf()")
            .map(drop)
            .ok_or_else(|| self.failure("reloading the monitor"))
    }

    fn start_node(&mut self, node: usize) -> Result<(), ClusterError> {
        let mut create = self.autoctl_command();
        create.args(["create", "postgres", "--pgdata"]).arg(self.node_dir(node));
        create.args(["--pgport", &self.nodes[node].to_string(), "--hostname", "127.0.0.1"]);
        create.args(["--auth", "trust", "--no-ssl", "--pgctl"]).arg(self.binaries.bin("pg_ctl"));
        create
            .args(["--monitor", &format!("postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover", self.monitor_port)]);
        create.arg("--run");
        self.spawn(create, &format!("node{node}"))
    }

    /// Starts a long-running `pg_autoctl` in a process group of its own, logging to a file.
    fn spawn(&mut self, mut command: Command, name: &str) -> Result<(), ClusterError> {
        let log_path = self.dir.join(format!("{name}.log"));
        let io = |source| ClusterError::Io { what: format!("starting {name}'s pg_autoctl"), source };
        let log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(io)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(io)?;
        self.groups.push(child.id());
        // The watchdog kills these groups once this process exits.
        let mut groups = OpenOptions::new().create(true).append(true).open(self.dir.join("groups")).map_err(io)?;
        writeln!(groups, "{}", child.id()).map_err(io)
    }

    /// `pg_autoctl`, as the server's user, with its configuration and state kept in the
    /// formation's directory.
    fn autoctl_command(&self) -> Command {
        let mut command = self.runner.command(Path::new("env"));
        command
            .arg(format!("XDG_CONFIG_HOME={}", self.dir.join("config").display()))
            .arg(format!("XDG_DATA_HOME={}", self.dir.join("share").display()))
            .arg(format!(
                "PATH={}:{}",
                self.binaries.dir.display(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
            ))
            .arg(&self.autoctl);
        command
    }

    fn node_dir(&self, node: usize) -> PathBuf {
        self.dir.join(format!("node{node}"))
    }

    fn node_index(&self, port: u16) -> usize {
        usize::from(self.nodes[1] == port)
    }

    /// Whether the server on `port` accepts writes: not in recovery, not read-only.
    fn is_writable(&self, port: u16) -> bool {
        self.query(port, "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'")
            .as_deref()
            == Some("t")
    }

    /// The last line `psql` prints for `sql` on `port`, or `None` when it fails.
    fn query(&self, port: u16, sql: &str) -> Option<String> {
        let output = Command::new(self.binaries.bin("psql"))
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", if port == self.monitor_port { "pg_auto_failover" } else { "postgres" }])
            .args(["-c", sql])
            .env("PGCONNECT_TIMEOUT", "2")
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|output| output.status.success())?;
        String::from_utf8_lossy(&output.stdout).lines().last().map(str::to_owned)
    }

    /// An error carrying the formation's state and the ends of its logs.
    fn failure(&self, what: &str) -> ClusterError {
        let mut state = self.autoctl_command();
        state.args(["show", "state", "--pgdata"]).arg(self.dir.join("monitor"));
        let state = state.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let logs: String = ["monitor", "node0", "node1"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                format!("\n--- {name}.log\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect();
        ClusterError::Command {
            command: format!("pg_auto_failover formation: {what}"),
            output: format!("{state}{logs}"),
        }
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        stop_everything(&self.dir, &self.groups);
    }
}

/// Kills every process of the formation and removes its directory.
fn stop_everything(dir: &Path, groups: &[u32]) {
    for group in groups {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).stderr(Stdio::null()).status();
    }
    let _ = Command::new("pkill").args(["-KILL", "-f"]).arg(dir).status();
    let _ = std::fs::remove_dir_all(dir);
}

/// The process groups started for the node whose data directory is `data`: read from the
/// running processes, since a rejoined node runs under a new group.
fn pids_of(data: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let needle = data.to_string_lossy().into_owned();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains("pg_autoctl") && cmdline.split_whitespace().any(|arg| arg == needle)
        })
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The fields after the command's closing parenthesis: state, ppid, pgrp.
            stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().nth(2)?.parse().ok())
        })
        .collect()
}

/// `pg_autoctl` next to the server binaries, or on `PATH` (Debian puts it in `/usr/bin`).
fn find_autoctl(binaries: &Binaries) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    std::iter::once(binaries.dir.clone())
        .chain(on_path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("pg_autoctl"))
        .find(|path| path.is_file())
}

/// Starts a watchdog that kills the formation's processes and removes its directory once
/// this process has exited, however it exits.
fn watch_owner(dir: &Path) -> Result<(), ClusterError> {
    // `kill -9 -<group>`: the shell's own kill takes no `--`.
    let cleanup = "for g in $(cat \"$WATCHED/groups\" 2>/dev/null); do kill -9 -$g 2>/dev/null; done; \
                   pkill -KILL -f \"$WATCHED\"; rm -rf \"$WATCHED\"";
    spawn_watchdog(cleanup, dir, "the formation")
}
