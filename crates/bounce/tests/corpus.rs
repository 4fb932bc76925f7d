//! The bounce corpus (tests/bounces/corpus): every NAME.eml parsed and
//! compared with NAME.expected.json. All mismatches are reported at once.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/bounces/corpus")
}

/// Every `.eml` of the corpus, sorted.
pub fn messages() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the corpus directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    v.sort();
    v
}

fn check(eml: &Path) -> Vec<String> {
    let name = eml.file_stem().unwrap().to_string_lossy().to_string();
    let expected_path = eml.with_extension("expected.json");
    let expected: Value = match std::fs::read_to_string(&expected_path) {
        Ok(s) => serde_json::from_str(&s).expect("expected.json parses"),
        Err(e) => return vec![format!("{name}: no {}: {e}", expected_path.display())],
    };
    let raw = std::fs::read(eml).unwrap();
    let got = serde_json::to_value(edm_bounce::parse(&raw)).unwrap();
    let mut errors = Vec::new();
    let mut differ = |what: &str, want: &Value, have: &Value| {
        errors.push(format!("{name}: {what}: expected {want}, got {have}"));
    };
    if expected["verdict"] != got["verdict"] {
        differ("verdict", &expected["verdict"], &got["verdict"]);
    }
    let want_r = expected["recipients"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let have_r = got["recipients"].as_array().cloned().unwrap_or_default();
    if want_r.len() != have_r.len() {
        differ(
            "recipients",
            &Value::from(want_r.clone()),
            &Value::from(have_r.clone()),
        );
    } else {
        for (w, h) in want_r.iter().zip(&have_r) {
            let addr_eq = w["address"]
                .as_str()
                .zip(h["address"].as_str())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
            if !addr_eq {
                differ("address", &w["address"], &h["address"]);
            }
            for key in ["status", "hard"] {
                if w[key] != h[key] {
                    differ(&format!("{} {key}", w["address"]), &w[key], &h[key]);
                }
            }
            if let Some(part) = w["diagnostic_contains"].as_str() {
                let ok = h["diagnostic"].as_str().is_some_and(|d| d.contains(part));
                if !ok {
                    differ(
                        &format!("{} diagnostic", w["address"]),
                        &w["diagnostic_contains"],
                        &h["diagnostic"],
                    );
                }
            }
        }
    }
    for key in [
        "envelope_id",
        "original_message_id",
        "feedback_type",
        "delivered_to",
    ] {
        if let Some(w) = expected.get(key)
            && *w != got[key]
        {
            differ(key, w, &got[key]);
        }
    }
    errors
}

#[test]
fn every_message_gets_its_expected_verdict() {
    let all = messages();
    assert!(
        all.len() >= 30,
        "the corpus has {} messages, wants 30 or more",
        all.len()
    );
    let errors: Vec<String> = all.iter().flat_map(|p| check(p)).collect();
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn the_corpus_covers_every_verdict_and_both_line_endings() {
    let mut kinds = std::collections::BTreeSet::new();
    let (mut crlf, mut lf) = (0, 0);
    for p in messages() {
        let raw = std::fs::read(&p).unwrap();
        if raw.windows(2).any(|w| w == b"\r\n") {
            crlf += 1;
        } else {
            lf += 1;
        }
        let v = serde_json::to_value(edm_bounce::parse(&raw)).unwrap();
        kinds.insert(v["verdict"].as_str().unwrap().to_string());
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "auto_reply",
            "bounce",
            "complaint",
            "delivery_report",
            "not_bounce"
        ]
    );
    assert!(crlf >= 5 && lf >= 5, "crlf {crlf}, lf {lf}");
}
