//! Running the rules: which one applies to an attempt, with per-address counters.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::rules::{Effect, Rule, Stage};

/// The rules of one server and the counters behind `times=` and `percent=`.
///
/// Shared by every session; the lock is taken only at stages that have rules
/// and held for a few hash-map look-ups.
pub(crate) struct Script {
    rules: Vec<Rule>,
    /// Counters per (rule index, lower-cased address).
    counters: Mutex<HashMap<(usize, String), Counter>>,
}

#[derive(Default)]
struct Counter {
    /// How many times the rule applied to this address (`times=`).
    fired: u32,
    /// How many times `percent=` was drawn for this address.
    drawn: u64,
}

impl Script {
    pub(crate) fn new(rules: Vec<Rule>) -> Self {
        Script {
            rules,
            counters: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn has_stage(&self, stage: Stage) -> bool {
        self.rules.iter().any(|r| r.stage == stage)
    }

    /// The effect of the first rule that applies at `stage` to an attempt
    /// concerning `addresses` (the sender at MAIL, the recipient at RCPT,
    /// the accepted recipients at DATA, none at the greeting).
    pub(crate) fn evaluate(&self, stage: Stage, addresses: &[&str]) -> Option<Effect> {
        if !self.has_stage(stage) {
            return None;
        }
        // A poisoned lock only means another session panicked mid-update of
        // plain counters; they are still usable.
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.stage != stage {
                continue;
            }
            let key = match &rule.prefix {
                Some(prefix) => {
                    match addresses.iter().find(|a| local_part_starts_with(a, prefix)) {
                        Some(address) => address.to_ascii_lowercase(),
                        None => continue,
                    }
                }
                None => addresses
                    .first()
                    .map(|a| a.to_ascii_lowercase())
                    .unwrap_or_default(),
            };
            let key_hash = fnv1a(&key);
            let counter = counters.entry((index, key)).or_default();
            if rule.times.is_some_and(|times| counter.fired >= times) {
                continue;
            }
            if let Some(bp) = rule.percent_bp {
                let attempt = counter.drawn;
                counter.drawn += 1;
                if !percent_hit(rule.seed, key_hash, attempt, bp) {
                    continue;
                }
            }
            counter.fired += 1;
            return Some(rule.effect.clone());
        }
        None
    }
}

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between releases).
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether the local part of `address` starts with `prefix` (lower-case),
/// ignoring ASCII case.
fn local_part_starts_with(address: &str, prefix: &str) -> bool {
    let local = address.rsplit_once('@').map_or(address, |(local, _)| local);
    local
        .as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The deterministic draw behind `percent=`: a hash of the seed, the address
/// and the attempt number, compared with the share in basis points. The same
/// script sends the same addresses down the same paths on every run, whatever
/// the interleaving of connections.
fn percent_hit(seed: u64, key_hash: u64, attempt: u64, bp: u32) -> bool {
    // SplitMix64 finaliser to spread the bits.
    let mut z = seed ^ key_hash ^ attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % 10_000 < u64::from(bp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(specs: &[&str]) -> Script {
        Script::new(specs.iter().map(|s| Rule::parse(s).unwrap()).collect())
    }

    fn code(effect: Option<Effect>) -> Option<String> {
        effect.map(|e| match e {
            Effect::Reply(r) | Effect::StallThenReply(_, r) => r.code().to_string(),
            Effect::Disconnect => "disconnect".into(),
            Effect::Stall(_) => "stall".into(),
        })
    }

    #[test]
    fn times_counts_per_address_then_falls_through() {
        let s = script(&[
            "stage=rcpt,match=retry,times=1,reply=451 4.3.0 later",
            "stage=rcpt,match=re,reply=550 5.1.1 second rule",
        ]);
        let a = s.evaluate(Stage::Rcpt, &["Retry.A@x.test"]);
        let a2 = s.evaluate(Stage::Rcpt, &["retry.a@x.test"]);
        let b = s.evaluate(Stage::Rcpt, &["retry.b@x.test"]);
        assert_eq!(code(a).as_deref(), Some("451"));
        assert_eq!(code(a2).as_deref(), Some("550"), "first rule spent for a");
        assert_eq!(code(b).as_deref(), Some("451"), "b has its own counter");
        assert_eq!(s.evaluate(Stage::Rcpt, &["other@x.test"]), None);
        assert_eq!(s.evaluate(Stage::Data, &["retry.c@x.test"]), None);
    }

    #[test]
    fn match_looks_at_the_local_part_only() {
        let s = script(&["stage=rcpt,match=bounce,reply=550 5.1.1 no"]);
        assert!(s.evaluate(Stage::Rcpt, &["bounce1@x.test"]).is_some());
        assert!(s.evaluate(Stage::Rcpt, &["user@bounce.test"]).is_none());
    }

    #[test]
    fn data_stage_matches_any_recipient() {
        let s = script(&["stage=data,match=throttle,times=1,reply=454 4.7.0 slow"]);
        let rcpts = ["a@x.test", "throttle@x.test"];
        assert!(s.evaluate(Stage::Data, &rcpts).is_some());
        assert!(s.evaluate(Stage::Data, &rcpts).is_none());
    }

    #[test]
    fn percent_is_reproducible_and_close_to_the_share() {
        let spec = ["stage=rcpt,percent=20,reply=451 4.3.0 Busy"];
        let run = |s: Script| -> Vec<bool> {
            (0..1000)
                .map(|i| {
                    s.evaluate(Stage::Rcpt, &[&format!("u{i}@x.test")])
                        .is_some()
                })
                .collect()
        };
        let first = run(script(&spec));
        assert_eq!(first, run(script(&spec)));
        let hits = first.iter().filter(|&&h| h).count();
        assert!((150..250).contains(&hits), "{hits} hits for 20% of 1000");
        let other_seed = run(script(&[
            "stage=rcpt,percent=20,seed=9,reply=451 4.3.0 Busy",
        ]));
        assert_ne!(first, other_seed);
    }

    #[test]
    fn percent_lets_a_retried_address_through() {
        let s = script(&["stage=rcpt,percent=50,reply=451 4.3.0 Busy"]);
        let through = (0..64).any(|_| s.evaluate(Stage::Rcpt, &["same@x.test"]).is_none());
        assert!(through);
    }
}
