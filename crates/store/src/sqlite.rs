//! [`CampaignStore`] for the SQLite [`Store`]: each method is the store's own
//! (documented there), so the SQL stays where it is.

use std::collections::HashMap;
use std::path::Path;

use edm_model::{Category, DomainCounts, FailureRow, Recipient, RecipientId, Status, UnixMillis};

use crate::error::{ExportError, Result};
use crate::store::Store;
use crate::types::{
    ExportFilter, ExportRow, InDoubtPolicy, LateApplied, LateCounts, LateOutcome, NewRow, Outcome,
    ReplyCount, Summary, Unmatched, WindowEntry,
};
use crate::{CampaignStore, IngestPass};

impl CampaignStore for Store {
    fn location(&self) -> &Path {
        Store::path(self)
    }
    fn lock_for_run(&mut self, pid: u32) -> Result<()> {
        Store::lock_for_run(self, pid)
    }
    fn meta(&self, key: &str) -> Result<Option<String>> {
        Store::meta(self, key)
    }
    fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        Store::set_meta(self, key, value)
    }
    fn is_ingested(&self) -> Result<bool> {
        Store::is_ingested(self)
    }
    fn columns(&self) -> Result<Vec<String>> {
        Store::columns(self)
    }
    fn ingest_pass(&self) -> Result<Option<IngestPass>> {
        Store::ingest_pass(self)
    }
    fn begin_ingest(&mut self, source: &str) -> Result<IngestPass> {
        Store::begin_ingest(self, source)
    }
    fn insert_rows(&mut self, rows: &[NewRow]) -> Result<()> {
        Store::insert_rows(self, rows)
    }
    fn finish_ingest(&mut self, columns: Option<&[String]>, meta: &[(&str, &str)]) -> Result<()> {
        Store::finish_ingest(self, columns, meta)
    }
    fn discard_recipients(&mut self) -> Result<u64> {
        Store::discard_recipients(self)
    }
    fn ever_attempted(&self) -> Result<bool> {
        Store::ever_attempted(self)
    }
    fn rows_by_email(&self) -> Result<HashMap<String, (RecipientId, Status)>> {
        Store::rows_by_email(self)
    }
    fn skip_unsent(&mut self, ids: &[RecipientId], reason: &str) -> Result<u64> {
        Store::skip_unsent(self, ids, reason)
    }
    fn take_repair_notice(&mut self) -> Result<u64> {
        Store::take_repair_notice(self)
    }
    fn recover_in_doubt(&mut self, policy: InDoubtPolicy) -> Result<u64> {
        Store::recover_in_doubt(self, policy)
    }
    fn claim_with_budget(
        &mut self,
        limit: usize,
        max_due: usize,
        now: UnixMillis,
    ) -> Result<Vec<Recipient>> {
        Store::claim_with_budget(self, limit, max_due, now)
    }
    fn record_and_mark(&mut self, outcomes: &[Outcome], marks: &[RecipientId]) -> Result<()> {
        Store::record_and_mark(self, outcomes, marks)
    }
    fn finish_run(&mut self) -> Result<()> {
        Store::flush_domain_tally(self)?;
        Store::index_message_ids(self)
    }
    fn reset_for_retry(&mut self, statuses: &[Status], categories: &[Category]) -> Result<u64> {
        Store::reset_for_retry(self, statuses, categories)
    }
    fn summary(&self) -> Result<Summary> {
        Store::summary(self)
    }
    fn sent_since(&self, since: UnixMillis) -> Result<u64> {
        Store::sent_since(self, since)
    }
    fn recent_failures(&self, limit: usize) -> Result<Vec<FailureRow>> {
        Store::recent_failures(self, limit)
    }
    fn top_replies(&self, limit: usize) -> Result<Vec<ReplyCount>> {
        Store::top_replies(self, limit)
    }
    fn domain_counts(&self, limit: usize) -> Result<Vec<(String, DomainCounts)>> {
        Store::domain_counts(self, limit)
    }
    fn export_rows(&self, filter: &ExportFilter, f: &mut dyn FnMut(&ExportRow)) -> Result<()> {
        Store::export(self, filter, |row| {
            f(row);
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|e| match e {
            ExportError::Store(e) => e,
            ExportError::Sink(never) => match never {},
        })
    }
    fn relay_counts(
        &self,
        since: UnixMillis,
    ) -> Result<std::collections::BTreeMap<String, crate::RelayCounts>> {
        Store::relay_counts(self, since)
    }
    fn log_event(&mut self, at: UnixMillis, kind: &str, text: &str) -> Result<()> {
        Store::log_event(self, at, kind, text)
    }
    fn recent_events(&self, limit: usize) -> Result<Vec<(UnixMillis, String, String)>> {
        Store::recent_events(self, limit)
    }
    fn find_by_message_id(&self, message_id: &str) -> Result<Option<RecipientId>> {
        Store::find_by_message_id(self, message_id)
    }
    fn find_by_provider_message_id(&self, id: &str) -> Result<Option<RecipientId>> {
        Store::find_by_provider_message_id(self, id)
    }
    fn recipient_state(&self, id: RecipientId) -> Result<Option<(String, Status)>> {
        Store::recipient_state(self, id)
    }
    fn apply_late(&mut self, late: &LateOutcome) -> Result<LateApplied> {
        Store::apply_late(self, late)
    }
    fn late_counts(&self) -> Result<LateCounts> {
        Store::late_counts(self)
    }
    fn record_unmatched(&mut self, unmatched: &Unmatched) -> Result<bool> {
        Store::record_unmatched(self, unmatched)
    }
    fn unmatched(&self) -> Result<Vec<Unmatched>> {
        Store::unmatched(self)
    }
    fn reputation_window(&self, limit: usize) -> Result<Vec<WindowEntry>> {
        Store::reputation_window(self, limit)
    }
}
