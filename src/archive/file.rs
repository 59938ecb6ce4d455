//! An archive's two files. `<partition>.jsonl`: one JSON object a line, a plain script's
//! format — first every event of the partition in seq order (`"type": "event"`, every column
//! of the log: `hash` in hex, `detail` as the jsonb text the hash covers, `txid` as text, and
//! its `outcome` row or null), then the notes that leave with them (`"type": "intervention"`,
//! the `retry_intervention` row). `<partition>.manifest.json`: the file's SHA-256, its counts,
//! its seq and time ranges, and each stream's first previous-hash and last attempt and hash —
//! what `verify --archive` checks the file against, and what the database records.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::ArchiveError;
use crate::chain::StoredEvent;
use crate::event::{RetryReason, Target, GENESIS_HASH};

/// The manifest's format version.
pub const FORMAT: u32 = 1;

/// One line of an archive file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// Boxed: an event is five times the size of a note's JSON value.
    Event(Box<ArchivedEvent>),
    /// A `retry_intervention` row, as `to_jsonb` gives it.
    Intervention(serde_json::Value),
}

/// An event as archived: every column of `retry_history`, and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[serde(deny_unknown_fields)]
pub struct ArchivedEvent {
    pub seq: i64,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub job_variants_id: Option<Uuid>,
    pub reason: RetryReason,
    pub step: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub attempt: i32,
    pub actor: String,
    /// jsonb's text of the detail: the form the hash covers.
    pub detail: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub txid: String,
    /// Hex.
    pub hash: String,
    pub db_role: Option<String>,
    /// The `retry_outcome` row (`to_jsonb`), or null while the retry was still open.
    #[sqlx(json(nullable))]
    pub outcome: Option<serde_json::Value>,
}

impl ArchivedEvent {
    /// The event as the chain walk checks it; `None` when its hash is not 32 bytes of hex.
    pub fn stored(&self) -> Option<StoredEvent> {
        let hash = hex::decode(&self.hash)
            .ok()
            .filter(|hash| hash.len() == 32)?;
        Some(StoredEvent {
            seq: self.seq,
            event_id: self.event_id,
            job_id: self.job_id,
            job_variants_id: self.job_variants_id,
            reason: self.reason,
            step: self.step.clone(),
            from_status: self.from_status.clone(),
            to_status: self.to_status.clone(),
            attempt: self.attempt,
            actor: self.actor.clone(),
            db_role: self.db_role.clone(),
            occurred_at: self.occurred_at,
            detail_text: self.detail.clone(),
            hash,
        })
    }

    pub fn target(&self) -> Target {
        Target::from_columns(self.job_id, self.job_variants_id)
    }
}

/// What an archive file must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub partition: String,
    pub range_from: DateTime<Utc>,
    pub range_to: DateTime<Utc>,
    /// The events file's name, in the manifest's directory.
    pub file: String,
    /// The events file's SHA-256, hex.
    pub sha256: String,
    pub events: i64,
    pub interventions: i64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub first_recorded_at: Option<DateTime<Utc>>,
    pub last_recorded_at: Option<DateTime<Utc>>,
    /// Each stream in the file, by job and variant.
    pub streams: Vec<StreamEntry>,
}

/// One stream's part of an archive: where its chain starts and where it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEntry {
    pub job_id: Uuid,
    pub job_variants_id: Option<Uuid>,
    pub first_attempt: i32,
    /// The hash its first archived event links to: 32 zero bytes for attempt 1, else the
    /// base an earlier archive left. Hex.
    pub first_previous_hash: String,
    pub last_attempt: i32,
    /// Hex: the stream's base once archived.
    pub last_hash: String,
    pub last_seq: i64,
    pub last_reason: RetryReason,
    pub last_step: Option<String>,
    pub last_occurred_at: DateTime<Utc>,
    pub last_recorded_at: DateTime<Utc>,
}

impl StreamEntry {
    pub fn target(&self) -> Target {
        Target::from_columns(self.job_id, self.job_variants_id)
    }
}

/// What [`write`] wrote.
pub struct Written {
    pub file: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    /// The notes written to the file, which leave the database with the events.
    pub intervention_seqs: Vec<i64>,
}

/// Writes `partition`'s events (with their outcomes) and the notes that go with them to
/// `dir/<partition>.jsonl`, then its manifest; both fsynced, each first written under a
/// `.partial` name and renamed, so a file under the final name is always whole.
///
/// The notes that go: those noted before the partition's end, unless a retry that stays
/// names one as the reason it gave up.
pub async fn write(
    conn: &mut PgConnection,
    partition: &str,
    range_from: DateTime<Utc>,
    range_to: DateTime<Utc>,
    dir: &Path,
) -> Result<Written, ArchiveError> {
    let file_name = format!("{partition}.jsonl");
    let path = dir.join(&file_name);
    let partial = dir.join(format!("{file_name}.partial"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, source }
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(io(&partial))?);
    let mut digest = Sha256::new();
    let mut line = |out: &mut std::io::BufWriter<std::fs::File>, value: &Line| {
        let mut bytes = serde_json::to_vec(value).expect("an archive line serialises");
        bytes.push(b'\n');
        digest.update(&bytes);
        out.write_all(&bytes)
    };

    let mut manifest = Manifest {
        format: FORMAT,
        partition: partition.to_string(),
        range_from,
        range_to,
        file: file_name.clone(),
        sha256: String::new(),
        events: 0,
        interventions: 0,
        first_seq: None,
        last_seq: None,
        first_recorded_at: None,
        last_recorded_at: None,
        streams: Vec::new(),
    };
    let bases = super::bases(&mut *conn, None).await?;
    let mut streams: HashMap<Target, StreamEntry> = HashMap::new();
    {
        let sql = format!(
            "SELECT h.seq, h.event_id, h.job_id, h.job_variants_id, h.reason, h.step,
                    h.from_status, h.to_status, h.attempt, h.actor, h.detail::text AS detail,
                    h.occurred_at, h.recorded_at, h.txid::text AS txid,
                    encode(h.hash, 'hex') AS hash, h.db_role,
                    (SELECT to_jsonb(o) FROM retry_outcome o WHERE o.seq = h.seq) AS outcome
               FROM {} h
              ORDER BY h.seq",
            super::quote_ident(partition)
        );
        let mut rows = sqlx::query_as::<_, ArchivedEvent>(&sql).fetch(&mut *conn);
        while let Some(event) = rows.try_next().await? {
            let target = event.target();
            match streams.get_mut(&target) {
                Some(stream) => {
                    stream.last_attempt = event.attempt;
                    stream.last_hash.clone_from(&event.hash);
                    stream.last_seq = event.seq;
                    stream.last_reason = event.reason;
                    stream.last_step.clone_from(&event.step);
                    stream.last_occurred_at = event.occurred_at;
                    stream.last_recorded_at = event.recorded_at;
                }
                None => {
                    let first_previous_hash = match bases.get(&target) {
                        _ if event.attempt == 1 => hex::encode(GENESIS_HASH),
                        Some(base) if base.attempt + 1 == event.attempt => hex::encode(&base.hash),
                        base => {
                            return Err(ArchiveError::NoBase {
                                target,
                                partition: partition.to_string(),
                                attempt: event.attempt,
                                base: base
                                    .map_or("missing".into(), |b| format!("attempt {}", b.attempt)),
                            })
                        }
                    };
                    streams.insert(
                        target,
                        StreamEntry {
                            job_id: event.job_id,
                            job_variants_id: event.job_variants_id,
                            first_attempt: event.attempt,
                            first_previous_hash,
                            last_attempt: event.attempt,
                            last_hash: event.hash.clone(),
                            last_seq: event.seq,
                            last_reason: event.reason,
                            last_step: event.step.clone(),
                            last_occurred_at: event.occurred_at,
                            last_recorded_at: event.recorded_at,
                        },
                    );
                }
            }
            manifest.events += 1;
            manifest.first_seq.get_or_insert(event.seq);
            manifest.last_seq = Some(event.seq);
            manifest.first_recorded_at = Some(
                manifest
                    .first_recorded_at
                    .map_or(event.recorded_at, |at| at.min(event.recorded_at)),
            );
            manifest.last_recorded_at = Some(
                manifest
                    .last_recorded_at
                    .map_or(event.recorded_at, |at| at.max(event.recorded_at)),
            );
            line(&mut out, &Line::Event(Box::new(event))).map_err(io(&partial))?;
        }
    }
    let notes: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT i.seq, to_jsonb(i) FROM retry_intervention i
          WHERE i.noted_at < $1
            AND NOT EXISTS (
                SELECT 1 FROM retry_outcome r JOIN retry_history h ON h.seq = r.seq
                 WHERE r.outcome = 'gave_up' AND r.evidence ->> 'note_seq' = i.seq::text
                   AND h.recorded_at >= $1)
          ORDER BY i.seq",
    )
    .bind(range_to)
    .fetch_all(&mut *conn)
    .await?;
    let mut intervention_seqs = Vec::with_capacity(notes.len());
    for (seq, note) in notes {
        intervention_seqs.push(seq);
        manifest.interventions += 1;
        line(&mut out, &Line::Intervention(note)).map_err(io(&partial))?;
    }
    let file = out.into_inner().map_err(|error| ArchiveError::Io {
        path: partial.clone(),
        source: error.into_error(),
    })?;
    file.sync_all().map_err(io(&partial))?;
    std::fs::rename(&partial, &path).map_err(io(&path))?;

    manifest.sha256 = hex::encode(digest.finalize());
    let mut streams: Vec<StreamEntry> = streams.into_values().collect();
    streams.sort_by_key(|s| (s.job_id, s.job_variants_id));
    manifest.streams = streams;

    let manifest_path = dir.join(format!("{partition}.manifest.json"));
    let manifest_partial = dir.join(format!("{partition}.manifest.json.partial"));
    let mut bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    bytes.push(b'\n');
    let mut out = std::fs::File::create(&manifest_partial).map_err(io(&manifest_partial))?;
    out.write_all(&bytes).map_err(io(&manifest_partial))?;
    out.sync_all().map_err(io(&manifest_partial))?;
    std::fs::rename(&manifest_partial, &manifest_path).map_err(io(&manifest_path))?;
    // The renames are durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(dir))?;
    Ok(Written {
        file: path,
        manifest_path,
        manifest,
        intervention_seqs,
    })
}
