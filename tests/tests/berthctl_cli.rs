//! A person drives the whole lifecycle with berthctl, using crictl-style
//! JSON and YAML configs.
use std::process::Command;

use berth_tests::{bin_dir, Daemon};

fn ctl(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_dir().join("berthctl"))
        .arg("--endpoint")
        .arg(format!("unix://{}", d.socket.display()))
        .args(args)
        .output()
        .expect("run berthctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ok(d: &Daemon, args: &[&str]) -> String {
    let (code, out, err) = ctl(d, args);
    assert_eq!(code, 0, "berthctl {args:?} failed: {err}");
    out.trim().to_string()
}

#[tokio::test]
async fn berthctl_drives_a_pod_from_crictl_configs() {
    let d = Daemon::start().await;
    let pod_json = d.dir.path().join("pod.json");
    std::fs::write(
        &pod_json,
        format!(
            r#"{{"metadata": {{"name": "cli-pod", "namespace": "default", "uid": "abc", "attempt": 1}},
                "log_directory": "{}", "hostname": "cli", "linux": {{}}}}"#,
            d.logs.display()
        ),
    )
    .unwrap();
    let ctr_yaml = d.dir.path().join("ctr.yaml");
    std::fs::write(
        &ctr_yaml,
        "metadata:\n  name: cli-ctr\nimage:\n  image: berth-test\ncommand: [sh, -c, 'echo hello from berth; sleep 1000']\nlog_path: cli-ctr.log\n",
    )
    .unwrap();
    let p = pod_json.display().to_string();
    let c = ctr_yaml.display().to_string();

    assert!(ok(&d, &["version"]).contains("RuntimeName:  berth"));
    assert!(ok(&d, &["images"]).contains("docker.io/library/berth-test"));
    let pod = ok(&d, &["runp", &p]);
    assert_eq!(pod.len(), 64);
    assert!(ok(&d, &["pods"]).contains("cli-pod"));
    let ctr = ok(&d, &["create", &pod[..12], &c, &p]);
    ok(&d, &["start", &ctr]);
    assert!(ok(&d, &["ps"]).contains("cli-ctr"));
    let (code, out, _) = ctl(&d, &["exec", "-s", &ctr, "sh", "-c", "echo in; exit 4"]);
    assert_eq!((code, out.as_str()), (4, "in\n"));
    // The log line appears (the container writes it as it starts).
    let mut logs = String::new();
    for _ in 0..100 {
        logs = ok(&d, &["logs", &ctr]);
        if logs.contains("hello from berth") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(logs, "hello from berth");
    let inspect: serde_json::Value = serde_json::from_str(&ok(&d, &["inspect", &ctr])).unwrap();
    assert_eq!(inspect["status"]["metadata"]["name"], "cli-ctr");
    ok(&d, &["stop", "-t", "1", &ctr]);
    assert!(ok(&d, &["ps", "-a"]).contains("EXITED"));
    ok(&d, &["rm", &ctr]);
    ok(&d, &["stopp", &pod]);
    ok(&d, &["rmp", &pod]);
    assert!(!ok(&d, &["pods"]).contains("cli-pod"));
    // Errors are a message, not a panic, and a non-zero exit.
    let (code, _, err) = ctl(&d, &["inspect", "nonexistent"]);
    assert_ne!(code, 0);
    assert!(err.contains("NotFound"), "{err}");
}

/// `berthctl exec` streams through the runtime's streaming server: stdin
/// with -i, a terminal with -t (berthctl's own terminal put in raw mode),
/// and the command's exit code as berthctl's.
#[tokio::test]
async fn berthctl_exec_streams_with_stdin_and_a_terminal() {
    use std::io::Write;
    use std::process::Stdio;
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("cli-exec");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "c", &["sleep", "100000"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, protocol::cri::ContainerState::ContainerRunning, std::time::Duration::from_secs(10)).await;
    let endpoint = format!("unix://{}", d.socket.display());

    let mut child = Command::new(bin_dir().join("berthctl"))
        .args(["--endpoint", &endpoint, "exec", "-i", &c, "sh", "-c", "read x; echo got:$x; echo to-err >&2; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:typed\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n");
    assert_eq!(out.status.code(), Some(3));

    // The same over WebSocket.
    let out = Command::new(bin_dir().join("berthctl"))
        .args(["--endpoint", &endpoint, "exec", "--transport", "websocket", &c, "sh", "-c", "echo ws; exit 4"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ws\n");
    assert_eq!(out.status.code(), Some(4));

    // Under a terminal (script(1) gives berthctl one): a shell, typed to.
    let line = format!("{} --endpoint {endpoint} exec -it {c} sh", bin_dir().join("berthctl").display());
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo in-tty-$((6*7)); tty\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    stdin.write_all(b"exit 7\n").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let o = child.wait_with_output().unwrap();
        drop(stdin);
        o
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("in-tty-42"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "the command had no terminal: {text:?}");
    assert_eq!(out.status.code(), Some(7), "{text:?} {}", String::from_utf8_lossy(&out.stderr));
}
