//! StopContainer: the stop signal, the grace period, then SIGKILL.
use super::*;

impl Manager {
    /// StopContainer: the stop signal, then SIGKILL after `timeout` seconds.
    /// NRI plugins are told once the container is stopped (once each).
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        self.stop_in_shim(id, timeout).await?;
        self.nri_tell_stopped(id).await
    }

    /// Tells NRI plugins a container stopped, once: from StopContainer, or
    /// from its exit (whichever comes first).
    pub(super) async fn nri_tell_stopped(&self, id: &str) -> Result<()> {
        let event = protocol::nri::Event::STOP_CONTAINER;
        if !self.nri.wants(event) {
            return Ok(());
        }
        let Ok(meta) = self.container(id) else { return Ok(()) };
        let mut told = self.nri_stopped.lock().await;
        if told.insert(id.to_string()) {
            let stopped = protocol::nri::ContainerState::CONTAINER_STOPPED;
            self.nri_container_event(event, &meta, stopped, None).await?;
        }
        Ok(())
    }

    async fn stop_in_shim(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(meta) = absent_ok(self.container(id))? else { return Ok(()) };
        let st = self.runtime_state(&meta).await;
        if st.reason == "ShimNotAnswering" {
            // Stopped is what the shim or runc confirms, never a guess.
            return Err(Error::new(Kind::Unavailable, format!("container {id} cannot be stopped now: {}", st.message)));
        }
        if st.state != cri::ContainerState::ContainerRunning as i32 {
            return Ok(());
        }
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        if timeout > 0 {
            shim.kill(id, meta.stop_signal, false).await?;
            failpoint::hit("stop-container/signalled");
            if shim.wait(id, client_seconds(timeout)).await? {
                info!(self.log, "container stopped"; "container_id" => id, "signal" => meta.stop_signal);
                return Ok(());
            }
        }
        shim.kill(id, libc::SIGKILL, true).await?;
        if !shim.wait(id, KILL_WAIT).await? {
            return Err(Error::new(
                Kind::DeadlineExceeded,
                format!("container {id} did not stop within {}s of SIGKILL", KILL_WAIT.as_secs()),
            ));
        }
        info!(self.log, "container killed"; "container_id" => id);
        Ok(())
    }
}
