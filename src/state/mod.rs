//! Persistent state: one SQLite database, `<state_dir>/snapback.db`.
//!
//! Holds each disk's chain position (the diff base and the backup ETag left by the last
//! restore point), the cycle records (phase and checkpoint, see `docs/design.md`) and the
//! restore points. Every phase change is one transaction with `synchronous=FULL`, so what
//! is read back after a crash, kill -9 or power cut is the last committed step.

mod v1;

use crate::model::record::CycleRecord;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bump when the schema changes, and add a step to [`migrate`].
/// 1: first release. 2: cycle records whose phases carry their data (see `cycle::machine`).
const SCHEMA_VERSION: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state database {path}: corrupt record of cycle {id} of disk {disk}: {message}")]
    Corrupt {
        path: PathBuf,
        disk: String,
        id: i64,
        message: String,
    },
    #[error(
        "state database {path} has schema version {found}, newer than this snapback \
         understands ({SCHEMA_VERSION}); upgrade snapback"
    )]
    TooNew { path: PathBuf, found: i32 },
}

pub type StateResult<T> = Result<T, StateError>;

/// A disk's position in its backup chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiskState {
    pub name: String,
    /// `account/container/blob` of source and backup, to notice a config change.
    pub source: String,
    pub backup: String,
    /// `S(n-1)`: the source snapshot the backup base equals; None before the first seed.
    pub base_snapshot: Option<String>,
    /// The backup base's ETag right after the last restore point.
    pub backup_etag: Option<String>,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

/// One restore point as recorded by snapback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestorePointRow {
    pub disk: String,
    pub snapshot: String,
    pub source_snapshot: String,
    pub cycle_id: i64,
    pub created_at: i64,
}

/// Handle on the state database. Cheap operations, called from async code: each is a few
/// milliseconds of local I/O, so they run inline under a mutex rather than on a thread pool.
pub struct StateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl StateStore {
    /// Opens (creating if needed) `<state_dir>/snapback.db` and migrates it.
    pub fn open(state_dir: &Path) -> StateResult<Self> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::Dir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join("snapback.db");
        let conn = Connection::open(&path).map_err(|source| StateError::Db {
            path: path.clone(),
            source,
        })?;
        Self::init(path, conn)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> StateResult<Self> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StateError::Db {
            path: path.clone(),
            source,
        })?;
        Self::init(path, conn)
    }

    fn init(path: PathBuf, conn: Connection) -> StateResult<Self> {
        let store = StateStore {
            path,
            conn: Mutex::new(conn),
        };
        store.with(|c| {
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            // Switching a new database to WAL takes an exclusive lock and answers "busy"
            // without waiting for the busy timeout when another process is at it too.
            retry_busy(|| c.pragma_update(None, "journal_mode", "WAL"))?;
            c.pragma_update(None, "synchronous", "FULL")?;
            Ok(())
        })?;
        // The version is read and the schema made or migrated in one write transaction, taken
        // at once: two processes opening a new state directory together (a daemon starting
        // and a `status`) then migrate it one after the other, the second finding it done.
        {
            let db = |source| StateError::Db {
                path: store.path.clone(),
                source,
            };
            let mut conn = store.conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let found: i32 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(db)?;
            if found > SCHEMA_VERSION {
                return Err(StateError::TooNew {
                    path: store.path.clone(),
                    found,
                });
            }
            migrate(&store.path, &tx, found)?;
            tx.commit().map_err(db)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StateResult<T> {
        // A poisoned mutex only means another thread panicked mid-call; SQLite's own
        // transactions keep the file consistent, so carry on with the connection.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| StateError::Db {
            path: self.path.clone(),
            source,
        })
    }

    pub fn disk(&self, name: &str) -> StateResult<Option<DiskState>> {
        self.with(|c| {
            c.query_row(
                "SELECT name, source, backup, base_snapshot, backup_etag, last_success_at, \
                 last_error, last_error_at FROM disks WHERE name = ?1",
                [name],
                |r| {
                    Ok(DiskState {
                        name: r.get(0)?,
                        source: r.get(1)?,
                        backup: r.get(2)?,
                        base_snapshot: r.get(3)?,
                        backup_etag: r.get(4)?,
                        last_success_at: r.get(5)?,
                        last_error: r.get(6)?,
                        last_error_at: r.get(7)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Records the blobs a disk is configured with. If they changed, the chain restarts: the
    /// diff base is forgotten so the next cycle seeds.
    pub fn register_disk(&self, name: &str, source: &str, backup: &str) -> StateResult<DiskState> {
        self.with(|c| {
            c.execute(
                "INSERT INTO disks (name, source, backup) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(name) DO UPDATE SET source = ?2, backup = ?3, \
                 base_snapshot = CASE WHEN source = ?2 AND backup = ?3 THEN base_snapshot END, \
                 backup_etag = CASE WHEN source = ?2 AND backup = ?3 THEN backup_etag END",
                params![name, source, backup],
            )
        })?;
        Ok(self.disk(name)?.unwrap_or_default())
    }

    /// Adds the disk if it is not known yet, leaving a known disk's recorded source and backup
    /// alone: the runner compares them with the config to detect a re-pointed disk
    /// (`Runner::rebind`), so only the runner may update them.
    pub fn ensure_disk(&self, name: &str, source: &str, backup: &str) -> StateResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO disks (name, source, backup) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(name) DO NOTHING",
                params![name, source, backup],
            )
        })?;
        Ok(())
    }

    pub fn record_error(&self, disk: &str, message: &str, at: i64) -> StateResult<()> {
        self.with(|c| {
            c.execute(
                "UPDATE disks SET last_error = ?2, last_error_at = ?3 WHERE name = ?1",
                params![disk, message, at],
            )
        })?;
        Ok(())
    }

    /// The disk's unfinished cycle, if any (invariant: at most one).
    pub fn open_cycle(&self, disk: &str) -> StateResult<Option<CycleRecord>> {
        self.one_cycle(
            "SELECT id, record FROM cycles WHERE disk = ?1 AND done = 0 ORDER BY id LIMIT 1",
            disk,
        )
    }

    /// The most recent finished cycle of a disk.
    pub fn last_finished_cycle(&self, disk: &str) -> StateResult<Option<CycleRecord>> {
        self.one_cycle(
            "SELECT id, record FROM cycles WHERE disk = ?1 AND done = 1 ORDER BY id DESC LIMIT 1",
            disk,
        )
    }

    fn one_cycle(&self, sql: &str, disk: &str) -> StateResult<Option<CycleRecord>> {
        let row: Option<(i64, String)> = self.with(|c| {
            c.query_row(sql, [disk], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })?;
        row.map(|(id, json)| decode(&self.path, disk, id, &json))
            .transpose()
    }

    /// Inserts a new cycle record and returns it with its id.
    pub fn insert_cycle(&self, mut rec: CycleRecord) -> StateResult<CycleRecord> {
        let json = encode(&rec);
        rec.id = self.with(|c| {
            c.execute(
                "INSERT INTO cycles (disk, done, record) VALUES (?1, 0, ?2)",
                params![rec.disk, json],
            )?;
            Ok(c.last_insert_rowid())
        })?;
        Ok(rec)
    }

    /// Persists a cycle record, and what its phase implies, in one transaction:
    /// a recorded backup snapshot becomes a restore point; a finished cycle moves the disk's
    /// chain forward (new diff base and backup ETag) and records the success.
    pub fn save_cycle(&self, rec: &CycleRecord, now: i64) -> StateResult<()> {
        let json = encode(rec);
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "UPDATE cycles SET record = ?2, done = ?3 WHERE id = ?1",
                params![rec.id, json, rec.is_done()],
            )?;
            record_outcome(&tx, rec, now)?;
            tx.commit()
        })
    }

    /// Checkpoint inside Apply: only the record changes. `synchronous=FULL` still applies,
    /// so a checkpoint that returned is on disk.
    pub fn checkpoint(&self, rec: &CycleRecord) -> StateResult<()> {
        let json = encode(rec);
        self.with(|c| {
            c.execute(
                "UPDATE cycles SET record = ?2 WHERE id = ?1",
                params![rec.id, json],
            )
        })?;
        Ok(())
    }

    /// Gives up an unfinished cycle without a restore point, keeping it as history (`done = 2`:
    /// neither open nor finished): its disk was re-pointed at another source or backup, or
    /// another owner ran cycles since it stopped, so resuming it would act on a backup it no
    /// longer knows.
    pub fn abandon_cycle(&self, id: i64) -> StateResult<()> {
        self.with(|c| {
            c.execute(
                "UPDATE cycles SET done = 2 WHERE id = ?1 AND done = 0",
                params![id],
            )
        })?;
        Ok(())
    }

    /// Makes `rec`, a cycle record read from Azure (see `cycle::handover`), the disk's current
    /// cycle, in one transaction: the local open cycle, if any, is abandoned (`done = 2`, kept
    /// as history) and `rec` inserted, open or finished; a finished one records its restore
    /// point and moves the chain forward as [`StateStore::save_cycle`] does. Returns it with
    /// its new row id.
    pub fn import_cycle(&self, mut rec: CycleRecord, now: i64) -> StateResult<CycleRecord> {
        let json = encode(&rec);
        rec.id = self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "UPDATE cycles SET done = 2 WHERE disk = ?1 AND done = 0",
                params![rec.disk],
            )?;
            tx.execute(
                "INSERT INTO cycles (disk, done, record) VALUES (?1, ?2, ?3)",
                params![rec.disk, rec.is_done(), json],
            )?;
            let id = tx.last_insert_rowid();
            record_outcome(&tx, &CycleRecord { id, ..rec.clone() }, now)?;
            tx.commit()?;
            Ok(id)
        })?;
        Ok(rec)
    }

    /// Whether the disk has a finished cycle tagged `tag` (a cycle this state saw to its end
    /// is never opened again, whatever an older record elsewhere says).
    pub fn finished(&self, disk: &str, tag: &str) -> StateResult<bool> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM cycles WHERE disk = ?1 AND done = 1 \
                 AND json_extract(record, '$.tag') = ?2)",
                params![disk, tag],
                |r| r.get(0),
            )
        })
    }

    /// Forgets a restore point (after retention deleted its snapshot).
    pub fn delete_restore_point(&self, disk: &str, snapshot: &str) -> StateResult<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM restore_points WHERE disk = ?1 AND snapshot = ?2",
                params![disk, snapshot],
            )
        })?;
        Ok(())
    }

    /// Starts a disk's chain from an existing pair (restore `--rebase`): the disk row points
    /// at `source`/`backup` with `rec`'s source snapshot as the diff base and its backup ETag,
    /// and `rec` (a finished cycle, [`CycleRecord::rebased`]) is recorded with its restore
    /// point, all in one transaction. The next cycle of the disk is then incremental.
    pub fn start_chain(
        &self,
        rec: &CycleRecord,
        source: &str,
        backup: &str,
        now: i64,
    ) -> StateResult<CycleRecord> {
        let mut rec = rec.clone();
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO disks (name, source, backup) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(name) DO UPDATE SET source = ?2, backup = ?3",
                params![rec.disk, source, backup],
            )?;
            tx.execute(
                "INSERT INTO cycles (disk, done, record) VALUES (?1, ?2, ?3)",
                params![rec.disk, rec.is_done(), encode(&rec)],
            )?;
            rec.id = tx.last_insert_rowid();
            record_outcome(&tx, &rec, now)?;
            tx.commit()
        })?;
        Ok(rec)
    }

    /// Restore points recorded for a disk, oldest first.
    pub fn restore_points(&self, disk: &str) -> StateResult<Vec<RestorePointRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT disk, snapshot, source_snapshot, cycle_id, created_at FROM restore_points \
                 WHERE disk = ?1 ORDER BY snapshot",
            )?;
            let rows = stmt.query_map([disk], |r| {
                Ok(RestorePointRow {
                    disk: r.get(0)?,
                    snapshot: r.get(1)?,
                    source_snapshot: r.get(2)?,
                    cycle_id: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }
}

/// A record as stored. Serialising plain data to JSON cannot fail.
fn encode(rec: &CycleRecord) -> String {
    serde_json::to_string(rec).unwrap_or_default()
}

/// A stored record; one that does not decode (e.g. a prune without its source snapshot) is
/// an error naming the disk and cycle, never a record with a default in the gap.
fn decode(path: &Path, disk: &str, id: i64, json: &str) -> StateResult<CycleRecord> {
    let mut rec: CycleRecord = serde_json::from_str(json).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        disk: disk.to_string(),
        id,
        message: e.to_string(),
    })?;
    rec.id = id;
    Ok(rec)
}

/// What a saved record implies, inside its transaction: a recorded backup snapshot becomes a
/// restore point; a finished cycle moves the disk's chain forward (new diff base and backup
/// ETag) and records the success.
fn record_outcome(tx: &Connection, rec: &CycleRecord, now: i64) -> rusqlite::Result<()> {
    use crate::model::record::Phase;
    if let Some((b, s)) = rec.phase.restore_point() {
        tx.execute(
            "INSERT OR IGNORE INTO restore_points \
             (disk, snapshot, source_snapshot, cycle_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![rec.disk, b.as_str(), s.as_str(), rec.id, now],
        )?;
    }
    if let Phase::Done {
        source,
        backup_etag,
        ..
    } = &rec.phase
    {
        tx.execute(
            "UPDATE disks SET base_snapshot = ?2, backup_etag = ?3, last_success_at = ?4, \
             last_error = NULL, last_error_at = NULL WHERE name = ?1",
            params![rec.disk, source.as_str(), backup_etag, now],
        )?;
    }
    Ok(())
}

/// `op`, tried again for up to 10 s while SQLite answers "busy" where it does not wait itself.
fn retry_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match op() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Brings a database at `from` up to [`SCHEMA_VERSION`], one step per version, inside the
/// caller's transaction (see [`StateStore::open`]).
fn migrate(path: &Path, c: &Connection, from: i32) -> StateResult<()> {
    let db = |source| StateError::Db {
        path: path.to_path_buf(),
        source,
    };
    if from < 1 {
        c.execute_batch(
            "CREATE TABLE disks (
                 name TEXT PRIMARY KEY, source TEXT NOT NULL, backup TEXT NOT NULL,
                 base_snapshot TEXT, backup_etag TEXT, last_success_at INTEGER,
                 last_error TEXT, last_error_at INTEGER);
             CREATE TABLE cycles (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, disk TEXT NOT NULL,
                 done INTEGER NOT NULL, record TEXT NOT NULL);
             CREATE INDEX cycles_open ON cycles (disk, done);
             CREATE TABLE restore_points (
                 disk TEXT NOT NULL, snapshot TEXT NOT NULL, source_snapshot TEXT NOT NULL,
                 cycle_id INTEGER NOT NULL, created_at INTEGER NOT NULL,
                 PRIMARY KEY (disk, snapshot));
             PRAGMA user_version = 1;",
        )
        .map_err(db)?;
    }
    if from < 2 {
        migrate_records_v2(path, c)?;
    }
    Ok(())
}

/// Version 2: every cycle record is rewritten from the flat version-1 form into phases that
/// carry their data. A record that lacks what its phase needs stops the migration (nothing
/// is changed) with an error naming its disk and cycle.
fn migrate_records_v2(path: &Path, c: &Connection) -> StateResult<()> {
    let db = |source| StateError::Db {
        path: path.to_path_buf(),
        source,
    };
    let rows: Vec<(i64, String, String)> = c
        .prepare("SELECT id, disk, record FROM cycles ORDER BY id")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(db)?;
    for (id, disk, json) in rows {
        let corrupt = |message: String| StateError::Corrupt {
            path: path.to_path_buf(),
            disk: disk.clone(),
            id,
            message,
        };
        let old: v1::V1Record = serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
        let rec = old.upgrade().map_err(corrupt)?;
        c.execute(
            "UPDATE cycles SET record = ?2 WHERE id = ?1",
            params![id, encode(&rec)],
        )
        .map_err(db)?;
    }
    c.pragma_update(None, "user_version", 2).map_err(db)
}
