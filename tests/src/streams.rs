//! Helpers of the streaming tests: a running container to exec into, and
//! the URLs CRI Exec and PortForward answer with.
use std::time::Duration;

use berth_streaming::client::Channels;
use protocol::cri;

use crate::Daemon;

impl Daemon {
    /// A pod `name` with one container sleeping in it, running; its id.
    pub async fn sleeping_container(&mut self, name: &str) -> String {
        let cfg = self.pod_config(name);
        let pod = self.run_pod(&cfg).await;
        let c = self.create(&pod, &cfg, "c", &["sleep", "100000"]).await;
        self.start_container(&c).await;
        self.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
        c
    }

    /// The streaming URL CRI Exec answers for `cmd` in container `c`.
    pub async fn exec_url_with(&mut self, c: &str, cmd: &[&str], ch: Channels) -> Result<String, tonic::Status> {
        let r = self
            .rt
            .exec(cri::ExecRequest {
                container_id: c.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty: ch.tty,
                stdin: ch.stdin,
                stdout: ch.stdout,
                stderr: ch.stderr,
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().url)
    }

    /// The streaming URL CRI PortForward answers for `port` of pod `pod`.
    pub async fn port_forward_url(&mut self, pod: &str, port: u16) -> String {
        self.rt
            .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.into(), port: vec![port as i32] })
            .await
            .unwrap()
            .into_inner()
            .url
    }
}
