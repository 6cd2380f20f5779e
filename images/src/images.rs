//! The image store: content-addressed blobs (verified by digest and size),
//! one unpacked snapshot per layer (shared between images), and an image
//! record per config digest with its tags and digests. Shaped for registry
//! pulls: a pull only has to put blobs and call [`ImageStore::commit`].
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext, Result};
use crate::reference::Reference;
use berth_store::{Db, Store};

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
    /// Digest of the platform manifest (the repo digests may name an index).
    #[serde(default)]
    pub manifest: String,
    /// The image config (OCI/Docker JSON).
    pub config: serde_json::Value,
}

const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

impl ImageRecord {
    /// What a container created from this image by the name `asked` reports,
    /// as containerd does: the image as asked (its first repo tag when asked
    /// by id), and a repo digest, of the asked repository when it has one
    /// (the id when it has none).
    pub fn container_names(&self, asked: &str) -> (String, String) {
        let bare = asked.strip_prefix("sha256:").unwrap_or(asked);
        let by_id = bare.len() >= 12
            && bare.bytes().all(|b| b.is_ascii_hexdigit())
            && self.id.trim_start_matches("sha256:").starts_with(bare);
        let reference = if by_id { None } else { Reference::parse(asked).ok() };
        let image = match &reference {
            Some(_) => asked.to_string(),
            None => self.repo_tags.first().or(self.repo_digests.first()).unwrap_or(&self.id).clone(),
        };
        let asked_digest = reference.as_ref().and_then(|r| r.digested()).filter(|d| self.repo_digests.contains(d));
        let same_repo = reference.as_ref().and_then(|r| {
            let prefix = format!("{}@", r.repository());
            self.repo_digests.iter().find(|d| d.starts_with(&prefix)).cloned()
        });
        let image_ref = asked_digest
            .or(same_repo)
            .or_else(|| self.repo_digests.first().cloned())
            .unwrap_or_else(|| self.id.clone());
        (image, image_ref)
    }
}

/// The node's platform, as OCI names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The descriptor in an index that fits this node: linux on its
/// architecture (and variant, where the index gives one for arm).
pub fn select_platform(index: &serde_json::Value) -> Option<&serde_json::Value> {
    let want_variant = match host_arch() {
        "arm64" => Some("v8"),
        _ => None,
    };
    let fits = |x: &&serde_json::Value| {
        let p = &x["platform"];
        p["os"].as_str() == Some("linux")
            && p["architecture"].as_str() == Some(host_arch())
            && match (p["variant"].as_str(), want_variant) {
                (None, _) => true,
                (Some(v), Some(w)) => v == w,
                (Some(_), None) => false,
            }
    };
    index["manifests"].as_array()?.iter().find(fits)
}

/// Checks `sha256:<64 hex>` and returns the hex.
pub fn digest_hex(d: &str) -> Result<&str> {
    let hex = d.strip_prefix("sha256:").ok_or_else(|| ImageError::Invalid(format!("unsupported digest {d:?}")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageError::Invalid(format!("malformed digest {d:?}")));
    }
    Ok(hex)
}

/// Blobs and snapshots on disk, shared by the image store and pulls in
/// flight. A lease keeps a digest from garbage collection while a pull
/// that has not committed its image yet works with it.
pub struct Content {
    blobs: PathBuf,
    snapshots: PathBuf,
    leases: Mutex<HashMap<String, usize>>,
}

/// Holds a digest out of garbage collection until dropped.
pub struct Lease {
    content: Arc<Content>,
    digest: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.content.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = leases.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                leases.remove(&self.digest);
            }
        }
    }
}

impl Content {
    /// Takes a lease on `digest`.
    pub fn lease(self: &Arc<Self>, digest: &str) -> Lease {
        *self.leases.lock().unwrap_or_else(|e| e.into_inner()).entry(digest.to_string()).or_default() += 1;
        Lease { content: self.clone(), digest: digest.to_string() }
    }

    fn leased(&self) -> BTreeSet<String> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Path of a stored blob.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    /// Unpacked folder of a layer.
    pub fn snapshot_path(&self, layer_digest: &str) -> Result<PathBuf> {
        Ok(self.snapshots.join(digest_hex(layer_digest)?))
    }

    /// A fresh temp file name in the blob folder (garbage collection leaves
    /// `.tmp-` names alone; [`TempBlob`] removes them).
    pub fn temp_blob(&self) -> TempBlob {
        TempBlob(self.blobs.join(format!(".tmp-{}", berth_core::ids::new_id())))
    }

    /// Moves a verified temp file into place as `digest`.
    pub fn store_temp(&self, tmp: TempBlob, digest: &str) -> Result<PathBuf> {
        let dest = self.blob_path(digest)?;
        std::fs::rename(&tmp.0, &dest).ctx(|| format!("storing blob {digest}"))?;
        std::mem::forget(tmp);
        Ok(dest)
    }

    /// Copies a blob in from `src`, verifying its digest and size; a blob
    /// already stored is not copied again.
    pub fn put_blob(&self, digest: &str, size: Option<u64>, src: &mut dyn Read) -> Result<PathBuf> {
        let hex = digest_hex(digest)?;
        let dest = self.blobs.join(hex);
        if dest.exists() {
            return Ok(dest);
        }
        let tmp = self.temp_blob();
        let mut f = std::fs::File::create(&tmp.0).ctx(|| format!("creating {}", tmp.0.display()))?;
        let mut check = Verifier::new(digest, size)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let r = src.read(&mut buf).ctx(|| format!("reading blob {digest}"))?;
            if r == 0 {
                break;
            }
            check.update(&buf[..r])?;
            f.write_all(&buf[..r]).ctx(|| format!("writing blob {digest}"))?;
        }
        check.finish()?;
        f.sync_all().ctx(|| "syncing blob".into())?;
        self.store_temp(tmp, digest)
    }

    fn read_json(&self, digest: &str) -> Result<serde_json::Value> {
        let p = self.blob_path(digest)?;
        let data = std::fs::read(&p).ctx(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&data)
            .map_err(|e| ImageError::BadContent(format!("blob {digest} is not valid JSON: {e}")))
    }
}

/// Runs blocking work on a shared image store on a blocking thread, holding
/// the store's lock only for that work.
/// The work's error type is the caller's (it may fail for reasons of its
/// own); a failure of the blocking thread itself is an [`ImageError`].
pub async fn with_store<T: Send + 'static, E: From<ImageError> + Send + 'static>(
    store: &Arc<tokio::sync::Mutex<ImageStore>>,
    work: impl FnOnce(&mut ImageStore) -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, E> {
    run_locked(store.clone().lock_owned().await, work).await
}

/// Runs blocking work on a store whose lock the caller already holds, on a
/// blocking thread; the lock goes when the work ends.
pub async fn run_locked<T: Send + 'static, E: From<ImageError> + Send + 'static>(
    mut guard: tokio::sync::OwnedMutexGuard<ImageStore>,
    work: impl FnOnce(&mut ImageStore) -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, E> {
    tokio::task::spawn_blocking(move || work(&mut guard))
        .await
        .map_err(|e| E::from(ImageError::Internal(format!("image store work: {e}"))))?
}

/// Deletes a blob (a file) or a snapshot (a folder).
fn remove_entry(p: &Path) {
    let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
}

/// Blobs and snapshots taken out of the store by a collection, to delete
/// (a crash before that leaves `.tmp-` names, removed at the next start).
#[derive(Debug, Default)]
#[must_use = "collected entries stay on disk until the trash is emptied"]
pub struct Trash(Vec<PathBuf>);

impl Trash {
    /// Deletes everything in it. Blocks: a snapshot can be many files.
    pub fn empty(self) {
        for p in self.0 {
            remove_entry(&p);
            berth_core::failpoint::hit("remove-image/collecting");
        }
    }

    /// Deletes everything in it on a blocking thread.
    pub async fn discard(self) {
        if !self.0.is_empty() {
            let _ = tokio::task::spawn_blocking(move || self.empty()).await;
        }
    }
}

/// A temp file in the blob folder, removed when dropped unless stored.
pub struct TempBlob(pub PathBuf);

impl Drop for TempBlob {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Checks content against a descriptor's digest and size as it streams by.
pub struct Verifier {
    digest: String,
    size: Option<u64>,
    hasher: Sha256,
    seen: u64,
}

impl Verifier {
    /// Expects `digest` (sha256) and, when known, `size` bytes.
    pub fn new(digest: &str, size: Option<u64>) -> Result<Self> {
        digest_hex(digest)?;
        Ok(Verifier { digest: digest.to_string(), size, hasher: Sha256::new(), seen: 0 })
    }

    /// Feeds bytes; fails as soon as there are more than the size.
    pub fn update(&mut self, data: &[u8]) -> Result<()> {
        self.seen += data.len() as u64;
        if let Some(s) = self.size.filter(|s| self.seen > *s) {
            return Err(ImageError::BadContent(format!(
                "blob {} is longer than the {s} bytes its descriptor says",
                self.digest
            )));
        }
        self.hasher.update(data);
        Ok(())
    }

    /// Checks the digest and the size.
    pub fn finish(self) -> Result<()> {
        if let Some(s) = self.size.filter(|s| self.seen != *s) {
            return Err(ImageError::BadContent(format!(
                "blob {} is {} bytes, its descriptor says {s}",
                self.digest, self.seen
            )));
        }
        let got = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if got != self.digest {
            return Err(ImageError::BadContent(format!("blob {} has digest {got}: content is damaged", self.digest)));
        }
        Ok(())
    }
}

/// The image store under `<root>/images`.
pub struct ImageStore {
    content: Arc<Content>,
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
        let content = Arc::new(Content { blobs, snapshots, leases: Mutex::new(HashMap::new()) });
        Ok(ImageStore { content, records, images })
    }

    /// The blobs and snapshots.
    pub fn content(&self) -> &Arc<Content> {
        &self.content
    }

    /// Unpacked folder of a layer.
    pub fn snapshot_path(&self, layer_digest: &str) -> Result<PathBuf> {
        self.content.snapshot_path(layer_digest)
    }

    /// Imports an OCI image layout folder. Tags the image with `name`, or
    /// with the name its index annotates.
    pub fn import_layout(&mut self, dir: &Path, name: Option<&str>) -> Result<ImageRecord> {
        let index_path = dir.join("index.json");
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&index_path).map_err(|e| ImageError::Invalid(format!("{}: {e}", index_path.display())))?,
        )
        .map_err(|e| ImageError::Invalid(format!("{} is not valid JSON: {e}", index_path.display())))?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let top = manifests
            .first()
            .ok_or_else(|| ImageError::Invalid(format!("{} lists no manifests", index_path.display())))?;
        let annotated = top["annotations"]["io.containerd.image.name"]
            .as_str()
            .or_else(|| top["annotations"]["org.opencontainers.image.ref.name"].as_str());
        let name =
            name.or(annotated).ok_or_else(|| ImageError::Invalid("the layout names no image; give a name".into()))?;
        let reference = Reference::parse(name)?;

        let copy = |store: &Self, desc: &serde_json::Value| -> Result<String> {
            let digest = desc["digest"]
                .as_str()
                .ok_or_else(|| ImageError::Invalid("descriptor without digest".into()))?
                .to_string();
            let src = dir.join("blobs/sha256").join(digest_hex(&digest)?);
            let mut f =
                std::fs::File::open(&src).map_err(|e| ImageError::Invalid(format!("{}: {e}", src.display())))?;
            store.content.put_blob(&digest, desc["size"].as_u64(), &mut f)?;
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
            let nested = self.content.read_json(&d)?;
            desc = select_platform(&nested)
                .cloned()
                .ok_or_else(|| ImageError::NotFound(format!("{name} has no linux/{} image", host_arch())))?;
        }
        let manifest_digest = copy(self, &desc)?;
        let manifest = self.content.read_json(&manifest_digest)?;
        let config_desc = &manifest["config"];
        copy(self, config_desc)?;
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let mut layer_digests = Vec::new();
        for l in &layers {
            layer_digests.push(copy(self, l)?);
        }
        let top_digest = top["digest"].as_str().unwrap_or(&manifest_digest).to_string();
        for l in &layer_digests {
            let snap = self.content.snapshot_path(l)?;
            if !snap.exists() {
                crate::unpack::unpack_layer(&self.content.blob_path(l)?, &snap)?;
            }
        }
        self.commit(&reference, &top_digest, &manifest_digest, &manifest)
    }

    /// Records an image whose manifest, config and layer snapshots are
    /// stored, and moves `reference`'s tag to it. `top_digest` is what the
    /// reference resolved to (an index, or the manifest itself).
    pub fn commit(
        &mut self,
        reference: &Reference,
        top_digest: &str,
        manifest_digest: &str,
        manifest: &serde_json::Value,
    ) -> Result<ImageRecord> {
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| ImageError::BadContent("manifest has no config".into()))?;
        let config = self.content.read_json(config_digest)?;
        let mut size = manifest["config"]["size"].as_u64().unwrap_or(0);
        let mut layers = Vec::new();
        for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let d =
                l["digest"].as_str().ok_or_else(|| ImageError::BadContent("layer without digest".into()))?.to_string();
            size += l["size"].as_u64().unwrap_or(0);
            if !self.content.snapshot_path(&d)?.exists() {
                return Err(ImageError::Internal(format!("layer {d} is not unpacked")));
            }
            layers.push(d);
        }
        let id = config_digest.to_string();
        let mut rec =
            self.images.get(&id).cloned().unwrap_or_else(|| ImageRecord { id: id.clone(), ..Default::default() });
        rec.size = size;
        rec.layers = layers;
        rec.config = config;
        rec.manifest = manifest_digest.to_string();
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
        let digested = format!("{}@{top_digest}", reference.repository());
        if !rec.repo_digests.contains(&digested) {
            rec.repo_digests.push(digested);
        }
        // One transaction: a tag moved to this image is never on both, or
        // on neither, whatever stops berthd.
        let mut writes: Vec<(String, &ImageRecord)> = vec![(hex_id(&id), &rec)];
        writes.extend(changed.iter().map(|o| (hex_id(&o.id), o)));
        self.records.put_all_blocking(&writes)?;
        for o in changed {
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

    /// Removes an image with all its names, and moves its blobs and
    /// snapshots that no other image and no container (`in_use` layer
    /// digests) needs to the returned [`Trash`]. Blocks (a commit).
    pub fn remove(&mut self, id: &str, in_use: &BTreeSet<String>) -> Result<Trash> {
        if self.images.remove(id).is_none() {
            return Ok(Trash::default());
        }
        self.records.delete_blocking(&hex_id(id))?;
        berth_core::failpoint::hit("remove-image/recorded");
        Ok(self.collect(in_use))
    }

    /// Whether every one of `layers` belongs to some image.
    pub fn holds_layers(&self, layers: &[String]) -> bool {
        layers.iter().all(|l| self.images.values().any(|r| r.layers.contains(l)))
    }

    /// Moves blobs and snapshots that no image, no container (`in_use`
    /// layer digests) and no pull in flight needs out of the way (a rename
    /// each, to a `.tmp-gc-` name): from here a pull that needs one again
    /// fetches it anew. Deleting them is the returned [`Trash`]'s work, done
    /// without the store lock.
    pub fn collect(&self, in_use: &BTreeSet<String>) -> Trash {
        let mut keep: BTreeSet<String> = in_use.clone();
        keep.extend(self.content.leased());
        for r in self.images.values() {
            keep.insert(r.id.clone());
            keep.insert(r.manifest.clone());
            keep.extend(r.layers.iter().cloned());
            for d in &r.repo_digests {
                if let Some((_, m)) = d.split_once('@') {
                    keep.insert(m.to_string());
                }
            }
        }
        let keep_hex: BTreeSet<String> = keep.iter().map(|d| hex_id(d)).collect();
        let mut trash = Trash::default();
        for dir in [&self.content.snapshots, &self.content.blobs] {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                // Temp entries belong to a running import or pull and are
                // left alone.
                if name.starts_with(".tmp-") || keep_hex.contains(&name) {
                    continue;
                }
                let gone = dir.join(format!(".tmp-gc-{}", berth_core::ids::new_id()));
                if std::fs::rename(e.path(), &gone).is_ok() {
                    trash.0.push(gone);
                }
            }
        }
        trash
    }

    /// Removes the temp entries of imports and pulls (only at start, when
    /// none is running: at any other time they are in use).
    pub fn clean_temp(&self) {
        for dir in [&self.content.snapshots, &self.content.blobs] {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    remove_entry(&e.path());
                }
            }
        }
    }

    /// The folders whose usage ImageFsInfo reports: blobs and snapshots.
    pub fn usage_dirs(&self) -> Vec<PathBuf> {
        vec![self.content.blobs.clone(), self.content.snapshots.clone()]
    }
}

fn hex_id(id: &str) -> String {
    id.trim_start_matches("sha256:").to_string()
}
