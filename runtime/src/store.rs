//! Durable metadata: one JSON file per object under `<root>/metadata/<kind>/`,
//! written to a temp file, fsynced and renamed, so a crash leaves either the
//! old or the new record, never half of one.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, IoContext, Result};

/// A folder of records of one kind.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) the folder.
    pub fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Store { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes a record atomically.
    pub fn put<T: Serialize>(&self, id: &str, value: &T) -> Result<()> {
        let data = serde_json::to_vec_pretty(value).map_err(|e| Error::internal(format!("encoding {id}: {e}")))?;
        write_atomic(&self.path(id), &data)
    }

    /// Removes a record; a missing one is fine.
    pub fn delete(&self, id: &str) -> Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::internal(format!("removing record {id}: {e}"))),
            _ => Ok(()),
        }
    }

    /// Reads every record. A damaged one is an error naming its file: the
    /// daemon must not start as if it did not exist.
    pub fn load_all<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).ctx(|| format!("reading {}", self.dir.display()))?;
        for e in entries {
            let e = e.ctx(|| format!("reading {}", self.dir.display()))?;
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                // Leftover temp files from an interrupted write.
                if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".tmp-")) {
                    let _ = std::fs::remove_file(&p);
                }
                continue;
            }
            let data = std::fs::read(&p).ctx(|| format!("reading {}", p.display()))?;
            let v = serde_json::from_slice(&data)
                .map_err(|e| Error::internal(format!("metadata file {} is damaged: {e}", p.display())))?;
            out.push(v);
        }
        Ok(out)
    }
}

/// Writes `data` to `path` through a temp file and rename, fsyncing both the
/// file and its folder.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::internal(format!("{} has no parent", path.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("record");
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(data).ctx(|| format!("writing {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("renaming to {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_load_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("x")).unwrap();
        s.put("a", &vec![1, 2]).unwrap();
        s.put("b", &vec![3]).unwrap();
        let mut all: Vec<Vec<i32>> = s.load_all().unwrap();
        all.sort();
        assert_eq!(all, vec![vec![1, 2], vec![3]]);
        s.delete("a").unwrap();
        s.delete("a").unwrap();
        assert_eq!(s.load_all::<Vec<i32>>().unwrap().len(), 1);
    }

    #[test]
    fn damaged_record_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_path_buf()).unwrap();
        std::fs::write(dir.path().join("bad.json"), b"{trunc").unwrap();
        let e = s.load_all::<Vec<i32>>().unwrap_err();
        assert!(e.message.contains("bad.json"), "{}", e.message);
    }
}
