//! Persistent state: one SQLite database, `<state_dir>/snapback.db`.
//!
//! Holds each disk's chain position (the diff base and the backup ETag left by the last
//! restore point), the cycle records (phase and checkpoint, see `docs/design.md`) and the
//! restore points. Every phase change is one transaction with `synchronous=FULL`, so what
//! is read back after a crash, kill -9 or power cut is the last committed step.

use crate::cycle::machine::{CycleRecord, Phase};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bump when the schema changes, and add a step to [`migrate`].
const SCHEMA_VERSION: i32 = 1;

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
    #[error("state database {path}: corrupt cycle record {id}: {message}")]
    Corrupt {
        path: PathBuf,
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
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            Ok(())
        })?;
        let found: i32 = store.with(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))?;
        if found > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: store.path.clone(),
                found,
            });
        }
        store.with(|c| migrate(c, found))?;
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
        row.map(|(id, json)| self.decode(id, &json)).transpose()
    }

    fn decode(&self, id: i64, json: &str) -> StateResult<CycleRecord> {
        let mut rec: CycleRecord = serde_json::from_str(json).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            id,
            message: e.to_string(),
        })?;
        rec.id = id;
        Ok(rec)
    }

    /// Inserts a new cycle record and returns it with its id.
    pub fn insert_cycle(&self, mut rec: CycleRecord) -> StateResult<CycleRecord> {
        let json = serde_json::to_string(&rec).unwrap_or_default();
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
        let json = serde_json::to_string(rec).unwrap_or_default();
        let done = rec.phase == Phase::Done;
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "UPDATE cycles SET record = ?2, done = ?3 WHERE id = ?1",
                params![rec.id, json, done],
            )?;
            if let (Some(b), Some(s)) = (&rec.backup_snapshot, &rec.source_snapshot) {
                tx.execute(
                    "INSERT OR IGNORE INTO restore_points \
                     (disk, snapshot, source_snapshot, cycle_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![rec.disk, b, s, rec.id, now],
                )?;
            }
            if done {
                tx.execute(
                    "UPDATE disks SET base_snapshot = ?2, backup_etag = ?3, last_success_at = ?4, \
                     last_error = NULL, last_error_at = NULL WHERE name = ?1",
                    params![rec.disk, rec.source_snapshot, rec.backup_etag, now],
                )?;
            }
            tx.commit()
        })
    }

    /// Checkpoint inside Apply: only the record changes. `synchronous=FULL` still applies,
    /// so a checkpoint that returned is on disk.
    pub fn checkpoint(&self, rec: &CycleRecord) -> StateResult<()> {
        let json = serde_json::to_string(rec).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "UPDATE cycles SET record = ?2 WHERE id = ?1",
                params![rec.id, json],
            )
        })?;
        Ok(())
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
    /// and `rec` (a finished cycle whose restore point is `rec.backup_snapshot`) is recorded,
    /// all in one transaction. The next cycle of the disk is then incremental.
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
                "INSERT INTO cycles (disk, done, record) VALUES (?1, 1, ?2)",
                params![rec.disk, serde_json::to_string(&rec).unwrap_or_default()],
            )?;
            rec.id = tx.last_insert_rowid();
            if let (Some(b), Some(s)) = (&rec.backup_snapshot, &rec.source_snapshot) {
                tx.execute(
                    "INSERT OR IGNORE INTO restore_points \
                     (disk, snapshot, source_snapshot, cycle_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![rec.disk, b, s, rec.id, now],
                )?;
            }
            tx.execute(
                "UPDATE disks SET base_snapshot = ?2, backup_etag = ?3, last_success_at = ?4, \
                 last_error = NULL, last_error_at = NULL WHERE name = ?1",
                params![rec.disk, rec.source_snapshot, rec.backup_etag, now],
            )?;
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

/// Brings a database at `from` up to [`SCHEMA_VERSION`], one step per version.
fn migrate(c: &Connection, from: i32) -> rusqlite::Result<()> {
    if from < 1 {
        c.execute_batch(
            "BEGIN;
             CREATE TABLE disks (
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
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    Ok(())
}
