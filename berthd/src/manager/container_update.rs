//! UpdateContainerResources.
use super::*;

impl Manager {
    /// UpdateContainerResources: new CPU and memory limits for a running
    /// container; the stored config follows, so ContainerStatus shows them.
    pub async fn update_container_resources(&self, id: &str, res: cri::LinuxContainerResources) -> Result<()> {
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
