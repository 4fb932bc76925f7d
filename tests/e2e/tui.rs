//! The dashboard in a real terminal: `edm send` runs in tmux, keys are
//! typed with send-keys and the screen is read with capture-pane.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux");
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub(crate) fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

impl Session {
    /// Runs `cmd` in a new detached 80x24 tmux session.
    pub(crate) fn start(name: String, cmd: &str) -> Session {
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "80",
            "-y",
            "24",
            cmd,
        ]);
        Session(name)
    }

    fn screen(&self) -> String {
        tmux(&["capture-pane", "-p", "-t", &self.0])
    }

    pub(crate) fn keys(&self, keys: &str) {
        tmux(&["send-keys", "-t", &self.0, keys]);
    }

    /// Waits until the screen shows `text`.
    pub(crate) fn wait_for(&self, text: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            if start.elapsed() > limit {
                panic!("the screen never showed {text:?}; last screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn dashboard_pauses_resumes_and_stops_cleanly_in_tmux() {
    if !have_tmux() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing in CI");
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let sink = Sink::start(&[], None);
    let n = 400;
    let c = TestCampaign::new(Spec {
        delivery: "rate = 25",
        ..Spec::new(addresses("t", n), sink.port())
    });
    let exit_file = c.tmp.path().join("exit-code");
    let name = format!("edm-e2e-{}", std::process::id());
    let cmd = format!(
        "{EDM} send {} ; echo $? > {}; sleep 2",
        c.path().display(),
        exit_file.display()
    );
    let s = Session::start(name, &cmd);
    s.wait_for("RUNNING", Duration::from_secs(15));

    s.keys("p");
    let screen = s.wait_for("PAUSED", Duration::from_secs(5));
    eprintln!("{screen}");
    std::thread::sleep(Duration::from_millis(500));
    let during = sink.handle().accepted();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        sink.handle().accepted(),
        during,
        "nothing is sent while paused"
    );

    s.keys("p");
    s.wait_for("RUNNING", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(600));
    assert!(sink.handle().accepted() > during, "sending resumed");

    s.keys("q");
    s.wait_for("Stop the campaign?", Duration::from_secs(5));
    s.keys("y");
    let start = Instant::now();
    while !exit_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "edm did not exit after q, y"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = std::fs::read_to_string(&exit_file).unwrap();
    assert_eq!(code.trim(), "130", "a confirmed stop ends like Ctrl-C");

    // Nothing lost, nothing in flight, the DB agrees with the server.
    let st = c.status();
    assert_eq!(st["sending"], 0);
    assert_eq!(st["in_doubt"], 0);
    let sent = st["sent"].as_u64().unwrap();
    assert_eq!(sent, sink.handle().accepted());
    assert_eq!(sent + st["pending"].as_u64().unwrap(), n as u64);
    assert!(sent < n as u64, "stopped before the end");
}

#[test]
fn watch_shows_a_run_from_another_terminal_read_only() {
    if !have_tmux() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing in CI");
        return;
    }
    let sink = Sink::start(&[], None);
    let n = 300;
    let c = TestCampaign::new(Spec {
        delivery: "rate = 40",
        ..Spec::new(addresses("w", n), sink.port())
    });
    let mut sender = c.spawn_send(&[]);
    // Wait until the run has a state to watch.
    let start = Instant::now();
    while !c.path().join(".edm/state.db").exists() || sink.handle().accepted() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the send never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let name = format!("edm-watch-{}", std::process::id());
    let cmd = format!("{EDM} watch {}; sleep 2", c.path().display());
    let s = Session::start(name, &cmd);
    let screen = s.wait_for("read-only", Duration::from_secs(10));
    assert!(
        screen.contains("e2e"),
        "the campaign name is shown:\n{screen}"
    );
    // Controls are off: p does not pause the run.
    s.keys("p");
    let before = sink.handle().accepted();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        sink.handle().accepted() > before,
        "watch must not pause the run"
    );
    // The counters follow the run.
    let seen = s.wait_for("sent", Duration::from_secs(5));
    assert!(!seen.contains("PAUSED"));
    s.keys("q");
    signal(&sender, "INT");
    wait_timeout(&mut sender, Duration::from_secs(20));
}

/// Issue 9 point 6: SIGHUP and SIGTERM stop a run shown in the dashboard.
/// The first leaves by itself once the run is done (nobody is there to press
/// a key); a second one quits at once. Either way the terminal is restored
/// (`stty` sees canonical mode again) and the log is private (0600).
#[test]
fn signals_stop_the_dashboard_and_restore_the_terminal() {
    if !have_tmux() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing in CI");
        return;
    }
    // Every first DATA to "stall*" hangs: a graceful stop waits for it.
    let sink = Sink::start(
        &["stage=data,match=stall,times=1,action=stall,secs=30"],
        None,
    );
    for (case, prefix, signals) in [
        ("one", "t", &["HUP"][..]),
        ("two", "stall", &["TERM", "TERM"][..]),
    ] {
        let c = TestCampaign::new(Spec {
            delivery: "rate = 25",
            ..Spec::new(addresses(prefix, 300), sink.port())
        });
        let exit_file = c.tmp.path().join("exit-code");
        let stty_file = c.tmp.path().join("stty");
        let cmd = format!(
            "{EDM} send {} ; echo $? > {}; stty -a > {}; sleep 2",
            c.path().display(),
            exit_file.display(),
            stty_file.display()
        );
        let s = Session::start(format!("edm-sig-{case}-{}", std::process::id()), &cmd);
        s.wait_for("RUNNING", Duration::from_secs(15));
        let lock = c.path().join(".edm/state.db.lock");
        let pid = std::fs::read_to_string(&lock).unwrap().trim().to_string();
        for sig in signals {
            std::thread::sleep(Duration::from_millis(300));
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(&pid)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let start = Instant::now();
        while !stty_file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{case}: edm did not exit after SIG{signals:?}:\n{}",
                s.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
        let code = std::fs::read_to_string(&exit_file).unwrap();
        assert_eq!(code.trim(), "130", "{case}");
        let stty = std::fs::read_to_string(&stty_file).unwrap();
        assert!(
            stty.split_whitespace().any(|w| w == "icanon") && stty.contains(" echo "),
            "{case}: the terminal is still raw: {stty}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let log = c.path().join(".edm/state.log");
            let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", log.display());
        }
        let st = c.status();
        if case == "one" {
            assert_eq!(
                (st["sending"].as_u64(), st["in_doubt"].as_u64()),
                (Some(0), Some(0)),
                "{st}"
            );
        }
    }
}
