//! What `verify` does about archives. Two things:
//!
//! - [`rebase`]: the log's walk (`replay::verify`) starts every stream at attempt 1 from the
//!   genesis hash, so a stream whose prefix was archived shows a gap before its first
//!   remaining attempt and a broken first link. Those two are checked again from the stream's
//!   base (`retry_stream_base`) and dropped when the first remaining event is base + 1 and
//!   links to the base's hash; otherwise they stay, stated against the base.
//! - [`check`] (`verify --archive DIR_OR_FILE`): an archive file against its manifest and the
//!   manifest recorded in the database: the file's SHA-256, its event count, its seq range,
//!   each stream's chain inside the file from its first previous-hash to its last hash, and
//!   that the last hash is the base the database recorded (or moved past by a later archive).
//!   A changed byte is named by its line and field.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use super::file::{Line, Manifest};
use crate::chain::{ChainWalk, StoredEvent, STORED_EVENTS};
use crate::event::Target;
use crate::replay::{Mismatch, VerifyReport};

/// Checks again, from each stream's base, the gaps and first links that `replay::verify`
/// reported for streams whose prefix was archived (see the module header).
pub async fn rebase(pool: &PgPool, report: &mut VerifyReport) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let bases = super::bases(&mut conn, None).await?;
    if bases.is_empty() {
        return Ok(());
    }
    // The first remaining event of each archived stream whose walk reported a problem.
    let firsts: Vec<i64> = report
        .mismatches
        .iter()
        .filter_map(|mismatch| match mismatch {
            Mismatch::BrokenLink {
                target,
                seq,
                attempt,
                ..
            } if bases.get(target).is_some_and(|b| b.attempt + 1 == *attempt) => Some(*seq),
            _ => None,
        })
        .collect();
    let events: Vec<StoredEvent> = sqlx::query_as(&format!("{STORED_EVENTS} WHERE seq = ANY($1)"))
        .bind(&firsts)
        .fetch_all(&mut *conn)
        .await?;
    let mut relinked = HashMap::new();
    for event in &events {
        let base = &bases[&event.target()];
        let mut walk = ChainWalk::from_base(base.target, base.attempt, &base.hash);
        let mut problems = Vec::new();
        walk.check(event, &mut problems);
        relinked.insert(event.seq, problems);
    }
    let mismatches = std::mem::take(&mut report.mismatches);
    for mismatch in mismatches {
        match mismatch {
            // The walk expected attempt 1: from the base it is base + 1.
            Mismatch::AttemptGap {
                target,
                expected_attempt: 1,
                found_attempt,
            } if bases.contains_key(&target) => {
                let expected = bases[&target].attempt + 1;
                if found_attempt != expected {
                    report.mismatches.push(Mismatch::AttemptGap {
                        target,
                        expected_attempt: expected,
                        found_attempt,
                    });
                }
            }
            Mismatch::BrokenLink { seq, .. } if relinked.contains_key(&seq) => {
                report
                    .mismatches
                    .extend(relinked.remove(&seq).expect("checked just above"));
            }
            other => report.mismatches.push(other),
        }
    }
    Ok(())
}

/// What `verify --archive` found in one archive.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveCheck {
    pub file: PathBuf,
    pub partition: String,
    pub events: i64,
    pub streams: usize,
    /// Everything that does not match, each naming its line and field where it has one.
    pub problems: Vec<String>,
}

/// Why an archive could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no archive manifest (*.manifest.json)", path.display())]
    NoManifest { path: PathBuf },
    #[error(
        "{} names partition {partition}, which the database has no archive of (retry_archive)",
        path.display()
    )]
    NotRecorded { path: PathBuf, partition: String },
    #[error("{}: not a manifest: {source}", path.display())]
    BadManifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("database error while checking an archive")]
    Database(#[from] sqlx::Error),
}

impl crate::error::CallerMistake for CheckError {
    fn is_caller_mistake(&self) -> bool {
        !matches!(self, CheckError::Database(_))
    }
}

/// Checks the archive at `path`: a directory (every manifest in it), a manifest, or an
/// events file (its manifest beside it).
pub async fn check(pool: &PgPool, path: &Path) -> Result<Vec<ArchiveCheck>, CheckError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckError::Io { path, source }
    };
    let manifests: Vec<PathBuf> = if path.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
            .collect();
        found.sort();
        found
    } else if path.to_string_lossy().ends_with(".manifest.json") {
        vec![path.to_path_buf()]
    } else {
        let name = path.to_string_lossy();
        vec![PathBuf::from(format!(
            "{}.manifest.json",
            name.strip_suffix(".jsonl").unwrap_or(&name)
        ))]
    };
    if manifests.is_empty() || !manifests.iter().all(|m| m.exists()) {
        return Err(CheckError::NoManifest {
            path: path.to_path_buf(),
        });
    }
    let mut conn = pool.acquire().await?;
    let mut checks = Vec::new();
    for manifest_path in manifests {
        checks.push(check_one(&mut conn, &manifest_path).await?);
    }
    Ok(checks)
}

async fn check_one(
    conn: &mut PgConnection,
    manifest_path: &Path,
) -> Result<ArchiveCheck, CheckError> {
    let bytes = std::fs::read(manifest_path).map_err(|source| CheckError::Io {
        path: manifest_path.to_path_buf(),
        source,
    })?;
    let on_disk: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| CheckError::BadManifest {
            path: manifest_path.to_path_buf(),
            source,
        })?;
    let recorded: Option<sqlx::types::Json<Manifest>> =
        sqlx::query_scalar("SELECT manifest FROM retry_archive WHERE partition = $1")
            .bind(&on_disk.partition)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(sqlx::types::Json(manifest)) = recorded else {
        return Err(CheckError::NotRecorded {
            path: manifest_path.to_path_buf(),
            partition: on_disk.partition,
        });
    };
    let file = manifest_path.with_file_name(&manifest.file);
    let mut problems = Vec::new();
    if on_disk != manifest {
        problems.push(format!(
            "{}: differs from the manifest the database recorded for {}",
            manifest_path.display(),
            manifest.partition
        ));
    }

    // The file, line by line: its digest, and each stream's chain.
    let reader = std::fs::File::open(&file).map_err(|source| CheckError::Io {
        path: file.clone(),
        source,
    })?;
    let mut digest = Sha256::new();
    let starts: HashMap<Target, _> = manifest.streams.iter().map(|s| (s.target(), s)).collect();
    // Per stream: its walk, and the line of its last event.
    let mut walks: HashMap<Target, (ChainWalk, usize)> = HashMap::new();
    let mut events = 0i64;
    let mut seqs: Vec<i64> = Vec::new();
    let mut lines = std::io::BufReader::new(reader);
    let mut raw = Vec::new();
    let mut number = 0usize;
    loop {
        raw.clear();
        let read = lines
            .read_until(b'\n', &mut raw)
            .map_err(|source| CheckError::Io {
                path: file.clone(),
                source,
            })?;
        if read == 0 {
            break;
        }
        number += 1;
        digest.update(&raw);
        let where_ = format!("{} line {number}", file.display());
        let line: Line = match serde_json::from_slice(&raw) {
            Ok(line) => line,
            Err(error) => {
                problems.push(format!("{where_}: not an archive line ({error})"));
                continue;
            }
        };
        let Line::Event(event) = line else { continue };
        events += 1;
        seqs.push(event.seq);
        let Some(stored) = event.stored() else {
            problems.push(format!("{where_}: field hash is not 32 bytes of hex"));
            continue;
        };
        let target = event.target();
        let Some(start) = starts.get(&target) else {
            problems.push(format!(
                "{where_}: fields job_id/job_variants_id name {target}, which the manifest has \
                 no stream for"
            ));
            continue;
        };
        let (walk, last_line) = walks.entry(target).or_insert_with(|| {
            let previous = hex::decode(&start.first_previous_hash).unwrap_or_default();
            (
                ChainWalk::from_base(target, start.first_attempt - 1, &previous),
                0,
            )
        });
        let mut found = Vec::new();
        walk.check(&stored, &mut found);
        for problem in found {
            problems.push(match problem {
                Mismatch::AttemptGap {
                    expected_attempt,
                    found_attempt,
                    ..
                } => format!(
                    "{where_}: field attempt is {found_attempt}, but {target}'s next attempt is \
                     {expected_attempt} (after line {last_line}): a line was removed, or the \
                     attempt changed"
                ),
                _ => format!(
                    "{where_}: field hash does not follow from the line's hashed fields \
                     (event_id, job_id, job_variants_id, reason, step, from_status, to_status, \
                     attempt, actor, detail, occurred_at, db_role) and {target}'s previous hash: \
                     one of them, or the hash, changed"
                ),
            });
        }
        *last_line = number;
    }
    let sha256 = hex::encode(digest.finalize());
    if sha256 != manifest.sha256 {
        problems.push(format!(
            "{}: SHA-256 is {sha256}, the manifest recorded {}",
            file.display(),
            manifest.sha256
        ));
    }
    if events != manifest.events {
        problems.push(format!(
            "{}: holds {events} events, the manifest recorded {}",
            file.display(),
            manifest.events
        ));
    }
    let (first, last) = (seqs.iter().min().copied(), seqs.iter().max().copied());
    if (first, last) != (manifest.first_seq, manifest.last_seq) {
        problems.push(format!(
            "{}: seq range {first:?}..{last:?}, the manifest recorded {:?}..{:?}",
            file.display(),
            manifest.first_seq,
            manifest.last_seq
        ));
    }
    if seqs.len() != seqs.iter().collect::<HashSet<_>>().len() {
        problems.push(format!("{}: a seq occurs twice", file.display()));
    }
    // Each stream ends where the manifest says, and the database's base is that end or lies
    // past it (a later archive moved it on).
    let bases = super::bases(&mut *conn, None).await?;
    for start in &manifest.streams {
        let target = start.target();
        match walks.get(&target) {
            None => problems.push(format!(
                "{}: {target} has no event, the manifest lists it",
                file.display()
            )),
            Some((walk, line)) => {
                let end_hash = hex::decode(&start.last_hash).unwrap_or_default();
                let ends = walk.position();
                if ends != (start.last_attempt, end_hash.as_slice()) {
                    problems.push(format!(
                        "{} line {line}: {target} ends at attempt {}, the manifest recorded \
                         attempt {} with hash {}",
                        file.display(),
                        ends.0,
                        start.last_attempt,
                        start.last_hash
                    ));
                }
            }
        }
        match bases.get(&target) {
            Some(base) if base.attempt > start.last_attempt => {}
            Some(base)
                if base.attempt == start.last_attempt
                    && hex::encode(&base.hash) == start.last_hash => {}
            base => problems.push(format!(
                "{target}: the database's base is {}, the archive ends at attempt {} with hash {}",
                base.map_or("missing".to_string(), |b| format!(
                    "attempt {} with hash {}",
                    b.attempt,
                    hex::encode(&b.hash)
                )),
                start.last_attempt,
                start.last_hash
            )),
        }
    }
    Ok(ArchiveCheck {
        file,
        partition: manifest.partition,
        events,
        streams: manifest.streams.len(),
        problems,
    })
}
