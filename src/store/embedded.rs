//! The embedded default database: with no `DATABASE_URL`, `ironfhir serve` runs a private
//! PostgreSQL cluster in `<data-dir>/postgres` from the locally installed PostgreSQL binaries.
//!
//! Layout (everything under `<data-dir>/postgres`, mode 0700):
//! - `data/`: PGDATA, created by `initdb` (into `data.initdb/`, renamed when complete, so an
//!   interrupted first start never leaves a half-initialised cluster behind);
//! - `run/`: the Unix socket directory (mode 0700). When its absolute path would be too long for
//!   a Unix socket address (about 104 bytes) or holds characters outside `[A-Za-z0-9/._+-]`, a
//!   private `/tmp/ironfhir-<hash of the path>` is used instead;
//! - `log/postgres.log`: the server log (rotated once to `postgres.log.1` past 16 MiB at start).
//!
//! The server listens on no TCP address (`listen_addresses=''`), so `trust` authentication on the
//! private socket is safe: only the owner of the socket directory (and root) can connect.
//!
//! PostgreSQL refuses to run as root. When ironfhir runs as root the cluster is owned by and runs
//! as the `postgres` system user (`runuser -u postgres --`, or `su` where runuser is missing); the
//! root process still connects, since root may enter the 0700 socket directory.
//!
//! A postmaster that outlives its ironfhir (killed with SIGKILL; pg_ctl puts it in its own
//! session, so it survives) is adopted by the next start. A `postmaster.pid` left by a crashed
//! postmaster is replaced by the postmaster itself when its PID is gone; when the PID is a zombie
//! or now belongs to another process (common after a container restart), `/proc` tells and the
//! file is removed here, as are stale socket lock files in the private socket directory.
//!
//! Two ironfhir processes on one data directory are not guarded against: the second adopts the
//! first one's server, and whichever stops first stops it for both.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// Bootstrap superuser created by initdb; ironfhir connects as it.
const SUPERUSER: &str = "ironfhir";
/// The application database.
const DATABASE: &str = "ironfhir";
/// Port number: with no TCP listener it only names the socket file (`.s.PGSQL.5432`). Set
/// explicitly so that a `PGPORT` in the environment cannot move it.
const PORT: u16 = 5432;
/// The system user that runs the cluster when ironfhir runs as root.
const SERVER_USER_FOR_ROOT: &str = "postgres";
/// Longest socket file path accepted everywhere (`sun_path` is 104 bytes on macOS/BSD, 108 on
/// Linux, both including the terminating NUL).
const MAX_SOCKET_PATH: usize = 103;
/// `pg_ctl start -t`: crash recovery after a power loss may take a while.
const START_TIMEOUT_SECS: u32 = 300;
/// `pg_ctl stop -t` for a fast shutdown (aborts transactions, then a checkpoint).
const STOP_TIMEOUT_SECS: u32 = 120;
/// How long to retry connecting after start or adoption (server still starting up).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The log is rotated (once) at start past this size.
const LOG_ROTATE_BYTES: u64 = 16 << 20;

/// Server settings passed on the command line. Durability stays on (`fsync`, `synchronous_commit`,
/// `full_page_writes`): this holds health records. The rest suit a small OLTP server on SSD.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("max_connections", "100"),
    ("shared_buffers", "128MB"),
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    // JIT compilation costs more than it saves on short JSONB lookups.
    ("jit", "off"),
    ("random_page_cost", "1.1"),
    ("work_mem", "8MB"),
    ("maintenance_work_mem", "128MB"),
    ("max_wal_size", "2GB"),
];

/// A private PostgreSQL cluster in `<data_dir>/postgres`, reachable only through a Unix socket.
///
/// Why: ironfhir needs no database setup to try out or to run small deployments; production sets
/// `DATABASE_URL` instead. Dropping it (or [`EmbeddedPostgres::stop`]) shuts the cluster down.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    pgdata: PathBuf,
    log_file: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    run_as: RunAs,
    stopped: bool,
}

/// Why the embedded database could not be started or stopped; each message says what the operator
/// can do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No PostgreSQL server installation was found.
    #[error(
        "PostgreSQL server binaries (pg_ctl, initdb, postgres) were not found on PATH nor in {searched}. \
         Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; Fedora/RHEL: \
         `dnf install postgresql-server`; macOS: `brew install postgresql@16`) or put its bin directory \
         on PATH, or set DATABASE_URL to use an existing PostgreSQL server"
    )]
    BinariesNotFound { searched: String },

    /// The cluster was created by a PostgreSQL major version that is no longer installed.
    #[error(
        "the embedded database {pgdata} was created by PostgreSQL {data_version}, but the installed \
         server binaries are version {found}. Install PostgreSQL {data_version} as well (Debian/Ubuntu: \
         `apt-get install postgresql-{data_version}`) or upgrade the cluster with pg_upgrade"
    )]
    VersionMismatch {
        pgdata: PathBuf,
        data_version: String,
        found: String,
    },

    /// Running as root, but there is no unprivileged user to run PostgreSQL as.
    #[error(
        "ironfhir runs as root and PostgreSQL refuses to run as root, so the embedded database runs as \
         the `postgres` system user, which does not exist. Install PostgreSQL from the distribution's \
         packages (they create that user), run ironfhir as an unprivileged user, or set DATABASE_URL"
    )]
    NoServerUser,

    /// Running as root, but neither `runuser` nor `su` is available to switch user.
    #[error(
        "ironfhir runs as root, and neither runuser nor su was found to run PostgreSQL as the `postgres` \
         user. Run ironfhir as an unprivileged user or set DATABASE_URL"
    )]
    NoUserSwitch,

    /// pg_ctl passes paths through `/bin/sh` inside double quotes, which these characters break.
    #[error(
        "the data directory {path:?} contains a character that pg_ctl cannot pass to the server \
         (\" $ ` \\ or a line break); choose a --data-dir without it"
    )]
    UnsupportedPath { path: PathBuf },

    /// Running as root: the `postgres` user cannot reach the cluster directory.
    #[error(
        "the PostgreSQL server runs as the `postgres` user (ironfhir runs as root), which cannot reach \
         {path}{blocked}. Give it search permission on every parent directory (e.g. `chmod o+x DIR`) \
         or choose a --data-dir it can reach, such as one under /var/lib"
    )]
    NotReachable { path: PathBuf, blocked: String },

    /// A directory that must be private to the server user belongs to someone else.
    #[error(
        "{path} must be a directory owned by {owner} (the database lives there unprotected otherwise), \
         but it is not; remove it or fix its owner"
    )]
    NotPrivate { path: PathBuf, owner: String },

    /// PGDATA exists but holds something other than a cluster; never overwritten.
    #[error(
        "{path} is not empty and holds no PostgreSQL cluster (no PG_VERSION); move it aside to let \
         ironfhir create a new database there"
    )]
    NotACluster { path: PathBuf },

    /// A file system operation failed.
    #[error("cannot {action}: {source}")]
    Io { action: String, source: io::Error },

    /// A PostgreSQL command failed; its output (and the server log's tail) is included.
    #[error("{command} failed ({status}):\n{output}{log_tail}")]
    Command {
        command: String,
        status: String,
        output: String,
        log_tail: String,
    },

    /// The server runs but the database could not be reached or created.
    #[error(
        "cannot {action} through the socket in {socket_dir}: {source}; see the server log {log}"
    )]
    Database {
        action: String,
        socket_dir: PathBuf,
        log: PathBuf,
        source: sqlx::Error,
    },
}

impl EmbeddedPostgres {
    /// Finds the binaries, initialises the cluster on first use, starts it (or adopts one already
    /// running from this data dir), creates the database `ironfhir` if missing.
    ///
    /// Why adopt: a postmaster survives an ironfhir killed with SIGKILL; failing on it would make
    /// the data directory unusable until someone stops it by hand.
    pub async fn start(data_dir: &Path) -> Result<Self, EmbeddedError> {
        let run_as = RunAs::detect()?;
        let data_dir = prepare_data_dir(data_dir, &run_as)?;
        let pg_root = data_dir.join("postgres");
        check_path(&pg_root)?;
        let owner = run_as.owner();
        ensure_private_dir(&pg_root, owner)?;
        let log_dir = pg_root.join("log");
        ensure_private_dir(&log_dir, owner)?;
        let log_file = log_dir.join("postgres.log");
        if let Some((uid, gid)) = owner
            && log_file.exists()
        {
            chown(&log_file, uid, gid)?;
        }
        let socket_dir = socket_dir_for(&pg_root);
        ensure_private_dir(&socket_dir, owner)?;
        run_as.check_reachable(&pg_root).await?;

        let pgdata = pg_root.join("data");
        let bin_dir = find_binaries(&pgdata).await?;
        let mut this = EmbeddedPostgres {
            bin_dir,
            pgdata,
            log_file,
            socket_dir,
            port: PORT,
            run_as,
            // Nothing to stop until the server runs.
            stopped: true,
        };

        if !this.pgdata.join("PG_VERSION").exists() {
            this.init_cluster(&pg_root).await?;
        }
        if this.is_running().await? {
            tracing::info!(pgdata = %this.pgdata.display(), "adopting the embedded PostgreSQL left running by a previous ironfhir");
        } else {
            this.start_server().await?;
        }
        this.stopped = false;
        // From here on, an error drops `this`, which stops the server again.

        let pid = read_pid_file(&this.pgdata.join("postmaster.pid"));
        if let Some(dir) = pid.socket_dir {
            this.socket_dir = dir;
        }
        if let Some(port) = pid.port {
            this.port = port;
        }
        this.create_database().await?;
        tracing::info!(socket_dir = %this.socket_dir.display(), "embedded PostgreSQL ready");
        Ok(this)
    }

    /// sqlx connection URL, e.g.
    /// `postgres://ironfhir@localhost:5432/ironfhir?host=%2Fabs%2Fsocketdir&sslmode=disable`.
    ///
    /// Why this form: sqlx (like libpq) takes a `host` query parameter that starts with `/` as
    /// the socket directory; `sslmode=disable` because TLS over a local socket only costs, and a
    /// `PGSSLMODE=require` in the environment would otherwise break the connection.
    pub fn database_url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// Stops the cluster (`pg_ctl stop -m fast`) and waits for it.
    ///
    /// Why fast: open transactions are rolled back instead of waited for; everything committed is
    /// already durable.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        self.stopped = true;
        let output = tokio::process::Command::from(self.stop_command())
            .output()
            .await;
        self.check_stopped(output)?;
        tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost:{}/{database}?host={}&sslmode=disable",
            self.port,
            percent_encode(self.socket_dir.as_os_str().as_bytes())
        )
    }

    fn pg_ctl(&self) -> PathBuf {
        self.bin_dir.join("pg_ctl")
    }

    /// Runs initdb into `data.initdb/` and renames it to `data/` once complete.
    async fn init_cluster(&self, pg_root: &Path) -> Result<(), EmbeddedError> {
        if self.pgdata.exists() {
            let empty = fs::read_dir(&self.pgdata)
                .map_err(|e| io_error(format!("read {}", self.pgdata.display()), e))?
                .next()
                .is_none();
            if !empty {
                return Err(EmbeddedError::NotACluster {
                    path: self.pgdata.clone(),
                });
            }
            fs::remove_dir(&self.pgdata)
                .map_err(|e| io_error(format!("remove {}", self.pgdata.display()), e))?;
        }
        let staging = pg_root.join("data.initdb");
        let initdb = self.bin_dir.join("initdb");
        // C collation: byte order, fast and stable across libc upgrades (no index corruption);
        // C.UTF-8 character classes where available so upper()/lower() know non-ASCII letters.
        let locales: [&[&str]; 2] = [&["--locale=C", "--lc-ctype=C.UTF-8"], &["--locale=C"]];
        let mut last_error = None;
        for locale in locales {
            remove_dir_if_exists(&staging)?;
            let mut args: Vec<OsString> = vec!["-D".into(), staging.clone().into()];
            for arg in [
                "--auth-local=trust",
                "--auth-host=reject",
                "--username",
                SUPERUSER,
                "--encoding=UTF8",
                "--data-checksums",
            ] {
                args.push(arg.into());
            }
            args.extend(locale.iter().map(OsString::from));
            match self.run(&initdb, &args, "initdb").await {
                Ok(_) => {
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            remove_dir_if_exists(&staging)?;
            return Err(e);
        }
        fs::rename(&staging, &self.pgdata).map_err(|e| {
            io_error(
                format!("rename {} to {}", staging.display(), self.pgdata.display()),
                e,
            )
        })?;
        tracing::info!(pgdata = %self.pgdata.display(), "initialised the embedded PostgreSQL cluster");
        Ok(())
    }

    /// Whether a postmaster of this cluster runs. Removes a `postmaster.pid` naming a zombie or a
    /// reused PID, which would otherwise block the start.
    async fn is_running(&self) -> Result<bool, EmbeddedError> {
        let pid_path = self.pgdata.join("postmaster.pid");
        if !pid_path.exists() {
            return Ok(false);
        }
        let args: Vec<OsString> = vec!["status".into(), "-D".into(), self.pgdata.clone().into()];
        let output = self.output(&self.pg_ctl(), &args).await?;
        match output.status.code() {
            Some(0) => {}
            // "no server running": a stale postmaster.pid of a dead process, which the postmaster
            // itself replaces on start.
            Some(3) => return Ok(false),
            _ => return Err(command_error("pg_ctl status", &output, String::new())),
        }
        if let Some(pid) = read_pid_file(&pid_path).pid
            && pid_file_is_stale(pid, &self.pgdata)
        {
            tracing::warn!(pid, file = %pid_path.display(), "removing a stale postmaster.pid (its PID is a zombie or another process)");
            fs::remove_file(&pid_path)
                .map_err(|e| io_error(format!("remove {}", pid_path.display()), e))?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn start_server(&self) -> Result<(), EmbeddedError> {
        self.remove_stale_socket_files()?;
        rotate_log(&self.log_file)?;
        let mut options = format!(
            "-c listen_addresses='' -c port={PORT} -c unix_socket_directories='{}'",
            // Only [A-Za-z0-9/._+-] (see socket_dir_for), so no quoting issue in sh or the GUC list.
            self.socket_dir.display()
        );
        for (name, value) in SERVER_SETTINGS {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let args: Vec<OsString> = vec![
            "start".into(),
            "-w".into(),
            "-t".into(),
            START_TIMEOUT_SECS.to_string().into(),
            "-D".into(),
            self.pgdata.clone().into(),
            "-l".into(),
            self.log_file.clone().into(),
            "-o".into(),
            options.into(),
        ];
        self.run(&self.pg_ctl(), &args, "pg_ctl start").await?;
        tracing::info!(pgdata = %self.pgdata.display(), "started the embedded PostgreSQL");
        Ok(())
    }

    /// Socket and lock files in the private socket directory while no server of ours runs are
    /// leftovers of a crash; a lock file naming a reused PID would block the start.
    fn remove_stale_socket_files(&self) -> Result<(), EmbeddedError> {
        let entries = fs::read_dir(&self.socket_dir)
            .map_err(|e| io_error(format!("read {}", self.socket_dir.display()), e))?;
        for entry in entries.flatten() {
            if entry.file_name().as_bytes().starts_with(b".s.PGSQL.") {
                let path = entry.path();
                fs::remove_file(&path)
                    .map_err(|e| io_error(format!("remove {}", path.display()), e))?;
            }
        }
        Ok(())
    }

    /// Connects to the `postgres` database (retrying while the server starts up) and creates the
    /// `ironfhir` database if missing.
    async fn create_database(&self) -> Result<(), EmbeddedError> {
        let db_error = |action: &str, source| EmbeddedError::Database {
            action: action.to_owned(),
            socket_dir: self.socket_dir.clone(),
            log: self.log_file.clone(),
            source,
        };
        let options = PgConnectOptions::from_str(&self.url_for("postgres"))
            .map_err(|e| db_error("parse the connection URL", e))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut conn = loop {
            match PgConnection::connect_with(&options).await {
                Ok(conn) => break conn,
                Err(e) if is_transient(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(db_error("connect", e)),
            }
        };
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(DATABASE)
                .fetch_optional(&mut conn)
                .await
                .map_err(|e| db_error("look up the database", e))?;
        if exists.is_none() {
            match sqlx::raw_sql("CREATE DATABASE ironfhir")
                .execute(&mut conn)
                .await
            {
                Ok(_) => tracing::info!("created database {DATABASE}"),
                // Created concurrently: fine.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(db_error("create the database", e)),
            }
        }
        conn.close()
            .await
            .map_err(|e| db_error("close the connection", e))?;
        Ok(())
    }

    fn stop_command(&self) -> Command {
        let args: Vec<OsString> = vec![
            "stop".into(),
            "-D".into(),
            self.pgdata.clone().into(),
            "-m".into(),
            "fast".into(),
            "-w".into(),
            "-t".into(),
            STOP_TIMEOUT_SECS.to_string().into(),
        ];
        self.run_as.command(&self.pg_ctl(), &args)
    }

    /// A failed `pg_ctl stop` is fine when no server runs any more (already stopped by hand).
    fn check_stopped(&self, output: io::Result<Output>) -> Result<(), EmbeddedError> {
        let output = output.map_err(|e| io_error(format!("run {}", self.pg_ctl().display()), e))?;
        if output.status.success() || !self.pgdata.join("postmaster.pid").exists() {
            return Ok(());
        }
        Err(command_error(
            "pg_ctl stop",
            &output,
            log_tail(&self.log_file),
        ))
    }

    async fn output(&self, program: &Path, args: &[OsString]) -> Result<Output, EmbeddedError> {
        tokio::process::Command::from(self.run_as.command(program, args))
            .output()
            .await
            .map_err(|e| io_error(format!("run {}", program.display()), e))
    }

    async fn run(
        &self,
        program: &Path,
        args: &[OsString],
        label: &str,
    ) -> Result<Output, EmbeddedError> {
        let output = self.output(program, args).await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(command_error(label, &output, log_tail(&self.log_file)))
        }
    }
}

impl Drop for EmbeddedPostgres {
    /// Best-effort synchronous fast stop when [`EmbeddedPostgres::stop`] was not called (early
    /// return, panic): a server left running would hold the data directory.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        match self.check_stopped(self.stop_command().output()) {
            Ok(()) => {
                tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL stopped")
            }
            Err(e) => tracing::warn!(error = %e, "could not stop the embedded PostgreSQL"),
        }
    }
}

/// Who runs the PostgreSQL commands.
#[derive(Debug, Clone)]
enum RunAs {
    /// The current (non-root) user.
    Current,
    /// Root switches to the `postgres` system user.
    User {
        name: String,
        uid: Uid,
        gid: Gid,
        switch: UserSwitch,
    },
}

#[derive(Debug, Clone)]
enum UserSwitch {
    Runuser(PathBuf),
    Su(PathBuf),
}

impl RunAs {
    fn detect() -> Result<Self, EmbeddedError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(RunAs::Current);
        }
        let user = User::from_name(SERVER_USER_FOR_ROOT)
            .map_err(|e| io_error("look up the `postgres` user", io::Error::from(e)))?
            .ok_or(EmbeddedError::NoServerUser)?;
        let find = |name: &str| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        };
        let switch = match (find("runuser"), find("su")) {
            (Some(runuser), _) => UserSwitch::Runuser(runuser),
            (None, Some(su)) => UserSwitch::Su(su),
            (None, None) => return Err(EmbeddedError::NoUserSwitch),
        };
        Ok(RunAs::User {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            switch,
        })
    }

    /// The owner to give the cluster's directories, when it is not the current user.
    fn owner(&self) -> Option<(Uid, Gid)> {
        match self {
            RunAs::Current => None,
            RunAs::User { uid, gid, .. } => Some((*uid, *gid)),
        }
    }

    fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = match self {
            RunAs::Current => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            RunAs::User {
                name,
                switch: UserSwitch::Runuser(runuser),
                ..
            } => {
                let mut cmd = Command::new(runuser);
                cmd.arg("-u").arg(name).arg("--").arg(program).args(args);
                cmd
            }
            RunAs::User {
                name,
                switch: UserSwitch::Su(su),
                ..
            } => {
                let mut line = shell_quote(program.as_os_str());
                for arg in args {
                    line.push(b' ');
                    line.extend(shell_quote(arg));
                }
                let mut cmd = Command::new(su);
                cmd.arg("-s")
                    .arg("/bin/sh")
                    .arg("-c")
                    .arg(OsString::from_vec(line))
                    .arg(name);
                cmd
            }
        };
        // "/" because the server user may not be allowed into the caller's working directory;
        // own process group so that a Ctrl-C meant for ironfhir does not interrupt pg_ctl.
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    /// As root, checks that the `postgres` user can enter and write `pg_root`; names the first
    /// parent directory that blocks it.
    async fn check_reachable(&self, pg_root: &Path) -> Result<(), EmbeddedError> {
        let RunAs::User { uid, gid, .. } = self else {
            return Ok(());
        };
        // test -d DIR -a -w DIR -a -x DIR
        let root = pg_root.as_os_str();
        let args: Vec<OsString> = [
            OsStr::new("-d"),
            root,
            "-a".as_ref(),
            "-w".as_ref(),
            root,
            "-a".as_ref(),
            "-x".as_ref(),
            root,
        ]
        .iter()
        .map(|a| a.to_os_string())
        .collect();
        let output = tokio::process::Command::from(self.command(Path::new("test"), &args))
            .output()
            .await
            .map_err(|e| io_error("run test as the `postgres` user", e))?;
        if output.status.success() {
            return Ok(());
        }
        let blocked = pg_root
            .ancestors()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .find(|dir| {
                fs::metadata(dir).is_ok_and(|m| {
                    let bit = if m.uid() == uid.as_raw() {
                        0o100
                    } else if m.gid() == gid.as_raw() {
                        0o010
                    } else {
                        0o001
                    };
                    m.mode() & bit == 0
                })
            })
            .map(|dir| format!(" (blocked at {})", dir.display()))
            .unwrap_or_default();
        Err(EmbeddedError::NotReachable {
            path: pg_root.to_owned(),
            blocked,
        })
    }
}

/// Creates the data directory and returns its canonical absolute path. As root, directories
/// created here get `o+x` so that the `postgres` user can traverse them.
fn prepare_data_dir(data_dir: &Path, run_as: &RunAs) -> Result<PathBuf, EmbeddedError> {
    let absolute = std::path::absolute(data_dir)
        .map_err(|e| io_error(format!("resolve {}", data_dir.display()), e))?;
    check_path(&absolute)?;
    let missing: Vec<PathBuf> = absolute
        .ancestors()
        .take_while(|p| !p.exists())
        .map(Path::to_owned)
        .collect();
    fs::create_dir_all(&absolute)
        .map_err(|e| io_error(format!("create {}", absolute.display()), e))?;
    if run_as.owner().is_some() {
        for dir in missing {
            let mode = fs::metadata(&dir)
                .map_err(|e| io_error(format!("stat {}", dir.display()), e))?
                .mode();
            fs::set_permissions(&dir, fs::Permissions::from_mode((mode & 0o7777) | 0o001))
                .map_err(|e| io_error(format!("chmod o+x {}", dir.display()), e))?;
        }
    }
    fs::canonicalize(&absolute).map_err(|e| io_error(format!("resolve {}", absolute.display()), e))
}

/// pg_ctl builds `exec "postgres" -D "<pgdata>" … >> "<log>"` for `/bin/sh`.
fn check_path(path: &Path) -> Result<(), EmbeddedError> {
    if path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b'"' | b'$' | b'`' | b'\\' | b'\n' | b'\r'))
    {
        return Err(EmbeddedError::UnsupportedPath {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Creates `path` (mode 0700) or checks an existing one: a real directory owned by the server user
/// (or by root, when root will hand it over). Then sets owner and mode 0700.
fn ensure_private_dir(path: &Path, owner: Option<(Uid, Gid)>) -> Result<(), EmbeddedError> {
    let server_uid = owner.map_or_else(nix::unistd::geteuid, |(uid, _)| uid);
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| io_error(format!("create {}", path.display()), e))?,
        Err(e) => return Err(io_error(format!("stat {}", path.display()), e)),
        Ok(meta) => {
            let owner_ok =
                meta.uid() == server_uid.as_raw() || (owner.is_some() && meta.uid() == 0);
            if !meta.is_dir() || !owner_ok {
                let owner = User::from_uid(server_uid)
                    .ok()
                    .flatten()
                    .map_or_else(|| format!("uid {server_uid}"), |u| u.name);
                return Err(EmbeddedError::NotPrivate {
                    path: path.to_owned(),
                    owner,
                });
            }
        }
    }
    if let Some((uid, gid)) = owner {
        chown(path, uid, gid)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_error(format!("chmod 0700 {}", path.display()), e))
}

fn chown(path: &Path, uid: Uid, gid: Gid) -> Result<(), EmbeddedError> {
    nix::unistd::chown(path, Some(uid), Some(gid)).map_err(|e| {
        io_error(
            format!("chown {} to the `postgres` user", path.display()),
            io::Error::from(e),
        )
    })
}

fn remove_dir_if_exists(path: &Path) -> Result<(), EmbeddedError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_error(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// `<pg_root>/run` when its socket path fits and needs no quoting; else `/tmp/ironfhir-<hash>`.
fn socket_dir_for(pg_root: &Path) -> PathBuf {
    let preferred = pg_root.join("run");
    let bytes = preferred.as_os_str().as_bytes();
    let socket_file_len = bytes.len() + format!("/.s.PGSQL.{PORT}").len();
    let plain = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(b));
    if plain && socket_file_len <= MAX_SOCKET_PATH {
        preferred
    } else {
        // FNV-1a: stable across Rust releases, unlike DefaultHasher, so a restarted (possibly
        // upgraded) ironfhir finds the same directory.
        let hash = pg_root
            .as_os_str()
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
        PathBuf::from(format!("/tmp/ironfhir-{hash:016x}"))
    }
}

/// The directories that may hold `pg_ctl`, `initdb` and `postgres` together: PATH first, then the
/// usual package locations, highest version first.
fn candidate_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut versioned: Vec<((u32, u32), PathBuf)> = Vec::new();
    for (parent, prefix, suffix) in VERSIONED_LOCATIONS {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(parse_version)
            else {
                continue;
            };
            versioned.push((version, entry.path().join(suffix)));
        }
    }
    versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    dirs.extend(versioned.into_iter().map(|(_, dir)| dir));
    dirs.push(PathBuf::from(
        "/Applications/Postgres.app/Contents/Versions/latest/bin",
    ));
    dirs
}

/// (parent, name prefix before the version, path below the versioned directory).
const VERSIONED_LOCATIONS: &[(&str, &str, &str)] = &[
    ("/usr/lib/postgresql", "", "bin"),
    ("/usr", "pgsql-", "bin"),
    ("/opt/homebrew/opt", "postgresql@", "bin"),
    ("/usr/local/opt", "postgresql@", "bin"),
];

/// "15" → (15, 0), "9.6" → (9, 6).
fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// Picks the binaries: for an existing cluster the ones of its major version (`PG_VERSION`),
/// otherwise the first candidate.
async fn find_binaries(pgdata: &Path) -> Result<PathBuf, EmbeddedError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in candidate_bin_dirs() {
        if ["pg_ctl", "initdb", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
            && let Ok(dir) = fs::canonicalize(&dir)
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
        }
    }
    if dirs.is_empty() {
        let mut searched: Vec<String> = VERSIONED_LOCATIONS
            .iter()
            .map(|(parent, prefix, suffix)| format!("{parent}/{prefix}*/{suffix}"))
            .collect();
        searched.push("/Applications/Postgres.app".into());
        return Err(EmbeddedError::BinariesNotFound {
            searched: searched.join(", "),
        });
    }
    let Ok(wanted) = fs::read_to_string(pgdata.join("PG_VERSION")) else {
        let dir = dirs.swap_remove(0);
        tracing::info!(bin_dir = %dir.display(), version = ?major_version(&dir).await, "using PostgreSQL");
        return Ok(dir);
    };
    let wanted = wanted.trim();
    let mut found = Vec::new();
    for dir in dirs {
        match major_version(&dir).await {
            Some(major) if major == wanted => return Ok(dir),
            Some(major) => found.push(major),
            None => {}
        }
    }
    Err(EmbeddedError::VersionMismatch {
        pgdata: pgdata.to_owned(),
        data_version: wanted.to_owned(),
        found: if found.is_empty() {
            "unknown".into()
        } else {
            found.join(", ")
        },
    })
}

/// Major version as PG_VERSION writes it ("15", "9.6"), from `pg_ctl --version`.
async fn major_version(bin_dir: &Path) -> Option<String> {
    let output = tokio::process::Command::new(bin_dir.join("pg_ctl"))
        .arg("--version")
        .output()
        .await
        .ok()?;
    // "pg_ctl (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let version = text.split(") ").nth(1)?.split_whitespace().next()?;
    let mut parts = version.split('.');
    let first = parts.next()?;
    if first.parse::<u32>().ok()? >= 10 {
        Some(first.to_owned())
    } else {
        Some(format!("{first}.{}", parts.next()?))
    }
}

#[derive(Debug, Default)]
struct PidFile {
    pid: Option<i32>,
    port: Option<u16>,
    socket_dir: Option<PathBuf>,
}

/// `postmaster.pid`: line 1 PID, 4 port, 5 first socket directory.
fn read_pid_file(path: &Path) -> PidFile {
    let Ok(text) = fs::read_to_string(path) else {
        return PidFile::default();
    };
    let lines: Vec<&str> = text.lines().collect();
    let line = |i: usize| lines.get(i).map(|l| l.trim()).filter(|l| !l.is_empty());
    PidFile {
        pid: line(0).and_then(|l| l.parse().ok()),
        port: line(3).and_then(|l| l.parse().ok()),
        socket_dir: line(4).map(PathBuf::from),
    }
}

/// True only when `/proc` shows that `pid` is no live postmaster of `pgdata`: a zombie (a
/// postmaster killed with SIGKILL whose parent has not reaped it yet), or a reused PID (a
/// postmaster's working directory is its data directory). Either blocks the start otherwise.
fn pid_file_is_stale(pid: i32, pgdata: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !Path::new("/proc/self/stat").exists() {
        return false;
    }
    // "<pid> (<comm>) <state> …"; comm may contain spaces and parentheses.
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return !proc_dir.exists();
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    if matches!(state, Some('Z' | 'X')) {
        return true;
    }
    match fs::read_link(proc_dir.join("cwd")) {
        Ok(cwd) => cwd != pgdata,
        // Unreadable: another user's process. A postmaster of ours runs as us (or as `postgres`,
        // whose processes root can read), so only a process that is no postgres is surely not ours.
        Err(_) => {
            fs::read_to_string(proc_dir.join("comm")).is_ok_and(|comm| comm.trim() != "postgres")
        }
    }
}

fn rotate_log(log_file: &Path) -> Result<(), EmbeddedError> {
    if fs::metadata(log_file).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let old = log_file.with_extension("log.1");
        fs::rename(log_file, &old)
            .map_err(|e| io_error(format!("rotate {}", log_file.display()), e))?;
    }
    Ok(())
}

/// The last lines of the server log, for error messages (startup failures are explained there).
fn log_tail(log_file: &Path) -> String {
    let Ok(text) = fs::read(log_file) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nlast lines of {}:\n{tail}", log_file.display())
    }
}

fn command_error(label: &str, output: &Output, log_tail: String) -> EmbeddedError {
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stdout.trim());
    }
    EmbeddedError::Command {
        command: label.to_owned(),
        status: output.status.to_string(),
        output: text,
        log_tail,
    }
}

fn io_error(action: impl Into<String>, source: io::Error) -> EmbeddedError {
    EmbeddedError::Io {
        action: action.into(),
        source,
    }
}

/// Connection errors worth retrying while the server starts: no socket yet, refused, or
/// `57P03 cannot_connect_now` ("the database system is starting up").
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

/// Percent-encodes everything but unreserved characters and `/` (URL query value).
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Single-quotes an argument for `/bin/sh` (the `su -c` fallback).
fn shell_quote(arg: &OsStr) -> Vec<u8> {
    let mut out = vec![b'\''];
    for &b in arg.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// Removes the test directory even when an assertion fails.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            TempDir(
                std::env::temp_dir().join(format!("ironfhir-{tag}-{}-{nanos}", std::process::id())),
            )
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    async fn query_one(url: &str, sql: &'static str) -> String {
        let mut conn = PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let value: String = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        value
    }

    fn postmaster_pid(pg: &EmbeddedPostgres) -> Option<i32> {
        read_pid_file(&pg.pgdata.join("postmaster.pid")).pid
    }

    #[tokio::test]
    async fn starts_restarts_adopts_and_stops_a_private_cluster() {
        let dir = TempDir::new("embedded-test");

        // First start: initdb, start, CREATE DATABASE.
        let pg = EmbeddedPostgres::start(&dir.0).await.unwrap();
        let url = pg.database_url();
        assert!(
            url.starts_with("postgres://ironfhir@localhost:5432/ironfhir?host=%2F"),
            "{url}"
        );
        assert_eq!(query_one(&url, "SELECT 1::text").await, "1");
        assert_eq!(
            query_one(&url, "SELECT current_database()::text").await,
            "ironfhir"
        );
        assert_eq!(
            query_one(&url, "SHOW listen_addresses").await,
            "",
            "no TCP listener"
        );
        assert_eq!(query_one(&url, "SHOW fsync").await, "on");
        let pgdata = pg.pgdata.clone();
        let socket_mode = fs::metadata(&pg.socket_dir).unwrap().mode() & 0o777;
        assert_eq!(socket_mode, 0o700);
        pg.stop().await.unwrap();
        assert!(!pgdata.join("postmaster.pid").exists(), "stopped");

        // Second start reuses the initialised cluster.
        let pg = EmbeddedPostgres::start(&dir.0).await.unwrap();
        assert_eq!(query_one(&pg.database_url(), "SELECT 1::text").await, "1");

        // An ironfhir killed with SIGKILL leaves its postmaster running: the next start adopts it.
        let first_pid = postmaster_pid(&pg);
        std::mem::forget(pg);
        let pg = EmbeddedPostgres::start(&dir.0).await.unwrap();
        assert_eq!(postmaster_pid(&pg), first_pid, "adopted, not restarted");
        assert_eq!(query_one(&pg.database_url(), "SELECT 1::text").await, "1");
        pg.stop().await.unwrap();

        // A crashed postmaster's pid and socket lock files naming a PID now used by another
        // process must not block the start.
        let mut other = Command::new("sleep").arg("60").spawn().unwrap();
        let stale = format!(
            "{}\n{}\n1700000000\n5432\n/nonexistent\n\n0 0\nready   \n",
            other.id(),
            pgdata.display()
        );
        fs::write(pgdata.join("postmaster.pid"), &stale).unwrap();
        let socket_dir = socket_dir_for(pgdata.parent().unwrap());
        fs::write(socket_dir.join(".s.PGSQL.5432.lock"), &stale).unwrap();
        let pg = EmbeddedPostgres::start(&dir.0).await;
        let _ = other.kill();
        let _ = other.wait();
        let pg = pg.unwrap();
        assert_eq!(query_one(&pg.database_url(), "SELECT 1::text").await, "1");

        // Dropping without stop() stops the server too.
        drop(pg);
        assert!(!pgdata.join("postmaster.pid").exists(), "stopped by Drop");
    }

    #[test]
    fn long_or_unusual_paths_put_the_socket_under_tmp() {
        let short = Path::new("/var/lib/ironfhir/postgres");
        assert_eq!(socket_dir_for(short), short.join("run"));
        let long = PathBuf::from(format!("/srv/{}/postgres", "x".repeat(90)));
        let fallback = socket_dir_for(&long);
        let under_tmp = |p: &Path| {
            p.to_str()
                .is_some_and(|s| s.starts_with("/tmp/ironfhir-") && s.len() == 30)
        };
        assert!(under_tmp(&fallback), "{}", fallback.display());
        assert_eq!(socket_dir_for(&long), fallback, "stable");
        assert!(under_tmp(&socket_dir_for(Path::new("/home/a b/postgres"))));
    }

    #[test]
    fn the_url_names_the_socket_directory_for_sqlx() {
        let pg = EmbeddedPostgres {
            bin_dir: PathBuf::new(),
            pgdata: PathBuf::new(),
            log_file: PathBuf::new(),
            socket_dir: PathBuf::from("/tmp/a b/run"),
            port: 5432,
            run_as: RunAs::Current,
            stopped: true,
        };
        let options = PgConnectOptions::from_str(&pg.database_url()).unwrap();
        assert_eq!(options.get_socket(), Some(&PathBuf::from("/tmp/a b/run")));
        assert_eq!(options.get_database(), Some("ironfhir"));
        assert_eq!(options.get_username(), "ironfhir");
    }
}
