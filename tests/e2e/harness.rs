//! The test harness: each test gets a temp dir with a campaign, a sink on
//! 127.0.0.1:0 (in this process, on its own runtime) and the `edm` binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edm_sink::{Rule, SinkConfig, SinkHandle, Storage};

pub const EDM: &str = env!("CARGO_BIN_EXE_edm");

/// A campaign in a temp dir.
pub struct TestCampaign {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    /// `EDM_HOME` for every `edm` run (the shared suppression list lives
    /// there): in the temp dir, never the user's own. Tests that share
    /// one between campaigns set it.
    pub home: PathBuf,
}

/// Options for [`TestCampaign::new`].
pub struct Spec<'a> {
    pub emails: Vec<String>,
    pub port: u16,
    /// Extra lines appended to `[delivery]`.
    pub delivery: &'a str,
    /// Extra lines appended to `[smtp]`.
    pub smtp: &'a str,
    /// Extra sections appended at the end.
    pub extra: &'a str,
}

impl<'a> Spec<'a> {
    pub fn new(emails: Vec<String>, port: u16) -> Spec<'a> {
        Spec {
            emails,
            port,
            delivery: "",
            smtp: "",
            extra: "",
        }
    }
}

/// `n` distinct addresses `user{i}@{domain}`.
pub fn addresses(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@example.com")).collect()
}

impl TestCampaign {
    pub fn new(spec: Spec<'_>) -> TestCampaign {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("campaign");
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        let mut csv = String::from("id,email,first_name\r\n");
        for (i, e) in spec.emails.iter().enumerate() {
            csv.push_str(&format!("{i},{e},Name{i}\r\n"));
        }
        std::fs::write(dir.join("recipients.csv"), csv).unwrap();
        std::fs::write(
            dir.join("templates/body.txt.hbs"),
            "Hello {{first_name}},\n\nThis is message {{id}} for {{email}}.\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("templates/body.html.hbs"),
            "<p>Hello {{first_name}}</p><p><a href=\"https://acme.example/u/{{id}}\">Unsubscribe</a></p>\n",
        )
        .unwrap();
        let toml = format!(
            r#"[campaign]
name = "e2e"
from = "Acme Test <news@acme.example>"
subject = "Hello {{{{first_name}}}}"
html = "templates/body.html.hbs"
text = "templates/body.txt.hbs"
recipients = "recipients.csv"
list_unsubscribe = "https://acme.example/u/{{{{id}}}}"

[smtp]
host = "127.0.0.1"
port = {port}
{connect_timeout}
{command_timeout}
data_timeout = "10s"
{smtp}

[delivery]
concurrency = 4
max_attempts = 4
retry = ["200ms", "400ms", "800ms"]
max_outage = "3s"
{delivery}
{extra}
"#,
            port = spec.port,
            smtp = spec.smtp,
            connect_timeout = if spec.smtp.contains("connect_timeout") {
                ""
            } else {
                "connect_timeout = \"2s\""
            },
            command_timeout = if spec.smtp.contains("command_timeout") {
                ""
            } else {
                "command_timeout = \"5s\""
            },
            delivery = spec.delivery,
            extra = spec.extra,
        );
        std::fs::write(dir.join("campaign.toml"), toml).unwrap();
        let home = tmp.path().join("edm-home");
        TestCampaign { tmp, dir, home }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Runs `edm ARGS DIR ...` to completion.
    pub fn edm(&self, sub: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(EDM);
        cmd.arg(sub)
            .arg(&self.dir)
            .args(args)
            .env("EDM_HOME", &self.home)
            .env("EDM_LOG", "warn");
        let out = cmd.output().expect("running edm");
        eprintln!(
            "--- edm {sub} {args:?} -> {:?}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `edm send --no-tui ARGS`.
    pub fn send(&self, args: &[&str]) -> Output {
        let mut a = vec!["--no-tui"];
        a.extend_from_slice(args);
        self.edm("send", &a)
    }

    /// Starts `edm send --no-tui` in the background.
    pub fn spawn_send(&self, args: &[&str]) -> Child {
        Command::new(EDM)
            .arg("send")
            .arg(&self.dir)
            .arg("--no-tui")
            .args(args)
            .env("EDM_HOME", &self.home)
            .env("EDM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning edm")
    }

    /// `edm status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.edm("status", &["--json"]);
        assert!(out.status.success(), "status failed");
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// `edm report --all --format json`: one object per recipient, by email.
    pub fn rows(&self) -> BTreeMap<String, serde_json::Value> {
        let out = self.edm("report", &["--all", "--format", "json"]);
        assert!(out.status.success(), "report failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("report line"))
            .map(|v| (v["email"].as_str().unwrap_or_default().to_string(), v))
            .collect()
    }
}

/// A sink running in this process on its own runtime.
pub struct Sink {
    pub rt: tokio::runtime::Runtime,
    pub handle: Option<SinkHandle>,
}

impl Sink {
    pub fn start(rules: &[&str], maildir: Option<PathBuf>) -> Sink {
        Self::start_with(rules, maildir, |_| {})
    }

    pub fn start_with(
        rules: &[&str],
        maildir: Option<PathBuf>,
        tweak: impl FnOnce(&mut SinkConfig),
    ) -> Sink {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = SinkConfig {
            storage: match &maildir {
                Some(d) => Storage::Maildir(d.clone()),
                None => Storage::Memory,
            },
            rules: rules
                .iter()
                .map(|r| Rule::parse(r).expect("rule"))
                .collect(),
            ..Default::default()
        };
        tweak(&mut cfg);
        let handle = rt.block_on(edm_sink::start(cfg)).expect("sink");
        Sink {
            rt,
            handle: Some(handle),
        }
    }

    pub fn port(&self) -> u16 {
        self.handle.as_ref().unwrap().local_addr().port()
    }

    pub fn handle(&self) -> &SinkHandle {
        self.handle.as_ref().unwrap()
    }

    /// Accepted messages per recipient address (from the sink's own log).
    pub fn deliveries(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.handle().received() {
            for to in r.rcpt_to {
                *m.entry(to.to_ascii_lowercase()).or_insert(0) += 1;
            }
        }
        m
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

/// Counts Maildir deliveries per recipient from `Delivered-To:` lines.
pub fn maildir_deliveries(maildir: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return m;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines().take(5) {
            if let Some(rest) = line.strip_prefix("Delivered-To:") {
                let addr = rest.trim().trim_matches(['<', '>']).to_ascii_lowercase();
                *m.entry(addr).or_insert(0) += 1;
            }
        }
    }
    m
}

/// A port nothing listens on (bound then released).
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits for a child with a deadline; kills it on timeout and fails.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("edm did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to a process.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} failed");
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

impl TestCampaign {
    /// [`TestCampaign::edm`] with extra environment variables (credentials
    /// for an API relay: never on the command line).
    pub fn edm_env(&self, sub: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(EDM);
        cmd.arg(sub)
            .arg(&self.dir)
            .args(args)
            .env("EDM_HOME", &self.home)
            .env("EDM_LOG", "warn")
            .envs(env.iter().copied());
        let out = cmd.output().expect("running edm");
        eprintln!(
            "--- edm {sub} {args:?} -> {:?}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Replaces the `[smtp]` table of the campaign file with `relay`.
    pub fn replace_smtp(&self, relay: &str) {
        let file = self.dir.join("campaign.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        let start = text.find("[smtp]").expect("[smtp]");
        let end = text[start..].find("[delivery]").expect("[delivery]") + start;
        let text = format!("{}{relay}\n\n{}", &text[..start], &text[end..]);
        std::fs::write(file, text).unwrap();
    }
}
