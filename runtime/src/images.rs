//! The image store: content-addressed blobs (verified by digest and size),
//! one unpacked snapshot per layer (shared between images), and an image
//! record per config digest with its tags and digests. Shaped for registry
//! pulls: a pull only has to put blobs and call [`ImageStore::commit`].
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::reference::Reference;
use crate::store::{Db, Store};

/// What Berth knows of one image.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<config digest>`.
    pub id: String,
    /// Normalized `repo:tag` names.
    pub repo_tags: Vec<String>,
    /// `repo@sha256:<manifest digest>` names.
    pub repo_digests: Vec<String>,
    /// Bytes of config and layers (compressed, as stored).
    pub size: u64,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// The image config (OCI/Docker JSON).
    pub config: serde_json::Value,
}

const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// The node's platform, as OCI names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Checks `sha256:<64 hex>` and returns the hex.
pub fn digest_hex(d: &str) -> Result<&str> {
    let hex = d.strip_prefix("sha256:").ok_or_else(|| Error::invalid(format!("unsupported digest {d:?}")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(format!("malformed digest {d:?}")));
    }
    Ok(hex)
}

/// The image store under `<root>/images`.
pub struct ImageStore {
    blobs: PathBuf,
    snapshots: PathBuf,
    records: Store,
    images: HashMap<String, ImageRecord>,
}

impl ImageStore {
    /// Opens the store and loads its records.
    pub fn open(root: &Path, db: &Db) -> Result<Self> {
        let blobs = root.join("images/blobs/sha256");
        let snapshots = root.join("images/snapshots");
        for d in [&blobs, &snapshots] {
            std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
        }
        let records = Store::open(db, "images")?;
        let images = records.load_all::<ImageRecord>()?.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(ImageStore { blobs, snapshots, records, images })
    }

    /// Path of a stored blob.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    /// Unpacked folder of a layer.
    pub fn snapshot_path(&self, layer_digest: &str) -> Result<PathBuf> {
        Ok(self.snapshots.join(digest_hex(layer_digest)?))
    }

    /// Copies a blob in from `src`, verifying its digest and size; a blob
    /// already stored is not copied again.
    pub fn put_blob(&self, digest: &str, size: Option<u64>, src: &mut dyn Read) -> Result<PathBuf> {
        let hex = digest_hex(digest)?;
        let dest = self.blobs.join(hex);
        if dest.exists() {
            return Ok(dest);
        }
        let tmp = self.blobs.join(format!(".tmp-{}", crate::ids::new_id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
            let mut h = Sha256::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let r = src.read(&mut buf).ctx(|| format!("reading blob {digest}"))?;
                if r == 0 {
                    break;
                }
                h.update(&buf[..r]);
                f.write_all(&buf[..r]).ctx(|| format!("writing blob {digest}"))?;
                n += r as u64;
            }
            let got = hex::encode(h.finalize());
            if got != hex {
                return Err(Error::invalid(format!("blob {digest} has digest sha256:{got}: content is damaged")));
            }
            if let Some(s) = size {
                if s != n {
                    return Err(Error::invalid(format!("blob {digest} is {n} bytes, the manifest says {s}")));
                }
            }
            f.sync_all().ctx(|| "syncing blob".into())?;
            std::fs::rename(&tmp, &dest).ctx(|| format!("storing blob {digest}"))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| dest)
    }

    fn read_json(&self, digest: &str) -> Result<serde_json::Value> {
        let p = self.blob_path(digest)?;
        let data = std::fs::read(&p).ctx(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&data).map_err(|e| Error::invalid(format!("blob {digest} is not valid JSON: {e}")))
    }

    /// Imports an OCI image layout folder. Tags the image with `name`, or
    /// with the name its index annotates.
    pub fn import_layout(&mut self, dir: &Path, name: Option<&str>) -> Result<ImageRecord> {
        let index_path = dir.join("index.json");
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&index_path).map_err(|e| Error::invalid(format!("{}: {e}", index_path.display())))?,
        )
        .map_err(|e| Error::invalid(format!("{} is not valid JSON: {e}", index_path.display())))?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let top =
            manifests.first().ok_or_else(|| Error::invalid(format!("{} lists no manifests", index_path.display())))?;
        let annotated = top["annotations"]["io.containerd.image.name"]
            .as_str()
            .or_else(|| top["annotations"]["org.opencontainers.image.ref.name"].as_str());
        let name = name.or(annotated).ok_or_else(|| Error::invalid("the layout names no image; give a name"))?;
        let reference = Reference::parse(name)?;

        let copy = |store: &Self, desc: &serde_json::Value| -> Result<String> {
            let digest =
                desc["digest"].as_str().ok_or_else(|| Error::invalid("descriptor without digest"))?.to_string();
            let src = dir.join("blobs/sha256").join(digest_hex(&digest)?);
            let mut f = std::fs::File::open(&src).map_err(|e| Error::invalid(format!("{}: {e}", src.display())))?;
            store.put_blob(&digest, desc["size"].as_u64(), &mut f)?;
            Ok(digest)
        };
        // Resolve nested indexes down to this node's platform.
        let mut desc = top.clone();
        for _ in 0..4 {
            let media = desc["mediaType"].as_str().unwrap_or("");
            if !INDEX_TYPES.contains(&media) {
                break;
            }
            let d = copy(self, &desc)?;
            let nested = self.read_json(&d)?;
            desc = nested["manifests"]
                .as_array()
                .and_then(|m| {
                    m.iter().find(|x| {
                        x["platform"]["os"].as_str() == Some("linux")
                            && x["platform"]["architecture"].as_str() == Some(host_arch())
                    })
                })
                .cloned()
                .ok_or_else(|| Error::not_found(format!("{name} has no linux/{} image", host_arch())))?;
        }
        let manifest_digest = copy(self, &desc)?;
        let manifest = self.read_json(&manifest_digest)?;
        let config_desc = &manifest["config"];
        copy(self, config_desc)?;
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let mut layer_digests = Vec::new();
        for l in &layers {
            layer_digests.push(copy(self, l)?);
        }
        self.commit(&reference, &manifest_digest, &manifest)
    }

    /// Records an image whose manifest, config and layer blobs are stored:
    /// unpacks missing layer snapshots and moves `reference`'s tag to it.
    pub fn commit(
        &mut self,
        reference: &Reference,
        manifest_digest: &str,
        manifest: &serde_json::Value,
    ) -> Result<ImageRecord> {
        let config_digest =
            manifest["config"]["digest"].as_str().ok_or_else(|| Error::invalid("manifest has no config"))?;
        let config = self.read_json(config_digest)?;
        let mut size = manifest["config"]["size"].as_u64().unwrap_or(0);
        let mut layers = Vec::new();
        for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let d = l["digest"].as_str().ok_or_else(|| Error::invalid("layer without digest"))?.to_string();
            size += l["size"].as_u64().unwrap_or(0);
            let snap = self.snapshot_path(&d)?;
            if !snap.exists() {
                crate::unpack::unpack_layer(&self.blob_path(&d)?, &snap)?;
            }
            layers.push(d);
        }
        let id = config_digest.to_string();
        let mut rec =
            self.images.get(&id).cloned().unwrap_or_else(|| ImageRecord { id: id.clone(), ..Default::default() });
        rec.size = size;
        rec.layers = layers;
        rec.config = config;
        let mut names = BTreeSet::new();
        if let Some(t) = reference.tagged() {
            names.insert(t);
        }
        // A tag names one image: take it from any other.
        let mut changed = Vec::new();
        for other in self.images.values_mut().filter(|o| o.id != id) {
            let before = other.repo_tags.len();
            other.repo_tags.retain(|t| !names.contains(t));
            if other.repo_tags.len() != before {
                changed.push(other.clone());
            }
        }
        for t in names {
            if !rec.repo_tags.contains(&t) {
                rec.repo_tags.push(t);
            }
        }
        let digested = format!("{}@{manifest_digest}", reference.repository());
        if !rec.repo_digests.contains(&digested) {
            rec.repo_digests.push(digested);
        }
        self.records.put(&hex_id(&id), &rec)?;
        for o in changed {
            self.records.put(&hex_id(&o.id), &o)?;
            self.images.insert(o.id.clone(), o);
        }
        self.images.insert(id, rec.clone());
        Ok(rec)
    }

    /// Finds an image by id (full, bare hex, or a unique prefix of 12+), by
    /// a tag or by a digest reference.
    pub fn resolve(&self, name: &str) -> Option<&ImageRecord> {
        if name.is_empty() {
            return None;
        }
        let bare = name.strip_prefix("sha256:").unwrap_or(name);
        if bare.len() >= 12 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = self.images.values().filter(|r| r.id.trim_start_matches("sha256:").starts_with(bare));
            if let (Some(r), None) = (hits.next(), hits.next()) {
                return Some(r);
            }
        }
        let r = Reference::parse(name).ok()?;
        if let Some(d) = r.digested() {
            return self.images.values().find(|i| i.repo_digests.contains(&d));
        }
        let t = r.tagged()?;
        self.images.values().find(|i| i.repo_tags.contains(&t))
    }

    /// Every image.
    pub fn list(&self) -> Vec<ImageRecord> {
        let mut v: Vec<_> = self.images.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Removes an image with all its names, then its blobs and snapshots
    /// that no other image and no container (`in_use` layer digests) needs.
    pub fn remove(&mut self, id: &str, in_use: &BTreeSet<String>) -> Result<()> {
        if self.images.remove(id).is_none() {
            return Ok(());
        }
        self.records.delete(&hex_id(id))?;
        self.gc(in_use);
        Ok(())
    }

    fn gc(&self, in_use: &BTreeSet<String>) {
        let mut keep: BTreeSet<String> = in_use.clone();
        for r in self.images.values() {
            keep.insert(r.id.clone());
            keep.extend(r.layers.iter().cloned());
            for d in &r.repo_digests {
                if let Some((_, m)) = d.split_once('@') {
                    keep.insert(m.to_string());
                }
            }
        }
        let keep_hex: BTreeSet<String> = keep.iter().map(|d| hex_id(d)).collect();
        for dir in [&self.snapshots, &self.blobs] {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                // Index blobs are not named by any record; blobs of a removed
                // image's index go with it. Temp entries belong to a running
                // import and are left alone.
                if name.starts_with(".tmp-") || keep_hex.contains(&name) {
                    continue;
                }
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }

    /// Bytes and inodes used by blobs and snapshots.
    pub fn usage(&self) -> (u64, u64) {
        let (b1, i1) = crate::stats::disk_usage(&self.blobs);
        let (b2, i2) = crate::stats::disk_usage(&self.snapshots);
        (b1 + b2, i1 + i2)
    }

    /// Folder holding the image store, for ImageFsInfo.
    pub fn mountpoint(&self) -> PathBuf {
        self.snapshots.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

fn hex_id(id: &str) -> String {
    id.trim_start_matches("sha256:").to_string()
}
