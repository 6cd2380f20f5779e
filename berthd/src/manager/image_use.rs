//! The image service as the CRI edge sees it (pull, list, status, remove,
//! registry settings), and images as containers use them: the layers in
//! use, and store work that must see them under the store's lock
//! (RemoveImage, garbage collection).
use super::*;

impl Manager {
    /// Starts (or joins) the pull of `reference` with `creds`.
    pub fn pull(
        &self,
        reference: &berth_images::reference::Reference,
        creds: Option<berth_images::registry::Credentials>,
    ) -> berth_images::pull::PullHandle {
        self.puller.start(reference, creds)
    }

    /// Registry settings for pulls from now on (SIGHUP); pulls running keep
    /// theirs.
    pub fn set_registry_config(&self, config: berth_images::registry_config::FileConfig) {
        self.puller.set_config(config);
    }

    /// The image `name` (id, id prefix, tag or digest) names, if any.
    pub async fn image(&self, name: &str) -> Option<berth_images::images::ImageRecord> {
        self.images.lock().await.resolve(name).cloned()
    }

    /// Every image.
    pub async fn images(&self) -> Vec<berth_images::images::ImageRecord> {
        self.images.lock().await.list()
    }

    /// Layer digests the containers use (kept when their images go).
    pub fn layers_in_use(&self) -> BTreeSet<String> {
        lock(&self.containers).values().flat_map(|c| c.layers.iter().cloned()).collect()
    }

    /// Runs blocking work on the image store (commits, renames, walks) on a
    /// blocking thread, holding the store's lock only for that work.
    pub async fn with_image_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut ImageStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        berth_images::images::with_store(&self.images, work).await
    }

    /// As [`Self::with_image_store`], with the layers containers use taken
    /// under the store's lock: CreateContainer marks its layers in use
    /// under that lock, so a collection never takes a layer from a
    /// container being created.
    pub(super) async fn with_image_store_in_use<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut ImageStore, &BTreeSet<String>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let guard = self.images.clone().lock_owned().await;
        let in_use = self.layers_in_use();
        berth_images::images::run_locked(guard, move |store| work(store, &in_use)).await
    }

    /// RemoveImage: the image and its names go; its blobs and snapshots
    /// that no other image and no container needs are deleted after the
    /// store lock is let go, so other image calls go on meanwhile.
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        let trash = self
            .with_image_store_in_use(move |store, in_use| match store.resolve(&name).map(|r| r.id.clone()) {
                Some(id) => Ok(store.remove(&id, in_use)?),
                None => Ok(Default::default()),
            })
            .await?;
        trash.discard().await;
        Ok(())
    }
}
