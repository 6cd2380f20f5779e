//! RemoveContainer: stopped, deleted in the runtime, its files and record
//! removed.
use super::*;

impl Manager {
    /// RemoveContainer: forcibly, as CRI asks; idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(meta) = absent_ok(self.container(id))? else { return Ok(()) };
        if meta.phase != Phase::Removing {
            let mut m = meta.clone();
            m.phase = Phase::Removing;
            self.container_store.put(id, &m).await?;
            lock(&self.containers).insert(id.to_string(), m);
        }
        failpoint::hit("remove-container/recorded");
        self.stop_container(id, 0).await?;
        failpoint::hit("remove-container/stopped");
        // A failed delete keeps the record (Removing): the retry finishes it.
        self.delete_in_shim(&meta).await.map_err(|e| e.context(format!("removing container {id}")))?;
        failpoint::hit("remove-container/deleted");
        self.unmount_bundle(&meta.bundle)?;
        remove_trees(vec![meta.bundle.clone(), self.cfg.root.join("containers").join(id)]).await;
        failpoint::hit("remove-container/files-removed");
        self.container_store.delete(id).await?;
        lock(&self.containers).remove(id);
        self.cpu_rates.forget(id);
        self.usage.forget(&self.upper_dir(id));
        self.release(&container_key(&meta.sandbox_id, &meta.config.metadata.clone().unwrap_or_default()));
        // Layers of an image removed while this container ran go now (only
        // then: a collection walks the whole store).
        if !self.images.lock().await.holds_layers(&meta.layers) {
            if let Ok(trash) = self.with_image_store_in_use(|store, in_use| Ok(store.collect(in_use))).await {
                trash.discard().await;
            }
        }
        info!(self.log, "container removed"; "container_id" => id, "sandbox_id" => &meta.sandbox_id);
        self.nri_stopped.lock().await.remove(id);
        let gone = protocol::nri::ContainerState::CONTAINER_STOPPED;
        self.nri_container_event(protocol::nri::Event::REMOVE_CONTAINER, &meta, gone, None).await?;
        self.emit(&meta.sandbox_id, id, cri::ContainerEventType::ContainerDeletedEvent).await;
        Ok(())
    }

    /// With the shim gone, the OCI runtime may still hold the container.
    pub(super) async fn force_delete_in_runtime(&self, id: &str) {
        self.host.oci_runtime(&["delete", "--force", id]).await;
    }
}
