//! Image pulls from registries. A pull resolves its reference through the
//! configured endpoints (mirrors first, then the registry unless skipped),
//! picks this node's platform from an index, fetches and verifies every
//! blob (layers in parallel; a layer already stored, or being fetched by
//! another pull, is not fetched again), unpacks each layer into its
//! snapshot and records the image.
//!
//! The same pull asked for twice at once runs once. A pull nobody waits for
//! any more (its clients went away or ran out of time) is dropped, which
//! stops its downloads and removes their temp files; until it commits, no
//! image is listed.
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use futures::{StreamExt, TryStreamExt};
use slog::{info, warn, Logger};
use tokio::io::AsyncWriteExt;

use crate::error::{ImageError, IoContext, Result};
use crate::images::{select_platform, Content, ImageRecord, ImageStore, Lease, Verifier};
use crate::reference::Reference;
use crate::registry::{http_client, Credentials, Session};
use crate::registry_config::FileConfig;

/// Layers fetched at once per pull (containerd's default is 3 too).
const PARALLEL_LAYERS: usize = 3;
/// Largest image config read into memory.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

type PullFuture = Shared<BoxFuture<'static, Result<ImageRecord>>>;
type LayerFuture = Shared<BoxFuture<'static, Result<()>>>;

/// Where one layer of a pull is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerState {
    /// Not started.
    #[default]
    Waiting,
    /// Bytes are arriving.
    Downloading,
    /// Stored and verified; being unpacked.
    Unpacking,
    /// Unpacked (now or before this pull).
    Done,
}

impl LayerState {
    /// Lowercase name, as berthctl shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerState::Waiting => "waiting",
            LayerState::Downloading => "downloading",
            LayerState::Unpacking => "unpacking",
            LayerState::Done => "done",
        }
    }
}

/// Progress of one layer.
#[derive(Clone, Debug, Default)]
pub struct LayerProgress {
    /// Layer digest.
    pub digest: String,
    /// Bytes to fetch (compressed).
    pub size: u64,
    /// Bytes fetched so far.
    pub done: u64,
    /// State.
    pub state: LayerState,
}

struct PullEntry {
    future: WeakShared<BoxFuture<'static, Result<ImageRecord>>>,
    layers: Arc<Mutex<Vec<(String, u64)>>>,
}

/// What a pull reports as it goes (berthd counts it in its metrics).
pub trait PullObserver: Send + Sync {
    /// Bytes of a blob arrived from a registry.
    fn pulled_bytes(&self, n: u64);
    /// One pull finished, well or not, after `seconds`.
    fn observe_pull(&self, ok: bool, seconds: f64);
}

/// Runs pulls for berthd.
pub struct Puller {
    /// Registry settings; SIGHUP replaces them (pulls running keep theirs).
    config: std::sync::RwLock<Arc<FileConfig>>,
    store: Arc<tokio::sync::Mutex<ImageStore>>,
    content: Arc<Content>,
    clients: Mutex<HashMap<Option<PathBuf>, reqwest::Client>>,
    pulls: Mutex<HashMap<String, PullEntry>>,
    layers: Mutex<HashMap<String, WeakShared<BoxFuture<'static, Result<()>>>>>,
    progress: Mutex<HashMap<String, LayerProgress>>,
    metrics: Arc<dyn PullObserver>,
    /// Admission: images pulled at once; more wait their turn (a node that
    /// starts many pods must not open hundreds of downloads).
    admitted: tokio::sync::Semaphore,
    log: Logger,
}

/// Images pulled at once (containerd downloads 3 layers at a time; kubelet
/// pulls one image at a time unless told otherwise).
pub const MAX_CONCURRENT_PULLS: usize = 3;

/// A pull in flight, shared with every other caller of the same pull.
pub struct PullHandle {
    future: PullFuture,
    layers: Arc<Mutex<Vec<(String, u64)>>>,
    puller: Arc<Puller>,
}

impl PullHandle {
    /// Waits for the image (dropping the wait gives this caller's share of
    /// the pull up).
    pub fn wait(&self) -> PullFuture {
        self.future.clone()
    }

    /// Each layer's progress, once the manifest is read.
    pub fn progress(&self) -> Vec<LayerProgress> {
        let layers = lock(&self.layers).clone();
        let live = lock(&self.puller.progress);
        layers
            .into_iter()
            .map(|(digest, size)| match live.get(&digest) {
                Some(p) => p.clone(),
                None => {
                    let done = self.puller.content.snapshot_path(&digest).is_ok_and(|p| p.exists());
                    let state = if done { LayerState::Done } else { LayerState::Waiting };
                    LayerProgress { digest, size, done: if done { size } else { 0 }, state }
                }
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a layer's live progress when its fetch ends or is dropped.
struct ProgressGuard<'a> {
    progress: &'a Mutex<HashMap<String, LayerProgress>>,
    digest: String,
}

impl ProgressGuard<'_> {
    fn update(&self, f: impl FnOnce(&mut LayerProgress)) {
        if let Some(p) = lock(self.progress).get_mut(&self.digest) {
            f(p);
        }
    }
}

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        lock(self.progress).remove(&self.digest);
    }
}

impl Puller {
    /// A puller with the registry settings of berthd's config file.
    pub fn new(
        config: FileConfig,
        store: Arc<tokio::sync::Mutex<ImageStore>>,
        content: Arc<Content>,
        metrics: Arc<dyn PullObserver>,
        log: Logger,
    ) -> Self {
        Puller {
            config: std::sync::RwLock::new(Arc::new(config)),
            store,
            content,
            clients: Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            layers: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            metrics,
            admitted: tokio::sync::Semaphore::new(MAX_CONCURRENT_PULLS),
            log,
        }
    }

    /// Replaces the registry settings (on SIGHUP); clients built for the old
    /// CA files are dropped.
    pub fn set_config(&self, config: FileConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        lock(&self.clients).clear();
    }

    /// Starts pulling `reference`, or joins the same pull already running.
    pub fn start(self: &Arc<Self>, reference: &Reference, creds: Option<Credentials>) -> PullHandle {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        creds.hash(&mut h);
        // Different credentials are different pulls: one client's bad
        // password must not fail (or succeed) another's.
        let key = format!("{reference:?}#{:x}", h.finish());
        let mut pulls = lock(&self.pulls);
        pulls.retain(|_, e| e.future.upgrade().is_some());
        if let Some(e) = pulls.get(&key) {
            if let Some(future) = e.future.upgrade() {
                return PullHandle { future, layers: e.layers.clone(), puller: self.clone() };
            }
        }
        let layers = Arc::new(Mutex::new(Vec::new()));
        let future = self.clone().run(reference.clone(), creds, layers.clone()).boxed().shared();
        if let Some(weak) = future.downgrade() {
            pulls.insert(key, PullEntry { future: weak, layers: layers.clone() });
        }
        PullHandle { future, layers, puller: self.clone() }
    }

    fn client(&self, ca: Option<&PathBuf>) -> Result<reqwest::Client> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(&ca.cloned()) {
            return Ok(c.clone());
        }
        let c = http_client(ca)?;
        clients.insert(ca.cloned(), c.clone());
        Ok(c)
    }

    async fn run(
        self: Arc<Self>,
        reference: Reference,
        creds: Option<Credentials>,
        layers_out: Arc<Mutex<Vec<(String, u64)>>>,
    ) -> Result<ImageRecord> {
        let name = reference.digested().or_else(|| reference.tagged()).unwrap_or_else(|| reference.repository());
        let _admitted = self.admitted.acquire().await.map_err(|_| ImageError::ShuttingDown)?;
        let started = Instant::now();
        let wanted = reference.digest.clone().or_else(|| reference.tag.clone()).unwrap_or_else(|| "latest".into());
        let endpoints = self.config.read().unwrap_or_else(|e| e.into_inner()).endpoints(&reference.domain);
        let mut attempts: Vec<(String, ImageError)> = Vec::new();
        for ep in endpoints {
            let what = if ep.mirror { "mirror" } else { "registry" };
            let url = ep.base_url.clone();
            // The request's credentials are for the image's registry; a
            // mirror is another party and does not get them.
            let session_creds = if ep.mirror { None } else { creds.clone() };
            let session = Arc::new(Session::new(self.client(ep.ca.as_ref())?, ep, &reference.path, session_creds));
            match self.pull_from(&session, &reference, &wanted, &layers_out).await {
                Ok(rec) => {
                    info!(self.log, "image pulled"; "image" => &name, "image_id" => &rec.id, "from" => &url,
                          "elapsed_ms" => u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
                    self.metrics.observe_pull(true, started.elapsed().as_secs_f64());
                    return Ok(rec);
                }
                Err(e) => {
                    warn!(self.log, "pull attempt failed"; "image" => &name, "from" => &url, "error" => %e);
                    attempts.push((format!("{what} {url}"), e));
                }
            }
        }
        self.metrics.observe_pull(false, started.elapsed().as_secs_f64());
        Err(ImageError::PullFailed { image: name, attempts })
    }

    async fn pull_from(
        self: &Arc<Self>,
        session: &Arc<Session>,
        reference: &Reference,
        wanted: &str,
        layers_out: &Mutex<Vec<(String, u64)>>,
    ) -> Result<ImageRecord> {
        let top = session.manifest(wanted).await?;
        let mut leases: Vec<Lease> = vec![self.content.lease(&top.digest)];
        self.put_small(&top.digest, &top.bytes).await?;
        let (manifest_digest, manifest_bytes) = if INDEX_TYPES.contains(&top.media_type.as_str()) {
            let index = parse_json(&top.bytes, "index")?;
            let desc = select_platform(&index).ok_or_else(|| {
                let have: Vec<String> = index["manifests"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .map(|d| {
                                let p = &d["platform"];
                                format!(
                                    "{}/{}",
                                    p["os"].as_str().unwrap_or("?"),
                                    p["architecture"].as_str().unwrap_or("?")
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ImageError::NotFound(format!(
                    "the image has no linux/{} variant (it has: {})",
                    crate::images::host_arch(),
                    have.join(", ")
                ))
            })?;
            let digest =
                desc["digest"].as_str().ok_or_else(|| ImageError::BadContent("index entry has no digest".into()))?;
            leases.push(self.content.lease(digest));
            let m = session.manifest(digest).await?;
            if desc["size"].as_u64().is_some_and(|s| s != m.bytes.len() as u64) {
                return Err(ImageError::BadContent(format!("manifest {digest} is not the size its index says")));
            }
            if INDEX_TYPES.contains(&m.media_type.as_str()) {
                return Err(ImageError::BadContent(format!("index entry {digest} is another index")));
            }
            self.put_small(&m.digest, &m.bytes).await?;
            (m.digest, m.bytes)
        } else {
            (top.digest.clone(), top.bytes.clone())
        };
        let (manifest, config, layers) =
            parse_manifest(&manifest_bytes).map_err(|e| e.context(format!("manifest {manifest_digest}")))?;
        leases.push(self.content.lease(&config.0));
        if config.1 > MAX_CONFIG_BYTES {
            return Err(ImageError::BadContent(format!("image config is {} bytes, more than Berth reads", config.1)));
        }
        if !self.content.blob_path(&config.0)?.exists() {
            let bytes = self.fetch_small(session, &config.0, config.1).await?;
            self.put_small(&config.0, &bytes).await?;
        }
        for d in &layers {
            leases.push(self.content.lease(&d.0));
        }
        *lock(layers_out) = layers.clone();
        let fetches: Vec<LayerFuture> =
            layers.iter().map(|(d, size)| self.layer(session.clone(), d.clone(), *size)).collect();
        futures::stream::iter(fetches).buffer_unordered(PARALLEL_LAYERS).try_collect::<Vec<()>>().await?;
        berth_core::failpoint::hit("pull-image/layers-unpacked");
        let (reference, top_digest) = (reference.clone(), top.digest.clone());
        let rec = crate::images::with_store(&self.store, move |store| {
            store.commit(&reference, &top_digest, &manifest_digest, &manifest)
        })
        .await?;
        drop(leases);
        Ok(rec)
    }

    /// The fetch of one layer, shared by every pull that needs it now.
    fn layer(self: &Arc<Self>, session: Arc<Session>, digest: String, size: u64) -> LayerFuture {
        let mut layers = lock(&self.layers);
        layers.retain(|_, w| w.upgrade().is_some());
        if let Some(f) = layers.get(&digest).and_then(WeakShared::upgrade) {
            return f;
        }
        let me = self.clone();
        let d = digest.clone();
        let f = async move { me.fetch_layer(&session, &d, size).await }.boxed().shared();
        if let Some(w) = f.downgrade() {
            layers.insert(digest, w);
        }
        f
    }

    async fn fetch_layer(&self, session: &Session, digest: &str, size: u64) -> Result<()> {
        let snap = self.content.snapshot_path(digest)?;
        if snap.exists() {
            return Ok(());
        }
        lock(&self.progress).insert(
            digest.to_string(),
            LayerProgress { digest: digest.to_string(), size, done: 0, state: LayerState::Waiting },
        );
        let progress = ProgressGuard { progress: &self.progress, digest: digest.to_string() };
        let blob = self.content.blob_path(digest)?;
        if !blob.exists() {
            progress.update(|p| p.state = LayerState::Downloading);
            let mut body = BlobBody::open(session, digest, size).await?;
            let tmp = self.content.temp_blob();
            let file = tokio::fs::File::create(&tmp.0).await.ctx(|| format!("creating {}", tmp.0.display()))?;
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let write_err = |e: std::io::Error| ImageError::Io {
                what: format!("writing layer {digest}"),
                source: std::sync::Arc::new(e),
            };
            while let Some(chunk) = body.chunk().await? {
                out.write_all(&chunk).await.map_err(write_err)?;
                progress.update(|p| p.done += chunk.len() as u64);
                self.metrics.pulled_bytes(chunk.len() as u64);
            }
            out.flush().await.map_err(write_err)?;
            out.into_inner().sync_all().await.map_err(write_err)?;
            self.content.store_temp(tmp, digest)?;
            berth_core::failpoint::hit("pull-image/blob-stored");
        }
        progress.update(|p| {
            p.done = p.size;
            p.state = LayerState::Unpacking;
        });
        let (b, s) = (blob.clone(), snap);
        let unpacked = tokio::task::spawn_blocking(move || crate::unpack::unpack_layer(&b, &s))
            .await
            .map_err(|e| ImageError::Internal(format!("unpacking layer {digest}: {e}")))?;
        if let Err(e) = unpacked {
            // The blob matches its digest but is not a usable layer: keep
            // nothing of it, so a retry does not trust it.
            let _ = std::fs::remove_file(&blob);
            return Err(e.context(format!("layer {digest}")));
        }
        Ok(())
    }

    async fn fetch_small(&self, session: &Session, digest: &str, size: u64) -> Result<Vec<u8>> {
        let mut body = BlobBody::open(session, digest, size).await?;
        let mut out = Vec::with_capacity(usize::try_from(size.min(MAX_CONFIG_BYTES)).unwrap_or(0));
        while let Some(chunk) = body.chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Stores a manifest, index or config (written and fsynced on a
    /// blocking thread).
    async fn put_small(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let (content, digest, bytes) = (self.content.clone(), digest.to_string(), bytes.to_vec());
        tokio::task::spawn_blocking(move || {
            content.put_blob(&digest, Some(bytes.len() as u64), &mut &bytes[..]).map(|_| ())
        })
        .await
        .map_err(|e| ImageError::Internal(format!("storing a blob: {e}")))?
    }
}

/// A blob's body as it arrives, checked against its digest and size: a
/// chunk is handed out only once it fits, and the end only once it all did.
struct BlobBody<'a> {
    session: &'a Session,
    digest: &'a str,
    resp: reqwest::Response,
    check: Option<Verifier>,
}

impl<'a> BlobBody<'a> {
    async fn open(session: &'a Session, digest: &'a str, size: u64) -> Result<Self> {
        let check = Some(Verifier::new(digest, Some(size))?);
        Ok(BlobBody { session, digest, resp: session.blob(digest).await?, check })
    }

    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        let chunk = self.resp.chunk().await.map_err(|e| {
            let host = &self.session.endpoint.host;
            ImageError::Unreachable(format!("registry {host}: reading {}: {e}", self.digest))
        })?;
        match (chunk, self.check.take()) {
            (Some(c), Some(mut check)) => {
                check.update(&c)?;
                self.check = Some(check);
                Ok(Some(c))
            }
            (None, Some(check)) => check.finish().map(|()| None),
            (_, None) => Ok(None),
        }
    }
}

fn parse_json(bytes: &[u8], what: &str) -> Result<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::BadContent(format!("{what} is not valid JSON: {e}")))
}

/// A descriptor as a manifest gives it: a digest (checked) and a size.
pub type Descriptor = (String, u64);

/// A platform manifest: its JSON, its config descriptor and its layer
/// descriptors, checked as far as the bytes tell.
pub fn parse_manifest(bytes: &[u8]) -> Result<(serde_json::Value, Descriptor, Vec<Descriptor>)> {
    let manifest = parse_json(bytes, "manifest")?;
    if manifest["schemaVersion"].as_i64() != Some(2) {
        return Err(ImageError::BadContent(format!(
            "schemaVersion {} (Docker schema 1 is not supported)",
            manifest["schemaVersion"]
        )));
    }
    let config = descriptor(&manifest["config"])?;
    let mut layers = Vec::new();
    for l in manifest["layers"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let media = l["mediaType"].as_str().unwrap_or("");
        if !LAYER_TYPES.contains(&media) {
            return Err(ImageError::BadContent(format!("layer media type {media:?} is not supported")));
        }
        layers.push(descriptor(l)?);
    }
    Ok((manifest, config, layers))
}

fn descriptor(d: &serde_json::Value) -> Result<(String, u64)> {
    let digest = d["digest"].as_str().ok_or_else(|| ImageError::BadContent("descriptor without digest".into()))?;
    crate::images::digest_hex(digest)?;
    let size = d["size"].as_u64().ok_or_else(|| ImageError::BadContent(format!("descriptor {digest} has no size")))?;
    Ok((digest.to_string(), size))
}
