//! Scripted faults: what a [`Rule`] is and how one is written.

use std::fmt;
use std::time::Duration;

use crate::reply::Reply;

/// The point of an SMTP session a [`Rule`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Before the `220` greeting: whole-server faults.
    Greeting,
    /// At `MAIL FROM`; `match=` looks at the sender's local part.
    Mail,
    /// At each `RCPT TO`; `match=` looks at the recipient's local part.
    Rcpt,
    /// After the final `.` of `DATA`; `match=` looks at every accepted
    /// recipient of the transaction.
    Data,
}

impl Stage {
    fn parse(value: &str) -> Option<Stage> {
        match value.to_ascii_lowercase().as_str() {
            "greeting" => Some(Stage::Greeting),
            "mail" => Some(Stage::Mail),
            "rcpt" => Some(Stage::Rcpt),
            "data" => Some(Stage::Data),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stage::Greeting => "greeting",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule does once it applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Send this reply instead of the normal one.
    Reply(Reply),
    /// Close the socket without replying.
    Disconnect,
    /// Wait, then carry on as if no rule applied.
    Stall(Duration),
    /// Wait, then send this reply.
    StallThenReply(Duration, Reply),
}

/// One scripted fault: at a [`Stage`], for matching addresses, do something
/// other than accept.
///
/// Rules are tried in order and the first one that applies wins. Build them
/// with [`Rule::parse`] or take the demo script from [`demo_rules`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub(crate) stage: Stage,
    /// Lower-cased prefix of the local part; `None` matches everything.
    pub(crate) prefix: Option<String>,
    /// Share of attempts hit, in basis points (1..=10000); `None` is all.
    pub(crate) percent_bp: Option<u32>,
    pub(crate) seed: u64,
    /// How many times the rule fires per distinct address; `None` is always.
    pub(crate) times: Option<u32>,
    pub(crate) effect: Effect,
}

/// The seed used for `percent=` when the spec gives none.
pub(crate) const DEFAULT_SEED: u64 = 0x5EED_0FED_5154;

const KEYS: &str = "stage, match, percent, seed, times, action, secs, reply";

/// Why a rule spec was refused; its message names the spec and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule {spec:?}: {reason}")]
pub struct RuleError {
    spec: String,
    reason: String,
}

impl RuleError {
    /// The problem alone, without the spec.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Rule {
    /// Parses a compact rule spec, as given to the CLI's `--rule` flag.
    ///
    /// A spec is comma-separated `key=value` pairs:
    ///
    /// | key       | value                                                          |
    /// |-----------|----------------------------------------------------------------|
    /// | `stage`   | required: `greeting`, `mail`, `rcpt` or `data`                 |
    /// | `match`   | local-part prefix, case-insensitive (not at `greeting`)        |
    /// | `percent` | share of attempts hit, `0.01`..=`100`, deterministic           |
    /// | `seed`    | integer seed for `percent` (default fixed)                     |
    /// | `times`   | fire only the first N times per distinct address               |
    /// | `action`  | `reply` (default when `reply=` is given), `disconnect`, `stall`|
    /// | `secs`    | stall length in seconds, fractions allowed (`stall` only)      |
    /// | `reply`   | the reply, code first: `550 5.1.1 No such user`                |
    ///
    /// **`reply=` must be the last key**: it takes the rest of the spec
    /// verbatim, commas, colons and `=` included, so provider replies such as
    /// `554 5.0.0 Error: transaction failed, ...{"Code":"..."}` fit as they
    /// are. A newline, or the two characters `\n`, splits the reply into
    /// lines (`554-...` continuation lines). Reply codes must be 4xx or 5xx; a
    /// `421` reply closes the connection after it is sent.
    ///
    /// `times` counts per address: at `rcpt` the recipient, at `mail` the
    /// sender, at `data` the first recipient that matched (or the first
    /// recipient when there is no `match`), at `greeting` the whole server.
    /// `percent` decides from a hash of the seed, that same address and how
    /// many times it was tried, so a run is reproducible and a retried
    /// address eventually gets through.
    ///
    /// `action=stall` without `reply=` waits, then answers normally.
    /// `action=disconnect` at `data` closes after the final dot, without
    /// storing the message.
    ///
    /// ```text
    /// stage=rcpt,match=bounce,reply=550 5.1.1 No such user
    /// stage=rcpt,match=retry,times=1,reply=451 4.3.0 Try again later
    /// stage=data,match=drop,action=disconnect,times=1
    /// stage=rcpt,match=slow,action=stall,secs=30
    /// stage=data,percent=5,reply=451 4.3.0 Busy
    /// stage=greeting,reply=554 5.3.2 No service
    /// ```
    pub fn parse(spec: &str) -> Result<Rule, RuleError> {
        parse_spec(spec).map_err(|reason| RuleError {
            spec: spec.to_owned(),
            reason,
        })
    }

    /// The stage this rule applies to.
    pub fn stage(&self) -> Stage {
        self.stage
    }
}

fn parse_spec(spec: &str) -> Result<Rule, String> {
    let mut stage = None;
    let mut prefix = None;
    let mut percent_bp = None;
    let mut seed = None;
    let mut times = None;
    let mut action = None;
    let mut secs = None;
    let mut reply = None;

    let mut rest = spec.trim_start();
    while !rest.is_empty() {
        let (pair, next) = rest.split_once(',').unwrap_or((rest, ""));
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("expected key=value, found {pair:?}"));
        };
        let key = key.trim().to_ascii_lowercase();
        if key == "reply" {
            // The rest of the spec, verbatim: see the doc comment of `parse`.
            let (_, text) = rest.split_once('=').unwrap_or_default();
            reply = Some(Reply::parse(text)?);
            break;
        }
        let value = value.trim();
        rest = next.trim_start();
        if value.is_empty() {
            return Err(format!("{key}= needs a value"));
        }
        let fresh = match key.as_str() {
            "stage" => {
                let parsed = Stage::parse(value).ok_or_else(|| {
                    format!("unknown stage {value:?} (expected greeting, mail, rcpt or data)")
                })?;
                stage.replace(parsed).is_none()
            }
            "match" => prefix.replace(value.to_ascii_lowercase()).is_none(),
            "percent" => percent_bp.replace(parse_percent(value)?).is_none(),
            "seed" => {
                let parsed = value
                    .parse::<u64>()
                    .map_err(|_| format!("seed={value} is not a non-negative integer"))?;
                seed.replace(parsed).is_none()
            }
            "times" => {
                let parsed = value
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("times={value} is not a positive integer"))?;
                times.replace(parsed).is_none()
            }
            "action" => {
                let parsed = match value.to_ascii_lowercase().as_str() {
                    "reply" => Action::Reply,
                    "disconnect" => Action::Disconnect,
                    "stall" => Action::Stall,
                    _ => {
                        return Err(format!(
                            "unknown action {value:?} (expected reply, disconnect or stall)"
                        ));
                    }
                };
                action.replace(parsed).is_none()
            }
            "secs" => {
                let parsed = value
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| format!("secs={value} is not a number of seconds"))?;
                secs.replace(parsed).is_none()
            }
            _ => return Err(format!("unknown key {key:?} (expected one of {KEYS})")),
        };
        if !fresh {
            return Err(format!("{key}= is given twice"));
        }
    }

    let stage = stage.ok_or("missing stage= (greeting, mail, rcpt or data)")?;
    if stage == Stage::Greeting && prefix.is_some() {
        return Err("match= does not apply at stage=greeting (there is no address yet)".into());
    }
    if let Some(reply) = &reply
        && !(400..600).contains(&reply.code())
    {
        return Err(format!("reply code {} must be 4xx or 5xx", reply.code()));
    }
    let action = match (action, &reply) {
        (Some(action), _) => action,
        (None, Some(_)) => Action::Reply,
        (None, None) => return Err("nothing to do: give reply=... or action=".into()),
    };
    if secs.is_some() && action != Action::Stall {
        return Err("secs= only applies to action=stall".into());
    }
    let effect = match (action, reply) {
        (Action::Reply, Some(reply)) => Effect::Reply(reply),
        (Action::Reply, None) => return Err("action=reply needs reply=...".into()),
        (Action::Disconnect, None) => Effect::Disconnect,
        (Action::Disconnect, Some(_)) => {
            return Err("action=disconnect closes without replying: drop reply=".into());
        }
        (Action::Stall, reply) => {
            let secs = secs.ok_or("action=stall needs secs=")?;
            match reply {
                Some(reply) => Effect::StallThenReply(secs, reply),
                None => Effect::Stall(secs),
            }
        }
    };
    if seed.is_some() && percent_bp.is_none() {
        return Err("seed= only applies with percent=".into());
    }
    Ok(Rule {
        stage,
        prefix,
        percent_bp,
        seed: seed.unwrap_or(DEFAULT_SEED),
        times,
        effect,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Reply,
    Disconnect,
    Stall,
}

fn parse_percent(value: &str) -> Result<u32, String> {
    let percent = value
        .trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| format!("percent={value} is not a number"))?;
    let bp = (percent * 100.0).round();
    if !(1.0..=10_000.0).contains(&bp) {
        return Err(format!("percent={value} must be between 0.01 and 100"));
    }
    Ok(bp as u32)
}

impl fmt::Display for Rule {
    /// Writes the rule back as a spec that [`Rule::parse`] accepts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage={}", self.stage)?;
        if let Some(prefix) = &self.prefix {
            write!(f, ",match={prefix}")?;
        }
        if let Some(bp) = self.percent_bp {
            write!(f, ",percent={}", f64::from(bp) / 100.0)?;
            if self.seed != DEFAULT_SEED {
                write!(f, ",seed={}", self.seed)?;
            }
        }
        if let Some(times) = self.times {
            write!(f, ",times={times}")?;
        }
        match &self.effect {
            Effect::Reply(reply) => write!(f, ",reply={reply}"),
            Effect::Disconnect => write!(f, ",action=disconnect"),
            Effect::Stall(d) => write!(f, ",action=stall,secs={}", d.as_secs_f64()),
            Effect::StallThenReply(d, reply) => {
                write!(f, ",action=stall,secs={},reply={reply}", d.as_secs_f64())
            }
        }
    }
}

/// The built-in script of `edm demo`, one behaviour per local-part prefix:
///
/// - `bounce*`: `550 5.1.1` at RCPT, always;
/// - `full*`: `452 4.2.2` mailbox full at RCPT once, then accepted;
/// - `retry*`: `451 4.3.0` at RCPT once, then accepted;
/// - `throttle*`: `454 4.7.0` throttling after DATA once, then accepted;
/// - `blocked*`: `550 5.7.1` policy rejection after DATA, always;
/// - `drop*`: connection closed after DATA once, then accepted.
pub fn demo_rules() -> Vec<Rule> {
    [
        "stage=rcpt,match=bounce,reply=550 5.1.1 No such user",
        "stage=rcpt,match=full,times=1,reply=452 4.2.2 Mailbox full",
        "stage=rcpt,match=retry,times=1,reply=451 4.3.0 Try again later",
        "stage=data,match=throttle,times=1,reply=454 4.7.0 Throttling failure: Maximum sending rate exceeded",
        "stage=data,match=blocked,reply=550 5.7.1 Message rejected by policy",
        "stage=data,match=drop,action=disconnect,times=1",
    ]
    .into_iter()
    // These literals are checked by the `demo_rules_parse` test.
    .map(|spec| Rule::parse(spec).expect("demo rule spec is valid"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: &str) -> String {
        Rule::parse(spec).unwrap_err().to_string()
    }

    #[test]
    fn demo_rules_parse() {
        let rules = demo_rules();
        assert_eq!(rules.len(), 6);
        assert_eq!(rules[5].effect, Effect::Disconnect);
    }

    #[test]
    fn reply_takes_the_rest_of_the_spec() {
        let text = r#"554 5.0.0 Error: transaction failed, blame it on the weather: ##SES-response-json: {"Response":{"Error":{"Code":"RequestLimitExceeded.SmtpRateLimit","Message":"rate limit"}}}"#;
        let rule = Rule::parse(&format!("match=x,stage=data,times=2,reply={text}")).unwrap();
        assert_eq!(rule.effect, Effect::Reply(Reply::parse(text).unwrap()));
        assert_eq!(rule.times, Some(2));
        assert_eq!(rule.prefix.as_deref(), Some("x"));
    }

    #[test]
    fn every_example_parses_and_round_trips() {
        for spec in [
            "match=bounce,stage=rcpt,reply=550 5.1.1 No such user",
            "match=retry,stage=rcpt,reply=451 4.3.0 Try again later,times=1",
            "match=drop,stage=data,action=disconnect,times=1",
            "match=slow,stage=rcpt,action=stall,secs=30",
            "percent=5,stage=data,reply=451 4.3.0 Busy",
            "percent=0.5,seed=7,stage=data,reply=451 4.3.0 Busy",
            "stage=mail,match=badsender,reply=553 5.7.1 Sender refused",
            "stage=greeting,action=stall,secs=30",
            "stage=greeting,reply=554 5.3.2 No service\\nsecond line",
            "stage=rcpt,match=slow,action=stall,secs=0.25,reply=451 4.4.1 slow",
        ] {
            let rule = Rule::parse(spec).unwrap();
            let again = Rule::parse(&rule.to_string()).unwrap();
            assert_eq!(rule, again, "{spec} -> {rule}");
        }
    }

    #[test]
    fn times_after_reply_is_part_of_the_reply() {
        // `reply=` is last: a trailing ",times=1" is reply text, not a key.
        let rule = Rule::parse("match=retry,stage=rcpt,reply=451 4.3.0 Later,times=1").unwrap();
        assert_eq!(rule.times, None);
        assert_eq!(
            rule.effect,
            Effect::Reply(Reply::new(451, "4.3.0 Later,times=1"))
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert_eq!(
            err("match=x,reply=550 no"),
            "invalid rule \"match=x,reply=550 no\": missing stage= (greeting, mail, rcpt or data)"
        );
        assert!(err("stage=helo,reply=550 x").contains("unknown stage \"helo\""));
        assert!(err("stage=rcpt,colour=red,reply=550 x").contains("unknown key \"colour\""));
        assert!(err("stage=rcpt,match=a").contains("nothing to do"));
        assert!(err("stage=rcpt,reply=250 ok").contains("must be 4xx or 5xx"));
        assert!(err("stage=rcpt,reply=oops").contains("three-digit code"));
        assert!(err("stage=rcpt,action=stall").contains("needs secs="));
        assert!(err("stage=rcpt,secs=3,reply=451 x").contains("only applies to action=stall"));
        assert!(err("stage=rcpt,action=disconnect,reply=451 x").contains("drop reply="));
        assert!(err("stage=rcpt,times=0,reply=451 x").contains("positive integer"));
        assert!(err("stage=rcpt,percent=0,reply=451 x").contains("between 0.01 and 100"));
        assert!(err("stage=rcpt,percent=101,reply=451 x").contains("between 0.01 and 100"));
        assert!(err("stage=greeting,match=a,reply=554 x").contains("does not apply"));
        assert!(err("stage=rcpt,stage=data,reply=451 x").contains("given twice"));
        assert!(err("stage=rcpt,match,reply=451 x").contains("expected key=value"));
        assert!(err("stage=rcpt,action=explode").contains("unknown action"));
        assert!(err("stage=rcpt,match=,reply=451 x").contains("match= needs a value"));
        assert!(err("").contains("missing stage="));
    }
}
