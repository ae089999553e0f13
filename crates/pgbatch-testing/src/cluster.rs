//! A throwaway PostgreSQL cluster run from the binaries installed on this machine: its own
//! data directory and port, stopped and removed when the process that started it exits.
//!
//! `initdb` runs once per machine and PostgreSQL version, into a template directory; each
//! cluster copies the template and starts on a free port of 127.0.0.1 with trust
//! authentication for the user `postgres`. PostgreSQL refuses to run as root: when this
//! process is root, the server runs as the `postgres` user. A small watchdog process stops
//! the server and removes its directory when the process that started it exits, also when
//! that process is killed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio_postgres::Config;

/// Why a local cluster could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries found (looked for initdb through pg_config --bindir, PATH and \
         /usr/lib/postgresql/*/bin): install them, e.g. `apt-get install -y postgresql`"
    )]
    NoBinaries,
    /// This process runs as root and there is no `postgres` user to run the server as.
    #[error("running as root and there is no `postgres` user to run PostgreSQL as (it refuses to run as root)")]
    NoServerUser,
    /// pg_auto_failover's `pg_autoctl` is not installed (for [`Formation`](crate::Formation)).
    #[error("pg_autoctl not found: install pg_auto_failover, e.g. `apt-get install -y {package}`")]
    NoAutoFailover {
        /// The Debian package that provides it for this machine's PostgreSQL.
        package: String,
    },
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// PostgreSQL's server binaries on this machine.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) dir: PathBuf,
    /// The major version, from `postgres --version`.
    pub(crate) major: String,
}

impl Binaries {
    pub(crate) fn find() -> Option<Binaries> {
        let pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let on_path =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
        let mut installed: Vec<PathBuf> = ["/usr/lib/postgresql", "/usr/local/lib/postgresql"]
            .iter()
            .filter_map(|root| std::fs::read_dir(root).ok())
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .collect();
        // The newest version first.
        installed.sort_by_key(|dir| std::cmp::Reverse(version_of(dir)));
        let dir = pg_config
            .into_iter()
            .chain(on_path)
            .chain(installed)
            .chain(["/usr/local/pgsql/bin".into(), "/opt/homebrew/bin".into()])
            .find(|dir| {
                dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() && dir.join("postgres").is_file()
            })?;
        let output = Command::new(dir.join("postgres")).arg("--version").output().ok()?;
        let version = String::from_utf8_lossy(&output.stdout);
        let major = version.split_whitespace().last()?.split('.').next()?.to_owned();
        Some(Binaries { dir, major })
    }

    pub(crate) fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// `/usr/lib/postgresql/15/bin` → 15.
fn version_of(dir: &Path) -> u32 {
    dir.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Whether this process runs as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs PostgreSQL's programs, as the `postgres` user when this process is root.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    as_postgres: bool,
}

impl Runner {
    pub(crate) fn new() -> Result<Self, ClusterError> {
        let as_postgres = is_root();
        if as_postgres && !Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success()) {
            return Err(ClusterError::NoServerUser);
        }
        Ok(Runner { as_postgres })
    }

    pub(crate) fn command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Runs a command to completion; its output is the error when it fails.
    pub(crate) fn run(&self, mut command: Command) -> Result<(), ClusterError> {
        let description = format!("{command:?}");
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ClusterError::Io { what: description.clone(), source })?;
        if output.status.success() {
            return Ok(());
        }
        Err(ClusterError::Command {
            command: description,
            output: format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        })
    }

    /// Makes `path` the server user's.
    pub(crate) fn own(&self, path: &Path) -> Result<(), ClusterError> {
        if !self.as_postgres {
            return Ok(());
        }
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:"]).arg(path);
        self.run_plain(chown)
    }

    fn run_plain(&self, command: Command) -> Result<(), ClusterError> {
        Runner { as_postgres: false }.run(command)
    }
}

/// A running private cluster.
pub struct LocalCluster {
    binaries: Binaries,
    runner: Runner,
    dir: PathBuf,
    port: u16,
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster").field("dir", &self.dir).field("port", &self.port).finish()
    }
}

impl LocalCluster {
    /// Starts a new cluster; `settings` are extra `-c name=value` server settings, for
    /// example `("ssl", "on")`.
    ///
    /// # Errors
    ///
    /// [`ClusterError`]: no binaries, no user to run them as, or a command failing.
    pub fn start(settings: &[(&str, &str)]) -> Result<Self, ClusterError> {
        let binaries = Binaries::find().ok_or(ClusterError::NoBinaries)?;
        let runner = Runner::new()?;
        let template = template(&binaries, &runner)?;
        let dir = std::env::temp_dir().join(format!("pgbatch-cluster-{}-{}", std::process::id(), unique()));
        let mut copy = Command::new("cp");
        copy.arg("-a").arg(&template).arg(&dir);
        runner.run_plain(copy)?;
        runner.own(&dir)?;
        watch_owner(&binaries, &runner, &dir)?;
        let port = free_port()?;
        let cluster = LocalCluster { binaries, runner, dir, port };
        cluster.write_settings(settings)?;
        cluster.launch()?;
        Ok(cluster)
    }

    /// Starts a hot standby of this cluster: a base backup streamed from it
    /// (`pg_basebackup -R`), following it by streaming replication, on a port of its own.
    ///
    /// # Errors
    ///
    /// [`ClusterError`]: the base backup or the start failing.
    pub fn start_standby(&self) -> Result<LocalCluster, ClusterError> {
        let dir = std::env::temp_dir().join(format!("pgbatch-cluster-{}-{}", std::process::id(), unique()));
        let mut backup = self.runner.command(&self.binaries.bin("pg_basebackup"));
        backup.arg("-D").arg(&dir).args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"]);
        backup.args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        self.runner.run(backup)?;
        watch_owner(&self.binaries, &self.runner, &dir)?;
        let standby =
            LocalCluster { binaries: self.binaries.clone(), runner: self.runner.clone(), dir, port: free_port()? };
        standby.launch()?;
        Ok(standby)
    }

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shell command that stops the cluster and removes its directory: what its
    /// watchdog runs when the process that started it exits.
    pub(crate) fn removal(&self) -> String {
        removal(&self.binaries, &self.runner, &self.dir)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// A configuration for database `postgres` as user `postgres`.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        config.host("127.0.0.1").port(self.port).user("postgres").dbname("postgres");
        config.connect_timeout(Duration::from_secs(10));
        config
    }

    /// Kills the server and all its processes with SIGKILL, as a machine losing power
    /// would (the operating system keeps what was written: committed data survives).
    ///
    /// # Errors
    ///
    /// When the server's process cannot be found or signalled.
    pub fn crash(&self) -> Result<(), ClusterError> {
        let pid = self.postmaster_pid()?;
        // The children are listed first: a server cannot start while one of them is still
        // attached to the old shared memory ("pre-existing shared memory block is still in
        // use"), and once the postmaster is gone they are no longer its children.
        let listed = Command::new("pgrep").args(["-P", &pid.to_string()]).output();
        let children: Vec<u32> = listed
            .map(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        let mut kill_children = Command::new("pkill");
        kill_children.args(["-KILL", "-P", &pid.to_string()]);
        let _ = kill_children.status();
        let mut postmaster = Command::new("kill");
        postmaster.args(["-KILL", &pid.to_string()]);
        self.runner.run_plain(postmaster)?;
        // Each is gone once its pid is gone or a zombie nobody has reaped yet.
        for process in std::iter::once(pid).chain(children) {
            for _ in 0..500 {
                let state = std::fs::read_to_string(format!("/proc/{process}/stat")).unwrap_or_default();
                let state = state.rfind(')').and_then(|at| state[at + 1..].split_whitespace().next());
                if matches!(state, None | Some("Z" | "X")) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // A killed postmaster can stay a zombie for a while, and PostgreSQL takes a live pid
        // in its lock file for a server still running: the lock is stale, remove it.
        let _ = std::fs::remove_file(self.dir.join("postmaster.pid"));
        let _ = std::fs::remove_file(self.dir.join(format!(".s.PGSQL.{}.lock", self.port)));
        Ok(())
    }

    /// Starts the server again after [`crash`](Self::crash) (it recovers from its log).
    ///
    /// # Errors
    ///
    /// When `pg_ctl start` fails.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.launch()
    }

    fn launch(&self) -> Result<(), ClusterError> {
        let mut start = self.runner.command(&self.binaries.bin("pg_ctl"));
        start
            .arg("-D")
            .arg(&self.dir)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display()))
            .arg("start");
        self.runner.run(start).map_err(|error| match error {
            ClusterError::Command { command, output } => {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                ClusterError::Command { command, output: format!("{output}server log: {}", tail.join("\n")) }
            }
            other => other,
        })
    }

    fn write_settings(&self, settings: &[(&str, &str)]) -> Result<(), ClusterError> {
        let mut conf = String::new();
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        let path = self.dir.join("postgresql.auto.conf");
        std::fs::write(&path, conf)
            .map_err(|source| ClusterError::Io { what: format!("writing {}", path.display()), source })?;
        self.runner.own(&path)
    }

    fn postmaster_pid(&self) -> Result<u32, ClusterError> {
        let path = self.dir.join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ClusterError::Io { what: format!("reading {}", path.display()), source })?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| ClusterError::Command { command: "reading postmaster.pid".into(), output: text.clone() })
    }

    /// Replaces the cluster's `pg_hba.conf`, and reloads it.
    ///
    /// # Errors
    ///
    /// When the file cannot be written or the server not reloaded.
    pub fn set_hba(&self, hba: &str) -> Result<(), ClusterError> {
        let path = self.dir.join("pg_hba.conf");
        std::fs::write(&path, hba)
            .map_err(|source| ClusterError::Io { what: format!("writing {}", path.display()), source })?;
        self.runner.own(&path)?;
        self.reload()
    }

    /// Replaces the server settings given at [`start`](Self::start) with `settings`, and
    /// reloads them: for settings a reload applies (`ssl` and its files, for example).
    /// Like every reload, it takes effect a moment later, for new connections.
    ///
    /// # Errors
    ///
    /// When the settings cannot be written or the server not reloaded.
    pub fn reconfigure(&self, settings: &[(&str, &str)]) -> Result<(), ClusterError> {
        self.write_settings(settings)?;
        self.reload()
    }

    fn reload(&self) -> Result<(), ClusterError> {
        let mut reload = self.runner.command(&self.binaries.bin("pg_ctl"));
        reload.arg("-D").arg(&self.dir).arg("reload");
        self.runner.run(reload)
    }

    /// Writes a file into the data directory, owned by the server's user and readable by
    /// it only (as a TLS key must be).
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn write_private_file(&self, name: &str, contents: &[u8]) -> Result<(), ClusterError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        let io = |source| ClusterError::Io { what: format!("writing {}", path.display()), source };
        std::fs::write(&path, contents).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        self.runner.own(&path)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let mut stop = self.runner.command(&self.binaries.bin("pg_ctl"));
        stop.arg("-D").arg(&self.dir).args(["-m", "immediate", "-w", "stop"]);
        let _ = self.runner.run(stop);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A number no other cluster of this process has.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A port of 127.0.0.1 that nothing listens on right now.
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|source| ClusterError::Io { what: "finding a free port".into(), source })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| ClusterError::Io { what: "finding a free port".into(), source })
}

/// The initialised template for this machine's PostgreSQL version, made once: trust
/// authentication, user `postgres`, small settings for tests.
fn template(binaries: &Binaries, runner: &Runner) -> Result<PathBuf, ClusterError> {
    let base = std::env::temp_dir().join(format!("pgbatch-template-pg{}", binaries.major));
    let ready = base.join("pgbatch-ready");
    if ready.exists() {
        return Ok(base.join("data"));
    }
    // One process makes it; the others wait for it.
    let lock = std::env::temp_dir().join(format!("pgbatch-template-pg{}.lock", binaries.major));
    let mut waited = Duration::ZERO;
    let _lock = loop {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(file) => break LockFile { path: lock.clone(), _file: file },
            Err(_) if ready.exists() => return Ok(base.join("data")),
            Err(_) if waited > Duration::from_secs(120) => {
                // A process died holding the lock: take it over.
                let _ = std::fs::remove_file(&lock);
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                waited += Duration::from_millis(100);
            }
        }
    };
    if ready.exists() {
        return Ok(base.join("data"));
    }
    let _ = std::fs::remove_dir_all(&base);
    let data = base.join("data");
    std::fs::create_dir_all(&data)
        .map_err(|source| ClusterError::Io { what: format!("creating {}", data.display()), source })?;
    runner.own(&base)?;
    let mut initdb = runner.command(&binaries.bin("initdb"));
    initdb.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
    runner.run(initdb)?;
    let conf = "fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\nmax_connections = 200\n\
                unix_socket_permissions = 0777\nlog_min_messages = fatal\n";
    let mut settings = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .map_err(|source| ClusterError::Io { what: "opening postgresql.conf".into(), source })?;
    std::io::Write::write_all(&mut settings, conf.as_bytes())
        .map_err(|source| ClusterError::Io { what: "writing postgresql.conf".into(), source })?;
    std::fs::write(&ready, b"")
        .map_err(|source| ClusterError::Io { what: "marking the template ready".into(), source })?;
    Ok(data)
}

/// Removes the lock file when the template is made (or making it failed).
struct LockFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts a watchdog that stops the cluster in `dir` and removes it once this process has
/// exited, however it exits.
fn watch_owner(binaries: &Binaries, runner: &Runner, dir: &Path) -> Result<(), ClusterError> {
    spawn_watchdog(&removal(binaries, runner, dir), dir, "the cluster")
}

/// The shell command that stops the cluster in `dir` and removes its directory.
fn removal(binaries: &Binaries, runner: &Runner, dir: &Path) -> String {
    let as_owner = if runner.as_postgres { "runuser -u postgres -- " } else { "" };
    format!(
        "{as_owner}'{}' -D '{}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{}'",
        binaries.bin("pg_ctl").display(),
        dir.display(),
        dir.display()
    )
}

/// The file that tells the watchdog of `watched` (a cluster's directory, a container's id)
/// to leave it running when this process exits: a failed test's database was kept, and
/// with it the server it is on.
pub(crate) fn keep_marker(watched: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from("pgbatch-testing-keep-");
    name.push(watched.file_name().unwrap_or(watched.as_os_str()));
    std::env::temp_dir().join(name)
}

/// Starts a shell that runs `cleanup` once this process has exited, however it exits (a
/// killed test process included). `cleanup` finds `dir` in `$WATCHED`, so that the shell's
/// own command line does not name it (and a `pkill -f` of it spares the shell); `what`
/// names it in the error.
///
/// When the file [`keep_marker`]`(dir)` exists by then, the watchdog removes that file
/// instead and leaves what it watches running.
pub(crate) fn spawn_watchdog(cleanup: &str, dir: &Path, what: &str) -> Result<(), ClusterError> {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; if [ -e \"$KEEP\" ]; then rm -f \"$KEEP\"; else {cleanup}; fi",
        std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .env("WATCHED", dir)
        .env("KEEP", keep_marker(dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|source| ClusterError::Io { what: format!("starting the watchdog of {what}"), source })
}
