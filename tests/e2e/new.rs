//! `edm new DIR --provider P` writes a skeleton that passes `edm check`
//! (issue 12 point 6), and never writes into a directory in use.

use std::process::Command;

use crate::harness::*;

fn edm(args: &[&str]) -> std::process::Output {
    let out = Command::new(EDM)
        .args(args)
        .env("EDM_LOG", "warn")
        .output()
        .expect("edm");
    eprintln!(
        "--- edm {args:?} -> {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn every_provider_skeleton_passes_edm_check() {
    let tmp = tempfile::tempdir().unwrap();
    for provider in ["smtp", "ses", "resend", "tencent", "gmail"] {
        let dir = tmp.path().join(provider);
        let d = dir.to_str().unwrap();
        let out = edm(&["new", d, "--provider", provider]);
        assert_eq!(code(&out), 0, "{provider}");
        let toml = std::fs::read_to_string(dir.join("campaign.toml")).unwrap();
        assert!(toml.contains("list_unsubscribe"), "{toml}");
        let html = std::fs::read_to_string(dir.join("templates/body.html.hbs")).unwrap();
        assert!(html.contains("unsubscribe"), "{html}");
        let out = Command::new(EDM)
            .args(["check", d])
            .env("EDM_HOME", tmp.path().join("home"))
            .env("EDM_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            code(&out),
            0,
            "{provider}: edm check\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("2 to send"), "{provider}: {stdout}");
    }
    // Provider specifics.
    let read = |p: &str| std::fs::read_to_string(tmp.path().join(p).join("campaign.toml")).unwrap();
    assert!(read("resend").contains("kind = \"resend\"") && read("resend").contains("rate = 2"));
    assert!(read("ses").contains("kind = \"ses\""));
    assert!(read("tencent").contains("provider = \"tencent\""));
    assert!(read("gmail").contains("daily_quota = 500"));
}

#[test]
fn a_non_empty_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
    let out = edm(&["new", tmp.path().to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert!(!tmp.path().join("campaign.toml").exists());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
        "mine"
    );
}
