//! Maildir delivery: one file per message per recipient, written to `tmp/`
//! and renamed into `new/` so a reader never sees a partial file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide, so two sinks sharing a directory never pick the same name.
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) struct Maildir {
    tmp: PathBuf,
    new: PathBuf,
}

impl Maildir {
    /// Creates `dir/{tmp,new,cur}` as needed.
    pub(crate) fn create(dir: &Path) -> io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Maildir {
            tmp: dir.join("tmp"),
            new: dir.join("new"),
        })
    }

    /// Writes one copy of `body` per recipient, each headed by
    /// `Return-Path: <sender>` and `Delivered-To: rcpt` (the trace headers a
    /// delivery agent adds, RFC 5321 §4.4). Blocking: call off the runtime.
    ///
    /// No fsync: this is a test server, and an fsync per file would cost
    /// milliseconds per message.
    pub(crate) fn deliver(
        &self,
        at_ms: i64,
        mail_from: &str,
        rcpts: &[String],
        body: &[u8],
    ) -> io::Result<()> {
        let pid = std::process::id();
        for rcpt in rcpts {
            let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{at_ms}.{pid}_{n}.edm-sink");
            let mut file = Vec::with_capacity(body.len() + 64 + mail_from.len() + rcpt.len());
            file.extend_from_slice(b"Return-Path: <");
            file.extend_from_slice(mail_from.as_bytes());
            file.extend_from_slice(b">\r\nDelivered-To: ");
            file.extend_from_slice(rcpt.as_bytes());
            file.extend_from_slice(b"\r\n");
            file.extend_from_slice(body);
            let tmp = self.tmp.join(&name);
            fs::write(&tmp, &file)?;
            fs::rename(&tmp, self.new.join(&name))?;
        }
        Ok(())
    }
}
