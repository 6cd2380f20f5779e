//! Exec, attach, port-forward and logs: ExecSync, the targets the streaming
//! server is sent to, ReopenContainerLog.
use super::*;

impl Manager {
    /// ExecSync. A command still running at `timeout` seconds is killed and
    /// the call fails with DeadlineExceeded.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<cri::ExecSyncResponse> {
        if cmd.is_empty() {
            return Err(Error::invalid("exec needs a command"));
        }
        let meta = self.container(id)?;
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        let mut req = api::ExecSyncRequest::new();
        req.id = id.to_string();
        req.args = cmd.clone();
        req.timeout_ms = timeout.clamp(0, MAX_CLIENT_SECONDS) * 1000;
        // The shim enforces the timeout; the call's own deadline only guards
        // against a shim that stops answering.
        let deadline = (timeout > 0).then(|| client_seconds(timeout) + CALL_TIMEOUT);
        let resp = shim.exec_sync(&req, deadline).await?;
        if resp.timed_out {
            return Err(Error::new(
                Kind::DeadlineExceeded,
                format!("command {cmd:?} timed out after {timeout}s and was killed"),
            ));
        }
        Ok(cri::ExecSyncResponse { stdout: resp.stdout, stderr: resp.stderr, exit_code: resp.exit_code })
    }

    /// Layers used by existing containers (kept by image removal).
    /// Where an interactive exec in a running container connects: the io
    /// socket of the container's shim. Checks the request as CRI Exec must.
    pub async fn exec_target(&self, req: &cri::ExecRequest) -> Result<PathBuf> {
        if req.cmd.is_empty() {
            return Err(Error::invalid("Exec needs a command"));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Error::invalid("Exec needs at least one of stdin, stdout and stderr"));
        }
        if req.tty && req.stderr {
            return Err(Error::invalid("Exec with a tty has no separate stderr: set tty or stderr, not both"));
        }
        let meta = self.container(&req.container_id)?;
        if self.runtime_state(&meta).await.state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Error::precondition(format!("container {} is not running", req.container_id)));
        }
        Ok(self.cfg.state.join("sandboxes").join(&meta.sandbox_id).join("io.sock"))
    }

    /// Where an attach to a running container connects, and whether the
    /// container has a terminal (its own setting decides, not the request's).
    pub async fn attach_target(&self, req: &cri::AttachRequest) -> Result<(PathBuf, bool)> {
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Error::invalid("Attach needs at least one of stdin, stdout and stderr"));
        }
        let meta = self.container(&req.container_id)?;
        if req.stdin && !meta.config.stdin {
            return Err(Error::precondition(format!(
                "container {} was not created with stdin: nothing to attach stdin to",
                req.container_id
            )));
        }
        if self.runtime_state(&meta).await.state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Error::precondition(format!("container {} is not running", req.container_id)));
        }
        let sock = self.cfg.state.join("sandboxes").join(&meta.sandbox_id).join("io.sock");
        Ok((sock, meta.config.tty))
    }

    /// The network namespace a port-forward to pod `id` connects in: its
    /// pinned one, or None for a host-network pod (the host's).
    pub fn port_forward_target(&self, id: &str) -> Result<Option<PathBuf>> {
        let sb = self.sandbox(id)?;
        let m = lock(&sb.meta).clone();
        if m.stopped || sb.lost_at().is_some() {
            return Err(Error::precondition(format!("pod sandbox {id} is not ready")));
        }
        Ok(m.pinned.iter().any(|n| n == NS_NET).then(|| m.dir.join(NS_DIR).join(NS_NET)))
    }

    /// ReopenContainerLog: the shim reopens the log file by path, so a
    /// rotated (renamed) file keeps what it had and a new one gets the rest.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let meta = self.container(id)?;
        let st = self.runtime_state(&meta).await;
        if st.state != cri::ContainerState::ContainerRunning as i32 {
            // CRI: after an error the runtime must not create the file.
            return Err(Error::precondition(format!("container {id} is not running; its log is not reopened")));
        }
        let sb = self.sandbox(&meta.sandbox_id)?;
        let shim = self.shim_of(&sb).await?;
        shim.reopen_log(id).await?;
        Ok(())
    }
}
