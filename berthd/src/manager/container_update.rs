//! UpdateContainerResources.
use super::*;

impl Manager {
    /// UpdateContainerResources: new CPU and memory limits for a running
    /// container; the stored config follows, so ContainerStatus shows them.
    /// NRI plugins are asked first and told after.
    pub async fn update_container_resources(&self, id: &str, res: cri::LinuxContainerResources) -> Result<()> {
        let meta = self.container(id)?;
        let running = protocol::nri::ContainerState::CONTAINER_RUNNING;
        let told = super::nri_events::nri_resources(&res);
        self.nri_container_event(protocol::nri::Event::UPDATE_CONTAINER, &meta, running, Some(&told)).await?;
        self.apply_resources(id, res).await?;
        if let Ok(meta) = self.container(id) {
            self.nri_container_event(protocol::nri::Event::POST_UPDATE_CONTAINER, &meta, running, None).await?;
        }
        Ok(())
    }

    /// New resources through the shim, and into the record; no NRI event
    /// (what an NRI plugin asks for comes this way).
    pub(super) async fn apply_resources(&self, id: &str, res: cri::LinuxContainerResources) -> Result<()> {
        let mut meta = self.container(id)?;
        let json = serde_json::to_vec(&spec::resources(&res)?)
            .map_err(|e| Error::internal(format!("encoding resources: {e}")))?;
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        let mut req = api::UpdateRequest::new();
        req.id = id.to_string();
        req.resources = json;
        shim.update(&req).await?;
        failpoint::hit("update-container/applied");
        meta.config.linux.get_or_insert_with(Default::default).resources = Some(res);
        self.container_store.put(id, &meta).await?;
        lock(&self.containers).insert(id.to_string(), meta);
        Ok(())
    }
}
