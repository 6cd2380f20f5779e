//! StartContainer.
use super::*;

impl Manager {
    /// StartContainer.
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let meta = self.container(id)?;
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        failpoint::hit("start-container/before-start");
        shim.start(id).await?;
        self.watch_exit(&meta.sandbox_id, id);
        info!(self.log, "container started"; "container_id" => id, "sandbox_id" => &meta.sandbox_id);
        self.emit(&meta.sandbox_id, id, cri::ContainerEventType::ContainerStartedEvent).await;
        Ok(())
    }
}
