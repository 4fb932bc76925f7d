//! A throwaway PostgreSQL server for tests (feature `pg-fixture`, and the
//! store's own tests): `initdb` in a temporary directory, `pg_ctl start` on
//! a free loopback port with `fsync=off`, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root ("root execution of the PostgreSQL
//! server is not permitted"), and CI runs as root: then the directory is
//! given to the `postgres` user and every command runs through
//! `runuser -u postgres --`. As a normal user the commands run directly.
//! The binaries are found by glob (`/usr/lib/postgresql/*/bin`, highest
//! version), or in `EDM_PG_BIN`.
//!
//! A watchdog shell waits for the test process to end and then stops the
//! server and removes the directory, so a test binary killed (or a static
//! server never dropped) leaves no PostgreSQL running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A running throwaway server.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// Where the server binaries are: `EDM_PG_BIN`, else the highest
/// `/usr/lib/postgresql/<version>/bin` holding `initdb`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("EDM_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").is_file().then_some(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// True when this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgServer {
    /// Starts a server, or says why not. `Ok(None)`: PostgreSQL is not
    /// installed.
    pub fn start() -> Result<Option<PgServer>, String> {
        let Some(bin) = bin_dir() else {
            return Ok(None);
        };
        let as_postgres = is_root();
        let base =
            std::env::temp_dir().join(format!("edm-pg-{}-{}", std::process::id(), u64_rand()));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let server = PgServer {
            dir: base,
            bin,
            port: 0,
            as_postgres,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !ok.success() {
                return Err(format!("chown postgres {} failed", server.dir.display()));
            }
        }
        server.watchdog();
        let data = server.dir.join("data");
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        let mut server = server;
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port().map_err(|e| format!("free port: {e}"))?;
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off",
                server.dir.display()
            );
            let log = server.dir.join("log");
            match server.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-w".as_ref(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-o".as_ref(),
                    opts.as_ref(),
                    "start".as_ref(),
                ],
            ) {
                Ok(()) => {
                    server.port = port;
                    return Ok(Some(server));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A URL for the `postgres` database as the `postgres` user (trust auth).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Restarts the server as an operator does (`pg_ctl stop -m fast`:
    /// sessions are ended with `57P01 admin_shutdown`, a checkpoint is
    /// written) and starts it again on the same port and data directory.
    /// Not `-m immediate`: with this fixture's `synchronous_commit=off` a
    /// crash loses the last commits, which a real server (synchronous
    /// commit on) never does.
    pub fn restart(&self) -> Result<(), String> {
        self.stop();
        self.start_again()
    }

    /// Stops the server (`-m fast`, see [`PgServer::restart`]) until
    /// [`PgServer::start_again`].
    pub fn stop(&self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts a stopped server again on the same port and data directory.
    pub fn start_again(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-w".as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                opts.as_ref(),
                "start".as_ref(),
            ],
        )
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            Err(format!(
                "{tool} failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn stop_now(&self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A shell that outlives nothing: when this process is gone, it stops
    /// the server and removes the directory.
    fn watchdog(&self) {
        let stop = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             [ -d '{dir}/data' ] && {stop}'{bin}/pg_ctl' -D '{dir}/data' -m immediate stop \
               >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display(),
            bin = self.bin.display(),
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// The server's directory (data, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Turns TLS on (`ssl=on`, reloaded, no restart) with a certificate
    /// for `127.0.0.1` (its only name: an IP SAN) signed by a throwaway CA,
    /// made with the `openssl` CLI. Returns that CA's certificate and
    /// another CA's, which did not sign it.
    pub fn enable_tls(&self) -> Result<TlsFiles, String> {
        let d = self.dir.join("tls");
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let openssl = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&d)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("openssl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (subj, key, crt) = (
                format!("/CN=edm test {ca}"),
                format!("{ca}.key"),
                format!("{ca}.crt"),
            );
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subj];
            args.extend(p256);
            args.extend(["-keyout", &key, "-out", &crt]);
            openssl(&args)?;
        }
        std::fs::write(
            d.join("san.cnf"),
            "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
        )
        .map_err(|e| format!("san.cnf: {e}"))?;
        let mut args = vec!["req", "-subj", "/CN=127.0.0.1"];
        args.extend(p256);
        args.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&args)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
            "-out",
            "server.crt",
        ])?;
        // PostgreSQL wants its key private and its own.
        use std::os::unix::fs::PermissionsExt;
        let key = d.join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod server.key: {e}"))?;
        if self.as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&d)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !ok.success() {
                return Err(format!("chown postgres {} failed", d.display()));
            }
        }
        let mut admin = postgres::Client::connect(&self.url(), postgres::NoTls)
            .map_err(|e| format!("connect: {e}"))?;
        // One statement each: ALTER SYSTEM refuses a transaction block.
        for sql in [
            format!(
                "ALTER SYSTEM SET ssl_cert_file = '{}'",
                d.join("server.crt").display()
            ),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            "ALTER SYSTEM SET ssl = on".to_string(),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            admin
                .batch_execute(&sql)
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        // The reload is asynchronous: a new session says when it is done.
        for _ in 0..100 {
            let mut c = postgres::Client::connect(&self.url(), postgres::NoTls)
                .map_err(|e| format!("connect: {e}"))?;
            let on: String = c
                .query_one("SHOW ssl", &[])
                .map_err(|e| format!("SHOW ssl: {e}"))?
                .get(0);
            if on == "on" {
                return Ok(TlsFiles {
                    ca: d.join("ca.crt"),
                    other_ca: d.join("other-ca.crt"),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err("ssl = on did not take effect after the reload".into())
    }
}

/// The CA files of a server with TLS on ([`PgServer::enable_tls`]).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A CA that did not.
    pub other_ca: PathBuf,
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_now();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn u64_rand() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// One server for the whole test process (its watchdog stops it when the
/// process ends). `None` when PostgreSQL is not installed and `CI` is not
/// `true`: the caller skips, and this says so loudly on stderr. Under
/// `CI=true` a missing PostgreSQL (or one that does not start) fails.
pub fn shared() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    SERVER.get_or_init(start_or_skip).as_ref()
}

/// [`PgServer::start`], skipping loudly when PostgreSQL is missing outside
/// CI, failing under `CI=true`.
pub fn start_or_skip() -> Option<PgServer> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match PgServer::start() {
        Ok(Some(s)) => Some(s),
        Ok(None) if ci => panic!(
            "CI=true and PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             .ci/run installs Debian's postgresql"
        ),
        Ok(None) => {
            eprintln!(
                "SKIPPED: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); \
                 the PostgreSQL tests did not run"
            );
            None
        }
        Err(e) => panic!("PostgreSQL did not start: {e}"),
    }
}
