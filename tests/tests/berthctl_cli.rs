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

/// berthctl with crictl's habits: /etc/crictl.yaml (here through -c and
/// CRI_CONFIG_FILE), CONTAINER_RUNTIME_ENDPOINT and flags over it, -i for the
/// image endpoint, -o json|yaml|go-template in the protobuf JSON mapping,
/// crictl's list filters and shell completion.
#[tokio::test]
async fn berthctl_has_crictls_habits() {
    let mut d = Daemon::start().await;
    let endpoint = format!("unix://{}", d.socket.display());
    let yaml = d.dir.path().join("crictl.yaml");
    std::fs::write(&yaml, format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 10\ndebug: false\npull-image-on-create: false\n")).unwrap();
    let bad = d.dir.path().join("bad-crictl.yaml");
    std::fs::write(&bad, "runtime-endpoint: unix:///nonexistent/berth.sock\n").unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(bin_dir().join("berthctl"))
            .env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("run berthctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let y = yaml.to_str().unwrap();
    let b = bad.to_str().unwrap();
    // The config file gives the endpoint; flags and the environment win over it.
    assert!(run(&[], &["-c", y, "version"]).1.contains("RuntimeName:  berth"));
    assert!(run(&[("CRI_CONFIG_FILE", y)], &["version"]).0);
    assert!(!run(&[], &["-c", b, "version"]).0);
    assert!(run(&[], &["-c", b, "-r", &endpoint, "version"]).0);
    assert!(run(&[("CONTAINER_RUNTIME_ENDPOINT", &endpoint)], &["-c", b, "version"]).0);
    // -i: images go to the image endpoint.
    let (ok_images, _, err) = run(&[], &["-c", y, "-i", "unix:///nonexistent/img.sock", "images"]);
    assert!(!ok_images, "images did not use the image endpoint");
    assert!(err.contains("nonexistent/img.sock"), "{err}");
    let (ok_t, _, err) = run(&[], &["-c", y, "--timeout", "soon", "version"]);
    assert!(!ok_t && err.contains("--timeout"), "{err}");
    let (_, _, err) = run(&[], &["-c", y, "-D", "version"]);
    assert!(err.contains("DEBUG request: VersionRequest"), "{err}");

    let cfg = d.pod_config("habits");
    let pod = d.run_pod(&cfg).await;
    let mut a = berth_tests::container_config("c-a", &["sleep", "100000"]);
    a.labels.insert("app".into(), "x".into());
    let a = d.create_with(&pod, &cfg, a).await.unwrap();
    d.start_container(&a).await;
    let b_ctr = d.create(&pod, &cfg, "c-b", &["true"]).await;
    d.start_container(&b_ctr).await;
    d.wait_state(&b_ctr, protocol::cri::ContainerState::ContainerExited, std::time::Duration::from_secs(10)).await;
    let ids = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["-c", y];
        full.extend_from_slice(args);
        let (ok, out, err) = run(&[], &full);
        assert!(ok, "{args:?}: {err}");
        out.lines().map(str::to_string).collect()
    };
    assert_eq!(ids(&["ps", "-q"]), vec![a.clone()]);
    assert_eq!(ids(&["ps", "-a", "-q", "--name", "^c-b$"]), vec![b_ctr.clone()]);
    assert_eq!(ids(&["ps", "-q", "--state", "exited"]), vec![b_ctr.clone()]);
    assert_eq!(ids(&["ps", "-a", "-q", "--label", "app=x"]), vec![a.clone()]);
    assert_eq!(ids(&["ps", "-q", "-l"]), vec![b_ctr.clone()], "--latest is the newest, whatever its state");
    assert_eq!(ids(&["ps", "-a", "-q", "--last", "2"]), [b_ctr.clone(), a.clone()]);
    assert_eq!(ids(&["ps", "-a", "-q", "--image", "berth-test"]).len(), 2);
    assert_eq!(ids(&["ps", "-a", "-q", "--image", "other"]).len(), 0);
    assert_eq!(ids(&["ps", "-a", "-q", "--pod", &pod[..12]]).len(), 2);
    assert_eq!(ids(&["pods", "-q", "--name", "hab"]), vec![pod.clone()]);
    assert!(ids(&["pods", "-q", "--label", "no=such"]).is_empty());
    assert!(ids(&["pods", "-q", "--state", "notready"]).is_empty());

    // JSON is the protobuf mapping, as crictl prints it.
    let out = ids(&["ps", "-a", "-o", "json"]).join("\n");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first = &v["containers"][0];
    assert_eq!(first["podSandboxId"], pod.as_str());
    assert!(matches!(first["state"].as_str(), Some("CONTAINER_EXITED" | "CONTAINER_RUNNING")), "{first}");
    assert!(first["createdAt"].as_str().is_some_and(|s| s.parse::<i64>().is_ok()), "int64 as a string: {first}");
    let yaml_out = ids(&["pods", "-o", "yaml"]).join("\n");
    assert!(yaml_out.contains("state: SANDBOX_READY"), "{yaml_out}");
    let t = ids(&["ps", "-a", "-o", "go-template", "--template", "{{range .containers}}{{.metadata.name}} {{end}}"]);
    assert_eq!(t.join(""), "c-b c-a ");
    let st = ids(&["inspect", "-o", "go-template", "--template", "{{.status.state}} {{.info.pid}}", &a[..12]]).join("");
    assert!(st.starts_with("CONTAINER_RUNNING "), "{st}");
    let img = ids(&["inspecti", "-o", "json", "berth-test"]).join("\n");
    let v: serde_json::Value = serde_json::from_str(&img).unwrap();
    assert!(v["status"]["repoTags"][0].as_str().is_some_and(|t| t.contains("berth-test")), "{v}");

    // Shell completion.
    let (ok_c, out, _) = run(&[], &["completion", "bash"]);
    assert!(ok_c && out.contains("_berthctl()") && out.contains("inspectp"), "{out}");
}
