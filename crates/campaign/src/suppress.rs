//! The shared suppression list: addresses never to send to, in any campaign.
//!
//! One CSV file, `$EDM_HOME/suppression.csv` (default
//! `~/.local/share/edm/suppression.csv`), with the header
//! `email,reason,added_at,campaign`. People manage it with `edm suppress`;
//! `edm send` adds the addresses a relay said do not exist
//! (`recipient_unknown`, a permanent failure) at the end of each run, unless
//! `[campaign] auto_suppress = false`. Ingest merges it with the campaign's
//! own `[campaign] suppression` file, so a bounce in one campaign is not
//! sent to again in the next.
//!
//! Every edit (add, import, remove, the additions at the end of a run)
//! holds an exclusive lock on `suppression.csv.lock` beside the list, so
//! concurrent edits are serialised and none is lost, and replaces the file
//! atomically: the new content is written to a temporary file in the same
//! folder, fsynced, and renamed over the list, so a reader (or a crash)
//! never sees half a file. The list, its lock and its temporary file are
//! created with mode 0600 and `$EDM_HOME` with 0700: the list holds the
//! addresses of people who asked not to be mailed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use edm_model::{Category, Status, UnixMillis};
use edm_recipients::{Suppression, normalize, validate};
use edm_store::{ExportFilter, Store};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::Campaign;

/// The file name of the shared list inside `$EDM_HOME`.
pub const SHARED_SUPPRESSION_FILE: &str = "suppression.csv";

/// edm's data directory: `$EDM_HOME`, else `$XDG_DATA_HOME/edm`, else
/// `~/.local/share/edm`.
pub fn edm_home() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(home) = var("EDM_HOME") {
        return PathBuf::from(home);
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return PathBuf::from(data).join("edm");
    }
    let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into());
    home.join(".local").join("share").join("edm")
}

/// One line of the shared list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedAddress {
    /// The address, as given (compared trimmed and case-insensitively).
    pub email: String,
    /// Why: `manual`, `imported`, or the relay's reply for a bounce.
    #[serde(default)]
    pub reason: String,
    /// When it was added, RFC 3339 in UTC.
    #[serde(default)]
    pub added_at: String,
    /// The campaign whose run added it (empty when added by hand).
    #[serde(default)]
    pub campaign: String,
}

impl SuppressedAddress {
    /// An entry added now.
    pub fn now(email: &str, reason: &str, campaign: &str) -> SuppressedAddress {
        SuppressedAddress {
            email: email.trim().to_owned(),
            reason: reason.to_owned(),
            added_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            campaign: campaign.to_owned(),
        }
    }
}

/// What [`SharedSuppression::add`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// Addresses newly listed.
    pub added: u64,
    /// Addresses that were listed already (or repeated in the input).
    pub already: u64,
}

/// The shared suppression file.
#[derive(Clone, Debug)]
pub struct SharedSuppression {
    path: PathBuf,
}

impl SharedSuppression {
    /// The list at its default place, `edm_home()/suppression.csv`.
    pub fn open_default() -> SharedSuppression {
        SharedSuppression::at(edm_home().join(SHARED_SUPPRESSION_FILE))
    }

    /// The list in a given file.
    pub fn at(path: impl Into<PathBuf>) -> SharedSuppression {
        SharedSuppression { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, in file order. A missing file is an empty list.
    pub fn entries(&self) -> Result<Vec<SuppressedAddress>, Error> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.io(source)),
        };
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .comment(Some(b'#'))
            .from_reader(std::io::BufReader::new(file));
        let mut out = Vec::new();
        for (i, entry) in reader.deserialize::<SuppressedAddress>().enumerate() {
            let entry = entry.map_err(|e| self.bad(Some(i + 1), e))?;
            if !entry.email.trim().is_empty() {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Writes the list as CSV, header first (`edm suppress list`). Returns
    /// the number of entries.
    pub fn write_csv(&self, out: impl Write) -> Result<u64, Error> {
        let entries = self.entries()?;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(out);
        let fail = |e: csv::Error| self.bad(None, e);
        writer
            .write_record(["email", "reason", "added_at", "campaign"])
            .map_err(fail)?;
        for entry in &entries {
            writer.serialize(entry).map_err(fail)?;
        }
        writer.flush().map_err(|e| self.io(e))?;
        Ok(entries.len() as u64)
    }

    /// The list as a set for ingest; `None` when the file does not exist.
    pub fn load(&self) -> Result<Option<Suppression>, Error> {
        if !self.path.exists() {
            return Ok(None);
        }
        let entries = self.entries()?;
        Ok(Some(Suppression::from_addresses(
            entries.iter().map(|e| e.email.as_str()),
        )))
    }

    /// Appends the entries whose address is not listed yet (nor repeated
    /// earlier in `entries`). Creates the file, its header and its
    /// directory when needed. The file's existing lines are kept as they
    /// are (comments included).
    pub fn add(&self, entries: &[SuppressedAddress]) -> Result<Added, Error> {
        let _lock = self.lock()?;
        let mut listed: HashSet<String> = self
            .entries()?
            .iter()
            .map(|e| normalize(&e.email))
            .collect();
        let mut result = Added::default();
        let new: Vec<&SuppressedAddress> = entries
            .iter()
            .filter(|e| {
                let fresh = listed.insert(normalize(&e.email));
                if !fresh {
                    result.already += 1;
                }
                fresh
            })
            .collect();
        if new.is_empty() {
            return Ok(result);
        }
        let mut bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.io(e)),
        };
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        let mut writer = csv::WriterBuilder::new()
            .has_headers(bytes.is_empty())
            .terminator(csv::Terminator::CRLF)
            .from_writer(bytes);
        for entry in &new {
            writer.serialize(entry).map_err(|e| self.bad(None, e))?;
        }
        let bytes = writer.into_inner().map_err(|e| self.io(e.into_error()))?;
        self.replace(&bytes)?;
        result.added = new.len() as u64;
        Ok(result)
    }

    /// Removes these addresses (any case). Returns how many entries went.
    pub fn remove<S: AsRef<str>>(&self, emails: &[S]) -> Result<u64, Error> {
        let _lock = self.lock()?;
        let gone: HashSet<String> = emails.iter().map(|e| normalize(e.as_ref())).collect();
        let entries = self.entries()?;
        let before = entries.len();
        let kept: Vec<_> = entries
            .into_iter()
            .filter(|e| !gone.contains(&normalize(&e.email)))
            .collect();
        let removed = (before - kept.len()) as u64;
        if removed == 0 {
            return Ok(0);
        }
        // The header written by hand: it stays when no entry is left.
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        writer
            .write_record(["email", "reason", "added_at", "campaign"])
            .map_err(|e| self.bad(None, e))?;
        for entry in &kept {
            writer.serialize(entry).map_err(|e| self.bad(None, e))?;
        }
        let bytes = writer.into_inner().map_err(|e| self.io(e.into_error()))?;
        self.replace(&bytes)?;
        Ok(removed)
    }

    /// A path beside the list: `suppression.csv` + `suffix`.
    fn beside(&self, suffix: &str) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// Creates the list's folder (0700) when it does not exist, then takes
    /// the edit lock (`flock` on `suppression.csv.lock`, waiting for the
    /// holder). A separate file, because the list itself is replaced by a
    /// rename at each edit; the lock goes with the returned file's close.
    fn lock(&self) -> Result<File, Error> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let path = self.beside(".lock");
        let file = private(OpenOptions::new().create(true).truncate(false).write(true))
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        file.lock().map_err(|source| Error::Io { path, source })?;
        Ok(file)
    }

    /// Replaces the list with `bytes` atomically (caller holds the lock):
    /// a temporary file in the same folder (so the rename stays on one file
    /// system), fsynced before the rename, the folder fsynced after it so
    /// the rename survives a power loss. Mode 0600.
    fn replace(&self, bytes: &[u8]) -> Result<(), Error> {
        let tmp = self.beside(".tmp");
        let write = || -> std::io::Result<()> {
            let mut f =
                private(OpenOptions::new().create(true).truncate(true).write(true)).open(&tmp)?;
            // A temporary file left by a crash keeps its old mode: set it.
            #[cfg(unix)]
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.io(e)
        })
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn bad(&self, record: Option<usize>, source: csv::Error) -> Error {
        Error::SuppressionList {
            path: self.path.clone(),
            record,
            source,
        }
    }
}

/// Files of the list are created readable by their owner only (0600).
fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// The addresses of a file to import: a CSV with an `email` column, or one
/// address a line (`#` comments), as `[campaign] suppression` files are
/// read. Returns the valid addresses and the invalid ones.
pub fn read_import(file: &Path) -> Result<(Vec<String>, Vec<String>), Error> {
    let set = Suppression::load(file)?;
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for address in set.iter() {
        match validate(address) {
            Ok(()) => valid.push(address.to_owned()),
            Err(_) => invalid.push(address.to_owned()),
        }
    }
    valid.sort();
    invalid.sort();
    Ok((valid, invalid))
}

/// The do-not-send set for ingest: the campaign's `[campaign] suppression`
/// file and the shared list, merged.
pub(crate) fn campaign_suppression(c: &Campaign) -> Result<Option<Suppression>, Error> {
    let own = c
        .config
        .campaign
        .suppression
        .as_ref()
        .map(|p| Suppression::load(&c.path(p)))
        .transpose()?;
    let shared = SharedSuppression::open_default().load()?;
    Ok(match (own, shared) {
        (Some(a), Some(b)) => Some(a.union(&b)),
        (a, b) => a.or(b),
    })
}

/// At the end of a run: adds the addresses that failed as
/// `recipient_unknown` since `since` to the shared list, unless
/// `[campaign] auto_suppress = false`. Never fails the run: a problem is
/// logged.
pub(crate) fn after_run(c: &Campaign, store: &Store, since: UnixMillis) {
    if !c.config.campaign.auto_suppress {
        return;
    }
    let list = SharedSuppression::open_default();
    match auto_suppress(c, store, since, &list) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            added = n,
            file = %list.path().display(),
            "unknown recipients added to the shared suppression list"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot add unknown recipients to the shared suppression list"
        ),
    }
}

fn auto_suppress(
    c: &Campaign,
    store: &Store,
    since: UnixMillis,
    list: &SharedSuppression,
) -> Result<u64, Error> {
    let filter = ExportFilter {
        statuses: vec![Status::Failed],
        categories: vec![Category::RecipientUnknown],
        in_doubt_only: false,
    };
    let campaign = &c.config.campaign.name;
    let mut bounced = Vec::new();
    store
        .export(&filter, |row| {
            // Only this run's: an address removed from the list by hand
            // does not come back because an old run bounced it.
            if row.last_attempt_at.is_some_and(|at| at >= since) {
                let reply = [
                    row.smtp_code.map(|c| c.to_string()),
                    row.enhanced_code.clone(),
                    row.reply.clone(),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
                let reason = format!("{}: {reply}", Category::RecipientUnknown);
                bounced.push(SuppressedAddress::now(&row.email, &reason, campaign));
            }
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|e| match e {
            edm_store::ExportError::Store(e) => Error::Store(e),
            edm_store::ExportError::Sink(never) => match never {},
        })?;
    if bounced.is_empty() {
        return Ok(0);
    }
    Ok(list.add(&bounced)?.added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_record_is_named_with_the_list_and_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppression.csv");
        // Not UTF-8: the record cannot be read as text.
        std::fs::write(
            &path,
            b"email,reason,added_at,campaign\r\na@example.com,man\xffual,,\r\n",
        )
        .unwrap();
        let e = SharedSuppression::at(&path).entries().unwrap_err();
        assert!(
            matches!(&e, Error::SuppressionList { path: p, record: Some(1), .. } if *p == path),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("{}: record 1: ", path.display())),
            "{e}"
        );
    }

    #[test]
    fn add_list_remove_round_trip_in_the_documented_format() {
        let dir = tempfile::tempdir().unwrap();
        let list = SharedSuppression::at(dir.path().join("sub/suppression.csv"));
        assert!(list.entries().unwrap().is_empty());
        assert!(list.load().unwrap().is_none());

        let a = SuppressedAddress::now("Ann@Example.com", "manual", "");
        let b = SuppressedAddress::now(
            "bob@example.com",
            "recipient_unknown: 550 5.1.1 No, such user",
            "spring",
        );
        let added = list.add(&[a.clone(), b.clone(), a.clone()]).unwrap();
        assert_eq!(
            added,
            Added {
                added: 2,
                already: 1
            }
        );
        let again = list
            .add(&[SuppressedAddress::now(" ANN@example.com", "x", "")])
            .unwrap();
        assert_eq!(
            again,
            Added {
                added: 0,
                already: 1
            }
        );

        let text = std::fs::read_to_string(list.path()).unwrap();
        let mut lines = text.split("\r\n");
        assert_eq!(lines.next(), Some("email,reason,added_at,campaign"));
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("Ann@Example.com,manual,20")
        );
        // The comma in the reply is quoted, not a new field.
        assert!(
            text.contains("bob@example.com,\"recipient_unknown: 550 5.1.1 No, such user\","),
            "{text}"
        );
        assert!(a.added_at.ends_with('Z'), "{}", a.added_at);

        assert_eq!(list.entries().unwrap(), vec![a.clone(), b.clone()]);
        let set = list.load().unwrap().unwrap();
        assert!(set.contains("ann@example.com") && set.contains("BOB@example.com"));

        // Appending later keeps a single header.
        list.add(&[SuppressedAddress::now("carl@example.com", "manual", "")])
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(list.path())
                .unwrap()
                .matches("email,reason")
                .count(),
            1
        );

        assert_eq!(
            list.remove(&["ANN@example.com", "nobody@example.com"])
                .unwrap(),
            1
        );
        let left: Vec<_> = list
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.email)
            .collect();
        assert_eq!(left, ["bob@example.com", "carl@example.com"]);
        assert_eq!(list.remove(&["ann@example.com"]).unwrap(), 0);
    }

    #[test]
    fn hand_edited_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppression.csv");
        std::fs::write(
            &path,
            "email,reason\n# a comment\nx@example.com,complaint\n\n",
        )
        .unwrap();
        let list = SharedSuppression::at(&path);
        let entries = list.entries().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].reason, "complaint");
        assert_eq!(entries[0].campaign, "");
    }

    #[test]
    fn import_reads_both_shapes_and_sorts_out_invalid_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(
            &csv,
            "name,Email\nAnn,ann@example.com\nBob,not-an-address\n",
        )
        .unwrap();
        let (valid, invalid) = read_import(&csv).unwrap();
        assert_eq!(valid, ["ann@example.com"]);
        assert_eq!(invalid, ["not-an-address"]);
        let lines = dir.path().join("b.txt");
        std::fs::write(
            &lines,
            "# unsubscribes\nCarl@example.com\n\ndora@example.org\n",
        )
        .unwrap();
        let (valid, _) = read_import(&lines).unwrap();
        assert_eq!(valid, ["carl@example.com", "dora@example.org"]);
    }

    #[test]
    fn concurrent_edits_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/suppression.csv");
        let threads = 8;
        let each = 25;
        std::thread::scope(|scope| {
            for t in 0..threads {
                let list = SharedSuppression::at(&path);
                scope.spawn(move || {
                    for i in 0..each {
                        let e = SuppressedAddress::now(&format!("t{t}-{i}@example.com"), "x", "");
                        assert_eq!(list.add(&[e]).unwrap().added, 1);
                        // A remove now and then, of an address of its own.
                        if i % 5 == 4 {
                            let gone = format!("t{t}-{}@example.com", i - 1);
                            assert_eq!(list.remove(&[gone]).unwrap(), 1);
                        }
                    }
                });
            }
        });
        let list = SharedSuppression::at(&path);
        let entries = list.entries().unwrap();
        let expected = threads * (each - each / 5);
        assert_eq!(entries.len(), expected);
        let unique: HashSet<_> = entries.iter().map(|e| e.email.clone()).collect();
        assert_eq!(unique.len(), expected);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("email,reason").count(), 1, "one header");
        assert!(!dir.path().join("home/suppression.csv.tmp").exists());
    }

    #[cfg(unix)]
    #[test]
    fn the_list_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("edm-home");
        let list = SharedSuppression::at(home.join("suppression.csv"));
        list.add(&[SuppressedAddress::now("a@example.com", "manual", "")])
            .unwrap();
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(list.path()), 0o600);
        assert_eq!(mode(&home.join("suppression.csv.lock")), 0o600);
        // A list written by an older edm (0644) is private after an edit,
        // its lines (comments included) kept.
        std::fs::write(list.path(), "email,reason\n# kept\nb@example.com,x").unwrap();
        std::fs::set_permissions(list.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        list.add(&[SuppressedAddress::now("c@example.com", "manual", "")])
            .unwrap();
        assert_eq!(mode(list.path()), 0o600);
        let text = std::fs::read_to_string(list.path()).unwrap();
        assert!(
            text.starts_with("email,reason\n# kept\nb@example.com,x\r\nc@example.com,"),
            "{text}"
        );
        std::fs::set_permissions(list.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        list.remove(&["b@example.com"]).unwrap();
        assert_eq!(mode(list.path()), 0o600);
    }
}
