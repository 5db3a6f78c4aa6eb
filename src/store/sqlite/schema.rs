//! The SQLite file's tables, and how a file made by an older build is brought up to date.
//!
//! Tables are created if missing; a column added since the first release is added by
//! [`MIGRATIONS`] where a file lacks it, so every file this build opens has the same columns,
//! and a file it has opened stays readable by the build before (columns are only added,
//! nullable or with a default, and that build names the columns it writes).

use rusqlite::{Connection, params};

use crate::store::StoreError;

/// A job's `state`: due at `next_at`.
pub(super) const PENDING: i64 = 0;
/// Leased (`lease` holds the token).
pub(super) const IN_FLIGHT: i64 = 1;
/// Lane-ordered, behind its lane's first open job (which is pending or in flight): never
/// leased until that one is delivered or dead (shape version 5; builds before never read it).
pub(super) const HELD: i64 = 2;
/// A dead letter.
pub(super) const DEAD: i64 = 3;

// Ids are never reused, though delivered jobs and purged callbacks are deleted: a job's id is
// the delivery id targets dedupe on, so a reused id would make a target drop a new callback as
// a duplicate of an old one. They come from blocks reserved in `ids_reserved` (see
// [`Writer::reserve_ids`]), not from AUTOINCREMENT, which costs every insert a write of
// `sqlite_sequence`. Files made by earlier versions keep their AUTOINCREMENT (harmless).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    msg_type TEXT,
    event TEXT,
    query TEXT NOT NULL,
    content_type TEXT,
    body BLOB NOT NULL,
    answer_type TEXT,
    answer BLOB,
    UNIQUE (account, dedupe_key)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    callback_id INTEGER NOT NULL,
    account TEXT NOT NULL,
    target TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_base INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (account, target, next_at) WHERE state = 0;
CREATE INDEX IF NOT EXISTS jobs_by_callback ON jobs (callback_id);
CREATE TABLE IF NOT EXISTS readiness_probe (body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kept (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
-- The last id of the latest block reserved: every id up to it may have been handed out.
CREATE TABLE IF NOT EXISTS ids_reserved (one INTEGER PRIMARY KEY CHECK (one = 1), last INTEGER NOT NULL);
-- Columns added since the first release are added by MIGRATIONS, for files made before them.
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
";

/// Columns added after the first release: (table, column, definition), added where missing.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    // The token of the lease a job in flight is held under (0: none).
    ("jobs", "lease", "INTEGER NOT NULL DEFAULT 0"),
    // Until when (Unix ms) the primary's answer may still be saved.
    ("callbacks", "answer_due", "INTEGER"),
    // The stored callback's shape (`store::shape`): its version, NULL in rows of builds before
    // versions (1), and the open platform's authorizer (2 on; also still in `query`'s tag).
    ("callbacks", "shape_version", "INTEGER"),
    ("callbacks", "authorizer", "TEXT"),
    ("callbacks", "trace", "TEXT"),
    // Request headers replayed as received (WeChat Pay's), shape version 4 on.
    ("callbacks", "headers", "TEXT"),
    // The targets the callback was queued for, one a line (shape version 5 on): a backfill
    // queues it for a target not listed, once.
    ("callbacks", "routed", "TEXT"),
    // Shape version 5: the callback's lane, and on a lane-ordered job its lane and its place
    // in it (NULL on every other job).
    ("callbacks", "lane", "TEXT"),
    ("jobs", "lane", "TEXT"),
    ("jobs", "lane_seq", "INTEGER"),
    // Shape version 5, also: WeChat's MsgId and a keyed hash of the sender, for the console's
    // history search (read by a scan of the table, no index: see `history`).
    ("callbacks", "msg_id", "TEXT"),
    ("callbacks", "sender", "TEXT"),
    // Shape version 6: the instance that accepted the callback (`server.instance_name`).
    ("callbacks", "instance", "TEXT"),
];

/// Made after [`MIGRATIONS`], whose columns it needs. Partial: jobs that are not lane-ordered
/// (`lane` NULL) are not in it, so they cost it nothing.
const LANE_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS jobs_lane ON jobs (account, target, lane, state, lane_seq)
    WHERE lane IS NOT NULL";

/// Creates the tables a file lacks, and adds the columns of [`MIGRATIONS`] that a file made by
/// an older version lacks.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    for (table, column, definition) in MIGRATIONS {
        let present = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists(params![column])?;
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    conn.execute_batch(LANE_INDEX)?;
    Ok(())
}

/// The highest id the file may have handed out: the last block reserved, or for a file made
/// before blocks were, AUTOINCREMENT's record of the highest id ever used (also of rows since
/// deleted).
pub(super) fn highest_id(conn: &Connection) -> Result<i64, StoreError> {
    let autoincrement = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")?
        .exists([])?;
    let sequence: i64 = if autoincrement {
        conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence",
            [],
            |row| row.get(0),
        )?
    } else {
        0
    };
    let used: i64 = conn.query_row(
        "SELECT MAX(m) FROM (SELECT COALESCE(MAX(last), 0) AS m FROM ids_reserved
         UNION ALL SELECT COALESCE(MAX(id), 0) FROM callbacks
         UNION ALL SELECT COALESCE(MAX(id), 0) FROM jobs)",
        [],
        |row| row.get(0),
    )?;
    Ok(sequence.max(used))
}
