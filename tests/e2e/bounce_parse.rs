//! `edm bounces parse FILE... [--json]`: the parser's verdicts, one line per
//! file in argument order, unreadable files included (issue 13 point 3).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::*;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/bounces/corpus")
        .join(format!("{name}.eml"))
}

fn bounces_parse(args: &[&Path], json: bool) -> Output {
    let mut cmd = Command::new(EDM);
    cmd.arg("bounces")
        .arg("parse")
        .args(args)
        .env("EDM_LOG", "warn");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("running edm");
    eprintln!(
        "--- edm bounces parse -> {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn one_json_line_per_file_in_argument_order_unreadable_ones_included() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.eml");
    // A directory cannot be read as a file either.
    let dir = tmp.path().join("a-directory.eml");
    std::fs::create_dir(&dir).unwrap();
    // A copy under a name with a space, CRLF kept as is.
    let copy = tmp.path().join("gmail failure.eml");
    std::fs::copy(corpus("gmail-dsn-failure"), &copy).unwrap();

    let files: Vec<PathBuf> = vec![
        corpus("sisimai-lhost-postfix-13"),
        missing.clone(),
        corpus("sisimai-arf-21"),
        corpus("autoreply-out-of-office"),
        dir.clone(),
        corpus("postfix-delayed"),
        copy.clone(),
        corpus("delivery-report-delivered"),
        corpus("not-bounce-newsletter"),
    ];
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = bounces_parse(&args, true);
    // Done, but some files could not be read.
    assert_eq!(code(&out), 1);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), files.len(), "{stdout}");
    for (line, file) in lines.iter().zip(&files) {
        assert_eq!(line["file"], file.display().to_string());
    }
    let verdicts: Vec<&str> = lines
        .iter()
        .map(|l| l["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [
            "bounce",
            "not_bounce",
            "complaint",
            "auto_reply",
            "not_bounce",
            "bounce",
            "bounce",
            "delivery_report",
            "not_bounce"
        ]
    );
    // Only the unreadable ones carry an error, and it names the file.
    for (i, line) in lines.iter().enumerate() {
        let unreadable = i == 1 || i == 4;
        assert_eq!(line.get("error").is_some(), unreadable, "{line}");
        if unreadable {
            assert!(
                line["error"]
                    .as_str()
                    .unwrap()
                    .contains(&files[i].display().to_string())
            );
            assert_eq!(line["recipients"], Value::Array(vec![]));
        }
    }
    // Recipients in the message's order, with RFC 3463 statuses.
    let r = &lines[0]["recipients"];
    assert_eq!(r[0]["address"], "kijitora@example.jp");
    assert_eq!(r[0]["status"], "5.2.1");
    assert_eq!(r[0]["hard"], true);
    assert_eq!(r[1]["address"], "noraneko@example.jp");
    assert_eq!(r[1]["status"], "5.2.2");
    // A complaint's recipient has a null status and is not hard.
    assert_eq!(lines[2]["recipients"][0]["status"], Value::Null);
    assert_eq!(lines[2]["recipients"][0]["hard"], false);
    // A delay is a soft 4.x.x bounce.
    assert_eq!(lines[5]["recipients"][0]["status"], "4.4.1");
    assert_eq!(lines[5]["recipients"][0]["hard"], false);
    assert_eq!(
        lines[6]["recipients"][0]["address"],
        "missing.person@gmail.example"
    );
}

#[test]
fn readable_output_is_one_line_per_file_and_all_readable_exits_0() {
    let files = [
        corpus("sisimai-lhost-qmail-17"),
        corpus("autoreply-x-autoreply"),
    ];
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = bounces_parse(&args, false);
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains("bounce: userunknown@libsisimai.net 5.1.1 hard"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("mailboxfull@libsisimai.net 5.2.2 hard"),
        "{}",
        lines[0]
    );
    assert!(lines[1].ends_with("auto_reply"), "{}", lines[1]);
}

#[test]
fn parse_needs_at_least_one_file() {
    let out = bounces_parse(&[], true);
    assert_eq!(code(&out), 2);
}
