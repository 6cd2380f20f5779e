//! Durable metadata in one embedded transactional database (redb) at
//! `<root>/metadata.redb`: a table per kind of object, JSON values by id.
//! Each change commits (fsynced) before the call that made it returns; redb
//! keeps a crash from leaving half a commit. redb also locks the file, so a
//! second berthd cannot open the same root.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use berth_core::error::{Error, Kind};

/// A metadata store operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Another berthd has the file open.
    #[error("metadata store {} is in use by another berthd", .path.display())]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a database, or cannot be read.
    #[error("metadata store {} is damaged or unreadable: {detail}", .path.display())]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What the database said.
        detail: String,
    },
    /// A write step failed.
    #[error("metadata store {}: {step}: {detail}", .path.display())]
    Write {
        /// The database file.
        path: PathBuf,
        /// The step (begin, insert, commit...).
        step: &'static str,
        /// What the database said.
        detail: String,
    },
    /// A record could not be encoded.
    #[error("encoding {id}: {detail}")]
    Encode {
        /// The record.
        id: String,
        /// Why.
        detail: String,
    },
    /// The folder for the file could not be made.
    #[error("creating {}: {source}", .dir.display())]
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The blocking thread running the write failed.
    #[error("metadata store write: {0}")]
    Blocking(String),
}

/// Result with [`StoreError`].
pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// The kind a CRI client sees.
    pub fn kind(&self) -> Kind {
        match self {
            StoreError::InUse { .. } => Kind::FailedPrecondition,
            _ => Kind::Internal,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::new(e.kind(), e.to_string())
    }
}

/// The open database.
#[derive(Clone)]
pub struct Db {
    db: Arc<Database>,
    path: PathBuf,
}

fn damaged(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged { path: path.to_path_buf(), detail: e.to_string() }
}

impl Db {
    /// Opens (creating) the database file. A file that is not a redb
    /// database, or is damaged, is an error naming it: Berth never starts
    /// as if it had no metadata.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Folder { dir: dir.to_path_buf(), source: Arc::new(e) })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.to_path_buf() },
            other => damaged(path, other),
        })?;
        Ok(Db { db: Arc::new(db), path: path.to_path_buf() })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One table of records of one kind.
#[derive(Clone)]
pub struct Store {
    db: Db,
    table: TableDefinition<'static, &'static str, &'static [u8]>,
}

impl Store {
    /// Opens (creating) the table `name`.
    pub fn open(db: &Db, name: &'static str) -> Result<Self> {
        let table = TableDefinition::new(name);
        let w = db.db.begin_write().map_err(|e| damaged(&db.path, e))?;
        w.open_table(table).map_err(|e| damaged(&db.path, e))?;
        w.commit().map_err(|e| damaged(&db.path, e))?;
        Ok(Store { db: db.clone(), table })
    }

    fn fail(&self, step: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Write { path: self.db.path.clone(), step, detail: e.to_string() }
    }

    /// Writes a record; committed when this returns. The commit (an fsync)
    /// runs on a blocking thread.
    pub async fn put<T: Serialize>(&self, id: &str, value: &T) -> Result<()> {
        let data = encode(id, value)?;
        let (me, id) = (self.clone(), id.to_string());
        blocking(move || me.write(&[(id, data)])).await
    }

    /// Removes a record (a missing one is fine), on a blocking thread.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let (me, id) = (self.clone(), id.to_string());
        blocking(move || me.delete_blocking(&id)).await
    }

    /// Writes several records in one transaction: all of them are committed
    /// when this returns, or none. Blocks: for callers on a blocking thread.
    pub fn put_all_blocking<T: Serialize>(&self, records: &[(String, &T)]) -> Result<()> {
        let encoded = records.iter().map(|(id, v)| Ok((id.clone(), encode(id, v)?))).collect::<Result<Vec<_>>>()?;
        self.write(&encoded)
    }

    fn write(&self, records: &[(String, Vec<u8>)]) -> Result<()> {
        let w = self.db.db.begin_write().map_err(|e| self.fail("begin", e))?;
        {
            let mut t = w.open_table(self.table).map_err(|e| self.fail("open table", e))?;
            for (id, data) in records {
                t.insert(id.as_str(), data.as_slice()).map_err(|e| self.fail("insert", e))?;
            }
        }
        w.commit().map_err(|e| self.fail("commit", e))
    }

    /// Removes a record; a missing one is fine. Blocks: for callers on a
    /// blocking thread.
    pub fn delete_blocking(&self, id: &str) -> Result<()> {
        let w = self.db.db.begin_write().map_err(|e| self.fail("begin", e))?;
        {
            let mut t = w.open_table(self.table).map_err(|e| self.fail("open table", e))?;
            t.remove(id).map_err(|e| self.fail("remove", e))?;
        }
        w.commit().map_err(|e| self.fail("commit", e))
    }

    /// Reads every record. One that does not decode is an error naming the
    /// file and the record.
    pub fn load_all<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let r = self.db.db.begin_read().map_err(|e| damaged(&self.db.path, e))?;
        let t = r.open_table(self.table).map_err(|e| damaged(&self.db.path, e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| damaged(&self.db.path, e))? {
            let (k, v) = entry.map_err(|e| damaged(&self.db.path, e))?;
            let value = serde_json::from_slice(v.value())
                .map_err(|e| damaged(&self.db.path, format!("record {:?}: {e}", k.value())))?;
            out.push(value);
        }
        Ok(out)
    }
}

fn encode<T: Serialize>(id: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode { id: id.to_string(), detail: e.to_string() })
}

/// Runs a database write on a blocking thread.
async fn blocking(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Blocking(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_load_delete_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let db = Db::open(&path).unwrap();
            let s = Store::open(&db, "x").unwrap();
            s.put("a", &vec![1, 2]).await.unwrap();
            s.put("b", &vec![3]).await.unwrap();
            s.delete("a").await.unwrap();
            s.delete("a").await.unwrap();
        }
        let db = Db::open(&path).unwrap();
        let s = Store::open(&db, "x").unwrap();
        assert_eq!(s.load_all::<Vec<i32>>().unwrap(), vec![vec![3]]);
        // A second opener is refused while the first holds it.
        let e = Db::open(&path).err().unwrap();
        assert!(matches!(e, StoreError::InUse { .. }), "{e}");
        assert_eq!(Error::from(e).kind, Kind::FailedPrecondition);
    }

    #[test]
    fn garbage_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = Db::open(&path).err().unwrap();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("m.redb"), "{e}");
    }
}
