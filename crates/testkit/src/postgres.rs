//! A real PostgreSQL for tests: the cluster `scripts/test` started (named by
//! `AGENTCOM_TEST_PG_ADMIN_URL`), else a private one in a temp dir, stopped when the last handle
//! in the process drops. Each test takes fresh databases from it, so tests never share data.
//! [`Postgres::start_tls`] is always a private cluster that also speaks TLS.
//!
//! The server refuses to run as root: as root (CI), every server command runs as the `postgres`
//! user through `runuser`, in a temp dir that user owns.

use crate::eventually_blocking;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};

/// The admin URL of a running cluster to use instead of starting one (set by `scripts/test`).
pub const ADMIN_URL_ENV: &str = "AGENTCOM_TEST_PG_ADMIN_URL";

/// The superuser the private cluster is created with, whoever runs it.
const SUPERUSER: &str = "postgres";

/// How many ports are tried when another process takes the free one first.
const PORT_ATTEMPTS: usize = 10;

/// Settings of the private cluster: loopback only, no durability (tests never crash the server
/// itself), room for the connections of several hubs at once.
const SERVER_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
log_min_messages = warning
";

/// Settings of a private cluster for benchmarks: PostgreSQL's durable defaults (fsync,
/// synchronous commit, full page writes), so its figures include what durability costs.
const DURABLE_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
max_connections = 200
log_min_messages = warning
";

/// One cluster per test process, shared by every [`Postgres`] handle alive at the same time.
static SHARED: Mutex<Weak<Server>> = Mutex::new(Weak::new());
/// The same for the clusters with TLS on.
static SHARED_TLS: Mutex<Weak<Server>> = Mutex::new(Weak::new());

/// A handle on the test cluster. The databases it created are dropped with it.
pub struct Postgres {
    server: Arc<Server>,
    created: Mutex<Vec<String>>,
}

impl Postgres {
    /// The cluster named by [`ADMIN_URL_ENV`], else this process's private one (started on the
    /// first call). Fails, saying what to install, when PostgreSQL is not there.
    pub fn start() -> Result<Postgres> {
        Postgres::shared(&SHARED, || Server::start(Tls::Off))
    }

    /// This process's private cluster with `ssl = on`, its certificate (for `localhost` and
    /// `127.0.0.1`, see [`Postgres::ca_file`]) signed by a throwaway CA ([`crate::tls`]). It still
    /// takes plaintext connections too, as a default install does: the client's `sslmode`
    /// decides. Roles other than `postgres` authenticate with SCRAM (`scram-sha-256`). Never the
    /// cluster `scripts/test` started, whose server has no certificate.
    pub fn start_tls() -> Result<Postgres> {
        Postgres::shared(&SHARED_TLS, || Server::start(Tls::On))
    }

    fn shared(slot: &Mutex<Weak<Server>>, start: impl FnOnce() -> Result<Server> + Send) -> Result<Postgres> {
        let mut shared = slot.lock().unwrap_or_else(|e| e.into_inner());
        let server = match shared.upgrade() {
            Some(s) => s,
            None => {
                let s = Arc::new(off_runtime(start)?);
                *shared = Arc::downgrade(&s);
                s
            }
        };
        Ok(Postgres { server, created: Mutex::new(Vec::new()) })
    }

    /// A private cluster of its own (never shared, never the one `scripts/test` started) with
    /// PostgreSQL's durable defaults, for benchmarks. It stops when this handle drops.
    pub fn start_durable() -> Result<Postgres> {
        let server = off_runtime(|| {
            let cluster = Cluster::init(DURABLE_SETTINGS, Tls::Off)?;
            Server::private(cluster, Tls::Off)
        })?;
        Ok(Postgres { server: Arc::new(server), created: Mutex::new(Vec::new()) })
    }

    /// Another handle on the same cluster, with databases of its own.
    pub fn share(&self) -> Postgres {
        Postgres { server: self.server.clone(), created: Mutex::new(Vec::new()) }
    }

    /// The PEM certificate of the CA that signed the server's certificate; `None` without TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.server.ca_file.as_deref()
    }

    /// A `postgres://` URL of the superuser's maintenance database.
    pub fn admin_url(&self) -> &str {
        &self.server.admin_url
    }

    /// Creates an empty database with a random name and returns its `postgres://` URL.
    ///
    /// Its collation follows language rules (ICU `en-US`), as most installations' does, rather
    /// than byte order: a query whose results depend on the collation shows up in tests.
    pub fn database(&self) -> Result<String> {
        off_runtime(|| self.create_database())
    }

    fn create_database(&self) -> Result<String> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| anyhow!("random database name: {e}"))?;
        let name = format!("agentcom_test_{}", hex(&random));
        let mut admin = self.server.admin()?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' \
                 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            ))
            .with_context(|| format!("create database {name}"))?;
        self.created.lock().unwrap_or_else(|e| e.into_inner()).push(name.clone());
        let mut url = reqwest::Url::parse(&self.server.admin_url).context("the admin URL")?;
        url.set_path(&format!("/{name}"));
        Ok(url.to_string())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        if names.is_empty() {
            return;
        }
        // A shared cluster outlives this test: give back what it took.
        off_runtime(|| {
            if let Ok(mut admin) = self.server.admin() {
                for name in names {
                    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            }
        })
    }
}

/// An `ACCESS EXCLUSIVE` lock on a table, held by a session of its own until dropped: whoever
/// reads the table waits meanwhile (a slow database, on demand).
pub struct TableLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TableLock {
    /// Locks `table` (a plain name) of the database at `url`; returns once the lock is held.
    pub fn take(url: &str, table: &str) -> Result<TableLock> {
        let (url, sql) = (url.to_string(), format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"));
        let (held_tx, held_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let locked = (|| -> Result<postgres::Client> {
                let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
                c.batch_execute(&format!("BEGIN; {sql}"))?;
                Ok(c)
            })();
            match locked {
                Ok(mut c) => {
                    let _ = held_tx.send(Ok(()));
                    let _ = release_rx.recv();
                    let _ = c.batch_execute("COMMIT");
                }
                Err(e) => {
                    let _ = held_tx.send(Err(e));
                }
            }
        });
        held_rx.recv().map_err(|_| anyhow!("the lock thread ended"))??;
        Ok(TableLock { release: Some(release), thread: Some(thread) })
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many sessions named `application` have waited at least `at_least` for a lock on `table`.
pub fn lock_waiters(url: &str, table: &str, application: &str, at_least: std::time::Duration) -> Result<i64> {
    let (url, table, application) = (url.to_string(), table.to_string(), application.to_string());
    off_runtime(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        let row = c.query_one(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND l.relation = $1::text::regclass AND a.application_name = $2
               AND now() - a.query_start >= $3::bigint * interval '1 millisecond'",
            &[&table, &application, &(at_least.as_millis() as i64)],
        )?;
        Ok(row.get(0))
    })
}

/// Runs `f` on a thread of its own: the blocking `postgres` client starts a runtime of its own,
/// which panics on a thread that already drives one (every `#[tokio::test]`).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Server {
    admin_url: String,
    ca_file: Option<PathBuf>,
    /// Our own cluster, held for its drop (which stops it); `None` for one started by someone else.
    _cluster: Option<Cluster>,
}

/// Whether a cluster speaks TLS.
#[derive(Clone, Copy, PartialEq)]
enum Tls {
    Off,
    On,
}

impl Server {
    fn start(tls: Tls) -> Result<Server> {
        if let Some(url) = std::env::var(ADMIN_URL_ENV).ok().filter(|u| !u.trim().is_empty() && tls == Tls::Off) {
            let server = Server { admin_url: url, ca_file: None, _cluster: None };
            server.admin().with_context(|| format!("the cluster named by {ADMIN_URL_ENV} does not answer"))?;
            return Ok(server);
        }
        Server::private(Cluster::init(SERVER_SETTINGS, tls)?, tls)
    }

    /// Starts `cluster` and waits until it accepts connections.
    fn private(cluster: Cluster, tls: Tls) -> Result<Server> {
        let admin_url = cluster.start()?;
        let ca_file = (tls == Tls::On).then(|| cluster.certs().join("ca.pem"));
        let server = Server { admin_url, ca_file, _cluster: Some(cluster) };
        eventually_blocking("the test cluster to accept connections", || {
            server.admin().map(drop).map_err(|e| format!("{e:#}"))
        })?;
        Ok(server)
    }

    fn admin(&self) -> Result<postgres::Client> {
        postgres::Client::connect(&self.admin_url, postgres::NoTls)
            .with_context(|| format!("connect to {}", self.admin_url))
    }
}

/// A cluster in a temp dir: `data/`, its log and its Unix socket.
struct Cluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// `postgres` when we are root (the server refuses to run as root).
    run_as: Option<&'static str>,
}

impl Cluster {
    fn init(settings: &str, tls: Tls) -> Result<Cluster> {
        let bindir = bindir()?;
        let dir = tempfile::Builder::new().prefix("agentcom-pg-").tempdir().context("temp dir for PostgreSQL")?;
        let run_as = if effective_uid()? == 0 {
            let (uid, gid) = user_ids(SUPERUSER)?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("give {} to the {SUPERUSER} user", dir.path().display()))?;
            Some(SUPERUSER)
        } else {
            None
        };
        let cluster = Cluster { dir, bindir, run_as };
        let data = cluster.data();
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&data).args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        check(&mut initdb, "initdb")?;
        let conf = data.join("postgresql.conf");
        let socket_dir = format!("\nunix_socket_directories = '{}'\n", cluster.dir.path().display());
        let mut text = std::fs::read_to_string(&conf).with_context(|| format!("read {}", conf.display()))?;
        text.push_str(settings);
        text.push_str(&socket_dir);
        if tls == Tls::On {
            text.push_str(&cluster.certificate()?);
            // Roles other than the superuser log in with a password, as on a real server:
            // SCRAM, bound to the TLS channel when the client asks.
            let hba = data.join("pg_hba.conf");
            let rules = std::fs::read_to_string(&hba).with_context(|| format!("read {}", hba.display()))?;
            let first =
                format!("host all {SUPERUSER} 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n{rules}");
            std::fs::write(&hba, first).with_context(|| format!("write {}", hba.display()))?;
        }
        // Written in place, so the file keeps its owner.
        std::fs::write(&conf, text).with_context(|| format!("write {}", conf.display()))?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Writes the CA and the server's certificate and key into `certs/`, the key as the server
    /// accepts it (its user's, mode 0600); returns the settings that turn TLS on with them.
    fn certificate(&self) -> Result<String> {
        use std::os::unix::fs::PermissionsExt;
        let files = crate::tls::tls_files(&self.certs())?;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", files.key.display()))?;
        if let Some(user) = self.run_as {
            let (uid, gid) = user_ids(user)?;
            for path in [self.certs(), files.cert.clone(), files.key.clone()] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .with_context(|| format!("give {} to the {user} user", path.display()))?;
            }
        }
        Ok(format!("ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n", files.cert.display(), files.key.display()))
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A server program, run as [`Cluster::run_as`], in the temp dir (the `postgres` user may
    /// not enter the caller's directory).
    fn command(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.current_dir(self.dir.path()).stdin(Stdio::null()).env_remove("PGDATA");
        cmd
    }

    /// Starts the server on a free port (another one if that port is taken by the time the
    /// server binds it); returns the admin URL.
    fn start(&self) -> Result<String> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut start = self.command("pg_ctl");
            start
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.log())
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {port}"))
                .arg("start");
            let out = start.output().context("run pg_ctl start")?;
            if out.status.success() {
                return Ok(format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres"));
            }
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            if !(log.contains("could not bind") || log.contains("Address already in use")) {
                bail!("pg_ctl start failed: {}\n{}\nserver log:\n{log}", output_text(&out), self.data().display());
            }
            last = log;
        }
        bail!("PostgreSQL found no free port in {PORT_ATTEMPTS} tries; server log:\n{last}")
    }

    fn stop(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // pg_ctl finds the server through data/postmaster.pid: stopping one that never
        // started (initdb or every start failed) is a harmless no-op.
        self.stop();
    }
}

/// The directory of `initdb` and `pg_ctl`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps the server programs off `PATH`).
fn bindir() -> Result<PathBuf> {
    bindir_from("pg_config", Path::new("/usr/lib/postgresql"))
}

fn bindir_from(pg_config: &str, versions: &Path) -> Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(out) = Command::new(pg_config).arg("--bindir").stderr(Stdio::null()).output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(versions)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_server(dir))
        .collect();
    found.sort();
    found.pop().map(|(_, dir)| dir).ok_or_else(|| {
        anyhow!(
            "PostgreSQL is not installed (no initdb and pg_ctl from `pg_config --bindir` or in \
             {}/*/bin): install Debian's postgresql package (scripts/test does), \
             or set {ADMIN_URL_ENV} to the admin URL of a running cluster",
            versions.display()
        )
    })
}

/// Our effective user id: `/proc/self` belongs to it.
fn effective_uid() -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self").context("read /proc/self")?.uid())
}

/// The user and group ids of `user`, from `id`.
fn user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, user]).output().context("run id")?;
        if !out.status.success() {
            bail!(
                "running as root, and PostgreSQL refuses to run as root, but there is no {user} user \
                 to run it as (Debian's postgresql package creates it): {}",
                output_text(&out)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().context("the output of id")
    };
    Ok((id("-u")?, id("-g")?))
}

/// A port nobody listens on right now (bound on loopback and released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?.local_addr()?.port())
}

/// Runs a command that must succeed.
fn check(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", output_text(&out));
    }
    Ok(())
}

fn output_text(out: &Output) -> String {
    format!("{}; {}{}", out.status, String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(url: &str, sql: &str) -> i64 {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        c.query_one(sql, &[]).unwrap().get(0)
    }

    #[test]
    fn databases_are_fresh_and_sort_text_by_language_rules() {
        let pg = Postgres::start().unwrap();
        let (one, two) = (pg.database().unwrap(), pg.database().unwrap());
        assert_ne!(one, two);
        let mut c = postgres::Client::connect(&one, postgres::NoTls).unwrap();
        c.batch_execute("CREATE TABLE t (s TEXT); INSERT INTO t VALUES ('B'), ('a'), ('c')").unwrap();
        let sorted: Vec<String> =
            c.query("SELECT s FROM t ORDER BY s", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(sorted, ["a", "B", "c"]);
        let in_two = "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 't'";
        assert_eq!(count(&two, in_two), 0, "a second database shares nothing with the first");
        // A second handle in the same process shares the cluster.
        let again = Postgres::start().unwrap();
        assert_eq!(again.admin_url(), pg.admin_url());
        drop(again);
        let name = one.rsplit('/').next().unwrap().to_string();
        drop(pg);
        if std::env::var(ADMIN_URL_ENV).is_ok() {
            // The shared cluster stays up; the databases this handle made are gone.
            let admin = std::env::var(ADMIN_URL_ENV).unwrap();
            let sql = format!("SELECT COUNT(*) FROM pg_database WHERE datname = '{name}'");
            assert_eq!(count(&admin, &sql), 0);
        }
    }

    #[test]
    fn the_newest_installed_server_is_found_or_its_absence_explained() {
        let root = tempfile::tempdir().unwrap();
        let err = bindir_from("no-such-pg-config", root.path()).unwrap_err().to_string();
        assert!(err.starts_with("PostgreSQL is not installed") && err.contains("postgresql package"), "{err}");
        assert!(err.contains(ADMIN_URL_ENV), "{err}");
        for (version, programs) in
            [("9", &["initdb", "pg_ctl"][..]), ("13", &["initdb", "pg_ctl"]), ("16", &["initdb"])]
        {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for p in programs {
                std::fs::write(bin.join(p), "").unwrap();
            }
        }
        std::fs::create_dir_all(root.path().join("common/bin")).unwrap();
        // 16 lacks pg_ctl; 13 is newer than 9 as a number, not as text.
        assert_eq!(bindir_from("no-such-pg-config", root.path()).unwrap(), root.path().join("13/bin"));
    }

    #[test]
    fn a_tls_cluster_shows_a_certificate_its_ca_signed_for_localhost() {
        let pg = Postgres::start_tls().unwrap();
        let ca = pg.ca_file().expect("a TLS cluster has a CA").to_path_buf();
        assert!(Postgres::start().unwrap().admin_url() != pg.admin_url(), "never the plain cluster");
        let url = pg.database().unwrap().replace("127.0.0.1", "localhost");
        // Verified as `sslmode=verify-full` does: the CA, and the name `localhost`.
        let rustls = osutil::tls::client_config(Some(&ca)).unwrap();
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls::ClientConfig::clone(&rustls));
        let mut config: postgres::Config = url.parse().unwrap();
        config.ssl_mode(postgres::config::SslMode::Require);
        let mut c = config.connect(tls).unwrap();
        let row = c.query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap();
        let (ssl, version): (bool, String) = (row.get(0), row.get(1));
        assert!(ssl && version.starts_with("TLS"), "{version}");
        // Without the CA the same server is refused.
        let untrusting = osutil::tls::client_config(None).unwrap();
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls::ClientConfig::clone(&untrusting));
        let e = config.connect(tls).err().expect("an unknown CA is refused");
        assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
        // The key is the server user's alone, as PostgreSQL demands.
        use std::os::unix::fs::MetadataExt;
        let key = std::fs::metadata(ca.with_file_name("hub.key")).unwrap();
        assert_eq!(key.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_private_cluster_leaves_nothing_behind() {
        let cluster = Cluster::init(SERVER_SETTINGS, Tls::Off).unwrap();
        let url = cluster.start().unwrap();
        let server = Server { admin_url: url.clone(), ca_file: None, _cluster: Some(cluster) };
        eventually_blocking("the cluster to answer", || server.admin().map(drop).map_err(|e| format!("{e:#}")))
            .unwrap();
        let dir = server._cluster.as_ref().unwrap().dir.path().to_path_buf();
        let pid_file = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
        let pid: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        assert!(crate::alive(pid));
        drop(server);
        assert!(!dir.exists(), "{} is removed", dir.display());
        eventually_blocking("the server to exit", || if crate::alive(pid) { Err("alive".into()) } else { Ok(()) })
            .unwrap();
        assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
    }
}
