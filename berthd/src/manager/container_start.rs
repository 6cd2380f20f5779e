//! StartContainer.
use super::*;

impl Manager {
    /// StartContainer.
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let mut steps = crate::step_times::StepTimes::start();
        let meta = self.container(id)?;
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        let (created, running) =
            (protocol::nri::ContainerState::CONTAINER_CREATED, protocol::nri::ContainerState::CONTAINER_RUNNING);
        self.nri_container_event(protocol::nri::Event::START_CONTAINER, &meta, created, None).await?;
        steps.mark("nri");
        failpoint::hit("start-container/before-start");
        if let Err(e) = shim.start(id).await {
            // A runtime that could not create it ended it (StartError):
            // event watchers learn of that state as of any other exit.
            if shim.state(id).await.is_ok_and(|s| s.start_failed) {
                self.emit(&meta.sandbox_id, id, cri::ContainerEventType::ContainerStoppedEvent).await;
            }
            return Err(e.into());
        }
        // The shim's Start: `runc create` (deferred from CreateContainer),
        // then `runc start`.
        steps.mark("runtime");
        info!(self.log, "container started"; "container_id" => id, "sandbox_id" => &meta.sandbox_id,
              "steps_ms" => %steps);
        self.emit(&meta.sandbox_id, id, cri::ContainerEventType::ContainerStartedEvent).await;
        let told = self.nri_container_event(protocol::nri::Event::POST_START_CONTAINER, &meta, running, None).await;
        // Only now: a container that exits at once is told stopped after it
        // was told started (the shim keeps the exit for a late waiter).
        self.watch_exit(&meta.sandbox_id, id);
        told
    }
}
