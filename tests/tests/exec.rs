//! ExecSync: output, exit codes and timeouts.
use std::time::{Duration, Instant};

use berth_tests::Daemon;
use protocol::cri;

#[tokio::test]
async fn exec_sync_output_exit_code_and_timeout() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("exec");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "target", &["sleep", "1000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;

    let r = d.exec(&c, &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"], 10).await.unwrap();
    assert_eq!(r.stdout, b"to-out\n");
    assert_eq!(r.stderr, b"to-err\n");
    assert_eq!(r.exit_code, 7);

    // No timeout at all.
    let r = d.exec(&c, &["echo", "no-timeout"], 0).await.unwrap();
    assert_eq!(r.stdout, b"no-timeout\n");

    // A command past its timeout: DeadlineExceeded, and it is gone.
    let t = Instant::now();
    let e = d.exec(&c, &["sleep", "37"], 1).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(15));
    let ps = d.exec_out(&c, &["ps", "-o", "args"]).await;
    assert!(!ps.contains("sleep 37"), "timed-out exec still running:\n{ps}");
    // Its children go too.
    let e = d.exec(&c, &["sh", "-c", "sleep 41 & sleep 42 & wait"], 1).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
    let ps = d.exec_out(&c, &["ps", "-o", "args"]).await;
    assert!(!ps.contains("sleep 41") && !ps.contains("sleep 42"), "children of a timed-out exec survived:\n{ps}");

    // A command that does not exist fails with the runtime's message.
    let e = d.exec(&c, &["/no/such/binary"], 5).await;
    match e {
        Ok(r) => assert_ne!(r.exit_code, 0),
        Err(s) => assert!(s.message().contains("no such file") || s.message().contains("not found"), "{s:?}"),
    }

    // Exec into a container that is not running.
    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.unwrap();
    let e = d.exec(&c, &["true"], 5).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}
