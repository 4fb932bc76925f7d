//! Dovecot as a real IMAP and POP3 server for the mailbox tests: started
//! from a throwaway configuration in a temp dir (no system service, logs to
//! a file), on free loopback ports, with a CA-signed certificate and one
//! Maildir user; stopped on drop.
//!
//! Missing Dovecot skips a test loudly, except under `CI`, which installs it
//! (`.ci/run`) and where a skip would hide a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "bounces";
pub const PASSWORD: &str = "s3cret-Pa55word";

pub struct Dovecot {
    child: Child,
    dir: tempfile::TempDir,
    pub imap: u16,
    pub imaps: u16,
    pub pop3: u16,
    pub pop3s: u16,
    /// The CA that signed the server's certificate (`ca_file`).
    pub ca: PathBuf,
    uid: u32,
    gid: u32,
}

const BIN: &str = "/usr/sbin/dovecot";

/// The server's certificate.
#[derive(Clone, Copy)]
pub enum Cert {
    /// Signed by a test CA (`ca`), as a real server's is.
    CaSigned,
    /// Self-signed, with or without the CA mark (`basicConstraints`).
    SelfSigned { marked_ca: bool },
}

/// A port nothing listens on (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `N` distinct ports nothing listens on: all bound at once, then released.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("a bound port").port())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// uid and gid of a user from /etc/passwd.
fn passwd_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

impl Dovecot {
    /// `None` (test skipped, said aloud) when Dovecot is not installed
    /// outside CI.
    pub fn start() -> Option<Dovecot> {
        Self::start_with("")
    }

    /// Same, with extra lines appended to the configuration.
    pub fn start_with(extra: &str) -> Option<Dovecot> {
        Self::start_full(extra, Cert::CaSigned)
    }

    /// Same, with this kind of certificate; `ca` is then the certificate
    /// to give as `ca_file` (for a self-signed one, the server's own).
    pub fn start_full(extra: &str, cert: Cert) -> Option<Dovecot> {
        if !Path::new(BIN).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "dovecot is missing in CI (.ci/run installs dovecot-imapd and dovecot-pop3d)"
            );
            eprintln!(
                "SKIPPED: Dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d); the mailbox test did not run"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("edm-dovecot-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().to_path_buf();
        // Dovecot's processes run as other users: they must reach the
        // config, the certificate and the home below this directory.
        set_mode(&d, 0o755);

        // As root (CI): the mail user may not be root (Dovecot refuses
        // UID 0), so the Maildir belongs to `mail`; the internal and login
        // users are the ones the package creates. As anyone else: that
        // user for everything (Dovecot then cannot switch users anyway).
        let me = run(Command::new("id").arg("-u"));
        let (internal, group, login, uid, gid) = if me == "0" {
            let (uid, gid) = passwd_ids("mail").expect("the mail user");
            let dovecot = "dovecot".to_string();
            (dovecot.clone(), dovecot, "dovenull".to_string(), uid, gid)
        } else {
            // The internal group owns Dovecot's own sockets (stats, dict):
            // one this user is in.
            let name = run(Command::new("id").arg("-un"));
            let group = run(Command::new("id").arg("-gn"));
            let gid = run(Command::new("id").arg("-g"));
            (
                name.clone(),
                group,
                name,
                me.parse().expect("uid"),
                gid.parse().expect("gid"),
            )
        };

        let ssl = |args: &[&str]| {
            run(Command::new("openssl").args(args).current_dir(&d));
        };
        let san = "subjectAltName=IP:127.0.0.1,DNS:localhost";
        match cert {
            Cert::SelfSigned { marked_ca } => {
                // `openssl req -x509` marks the certificate as a CA unless
                // told otherwise: what a user gets by default.
                let bc = if marked_ca {
                    "basicConstraints=critical,CA:TRUE"
                } else {
                    "basicConstraints=critical,CA:FALSE"
                };
                ssl(&[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "cert.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    san,
                    "-addext",
                    bc,
                ]);
                std::fs::copy(d.join("cert.pem"), d.join("ca.pem")).expect("ca.pem");
            }
            Cert::CaSigned => {
                // A CA and a server certificate it signs, as a real server has.
                ssl(&[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=edm test CA",
                ]);
                ssl(&[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "req.pem",
                    "-subj",
                    "/CN=localhost",
                ]);
                std::fs::write(
                    d.join("ext.cnf"),
                    "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
                )
                .expect("ext.cnf");
                ssl(&[
                    "x509",
                    "-req",
                    "-in",
                    "req.pem",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    "cert.pem",
                    "-days",
                    "2",
                    "-extfile",
                    "ext.cnf",
                ]);
            }
        }
        set_mode(&d.join("key.pem"), 0o644);

        let hash = run(Command::new("doveadm").args(["pw", "-s", "SHA512-CRYPT", "-p", PASSWORD]));
        let home = d.join("home");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(home.join("Maildir").join(sub)).expect("Maildir");
        }
        chown_tree(&home, uid, gid);
        std::fs::write(
            d.join("passwd"),
            format!("{USER}:{hash}:{uid}:{gid}::{}::\n", home.display()),
        )
        .expect("passwd");

        // Four distinct ports: each bound while the next is chosen (one
        // released before the next bind could be handed out twice, and
        // Dovecot then refuses its "duplicate listener").
        let [imap, imaps, pop3, pop3s] = free_ports::<4>();
        let p = d.display();
        let conf = format!(
            r#"base_dir = {p}/run
state_dir = {p}/state
log_path = {p}/dovecot.log
listen = 127.0.0.1
protocols = imap pop3
ssl = yes
ssl_cert = <{p}/cert.pem
ssl_key = <{p}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
# Dovecot waits 2 s before answering a failed login; tests need not.
auth_failure_delay = 0
mail_location = maildir:~/Maildir
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
first_valid_uid = 1
first_valid_gid = 1
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {p}/passwd
}}
userdb {{
  driver = passwd-file
  args = {p}/passwd
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # Dovecot also slows repeated failed logins from one address by up to
  # 15 s (anvil's auth penalty); a socket nobody may open turns it off.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{extra}
"#
        );
        std::fs::write(d.join("dovecot.conf"), conf).expect("dovecot.conf");
        // Errors before the log file is open (a bad config) go to stderr.
        let stderr = std::fs::File::create(d.join("stderr.log")).expect("stderr.log");
        let child = Command::new(BIN)
            .args(["-F", "-c"])
            .arg(d.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start dovecot");
        let mut dc = Dovecot {
            child,
            ca: d.join("ca.pem"),
            dir,
            imap,
            imaps,
            pop3,
            pop3s,
            uid,
            gid,
        };
        dc.wait_ready();
        Some(dc)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for port in [self.imap, self.imaps, self.pop3, self.pop3s] {
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("dovecot exited ({status}):\n{}", self.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "dovecot did not listen on {port}:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Dovecot's log, for failure messages.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        read("stderr.log") + &read("dovecot.log")
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("home").join("Maildir")
    }

    /// The Maildir directory of a folder (`None`: INBOX).
    pub fn folder_dir(&self, folder: Option<&str>) -> PathBuf {
        match folder {
            None => self.maildir(),
            Some(f) => self.maildir().join(format!(".{f}")),
        }
    }

    /// Drops a message into INBOX as a delivery agent would (tmp/, then a
    /// rename into new/), owned by the mail user.
    pub fn deliver(&self, name: &str, bytes: &[u8]) {
        let tmp = self.maildir().join("tmp").join(name);
        std::fs::write(&tmp, bytes).expect("write message");
        chown(&tmp, self.uid, self.gid);
        std::fs::rename(&tmp, self.maildir().join("new").join(name)).expect("deliver");
    }

    /// The messages of a folder (cur/ and new/): (file name, bytes).
    pub fn messages(&self, folder: Option<&str>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["cur", "new"] {
            let Ok(entries) = std::fs::read_dir(self.folder_dir(folder).join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let bytes = std::fs::read(e.path()).expect("read message");
                out.push((e.file_name().to_string_lossy().into_owned(), bytes));
            }
        }
        out.sort();
        out
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(p: &Path, uid: u32, gid: u32) {
    // Only root may give files away; as another user they are ours already.
    let _ = std::os::unix::fs::chown(p, Some(uid), Some(gid));
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    chown(p, uid, gid);
    if p.is_dir() {
        for e in std::fs::read_dir(p).expect("read_dir").flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM lets the master stop its children (login, auth, imap);
        // SIGKILL would leave them to notice on their own.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
