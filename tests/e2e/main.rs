//! End-to-end tests: the real `edm` binary against real SMTP servers on
//! loopback (edm's own sink, scripted per recipient, and postfix's
//! `smtp-sink`), checked through the state DB, the reports and the Maildir.
//!
//! Modules:
//! - `harness`: temp campaigns, the in-process sink, running `edm`.
//! - `send`: the whole path, Ctrl-C and resume, reports, bad input.
//! - `failures`: one test per failure category and provider dialect.
//! - `ingest`: interrupted ingest (SIGKILL, signals, a bad byte), repaired
//!   copies, a corrected CSV, SIGHUP and nohup, private state files.
//! - `crash`: SIGKILL at random moments, resume, compare Maildir and DB.
//! - `postfix`: postfix `smtp-sink` as an independent server.
//! - `preflight`: before the campaign: `edm send --test-to`.
//! - `suppress`: the shared suppression list, `edm suppress`.
//! - `tui`: the dashboard in tmux.
//! - `files`: issue 9 points 3, 7, 8, 9: per-row attachments confined to
//!   `attachment_dir`, the Tencent size cap, configuration refused at load,
//!   `edm demo --out`, concurrent `edm suppress add`.
//! - `wire`: what goes on the wire: IDN addresses and SMTPUTF8, no bare
//!   CR/LF (SMTP smuggling), no password in clear (issue 9).
//! - `promises`: fail fast, stop on refusals that hit every message, in doubt.
//! - `ses`: Amazon SES v2 through moto's server (issue 12).
//! - `resend`: Resend through tests/servers/resend_server.py (issue 12).
//! - `new`: `edm new` skeletons pass `edm check` (issue 12).
//! - `check_online`: `edm check --online` against the sink, moto and the
//!   Resend test server (issue 12).
//! - `pool`: relay pools: weights, per-relay rates, failover (issue 12).
//! - `bounce_parse`: `edm bounces parse`, the parser's verdicts (issue 13).
//! - `postgres`: the campaign state in PostgreSQL, a throwaway server per
//!   test (issue 14).
//! - `bounces`: VERP, `edm bounces`, late outcomes, the reputation breaker (issue 13).
//! - `bounces_mailbox`: the loop through Dovecot (IMAP, POP3), `[bounces] poll` (issue 13).
//! - `workers`: several `edm send` on one campaign in PostgreSQL, one of
//!   them killed (issue 14).

mod harness;

mod bounce_parse;
mod bounces;
mod bounces_mailbox;
mod check_online;
mod crash;
mod failures;
mod files;
mod ingest;
mod new;
mod pool;
mod postfix;
mod postgres;
mod preflight;
mod promises;
mod resend;
mod send;
mod ses;
mod suppress;
mod tui;
mod wire;
mod workers;
