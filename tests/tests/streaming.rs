//! CRI Exec through berthd's streaming server, over SPDY/3.1 with the
//! remotecommand protocols, from this repository's own client.
use std::time::{Duration, Instant};

use berth_streaming::client::{exit_code, Channels, Event, ExecStream};
use berth_streaming::server::EXEC_PROTOCOLS;
use berth_tests::Daemon;
use protocol::cri;

#[tokio::test]
async fn exec_separates_streams_and_reports_the_exit_code() {
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("spdy-exec").await;
    let ch = Channels { stdout: true, stderr: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sh", "-c", "echo out; echo err >&2; exit 3"], ch).await.unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let s = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap();
    assert_eq!(s.protocol, "v4.channel.k8s.io");
    let (out, err, status) = s.collect().await;
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!(exit_code(&status), Some(3), "{}", String::from_utf8_lossy(&status));

    // Success is a Success status; stdin reaches the process.
    let ch = Channels { stdin: true, stdout: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sh", "-c", "read x; echo got:$x"], ch).await.unwrap();
    let mut s = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap();
    s.send_stdin(b"hello\n").await.unwrap();
    s.close_stdin().await.unwrap();
    let (out, _, status) = s.collect().await;
    assert_eq!(out, b"got:hello\n");
    assert_eq!(exit_code(&status), Some(0));

    // An older protocol: the error stream carries only a failure's message.
    let ch = Channels { stdout: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sh", "-c", "echo v2; exit 4"], ch).await.unwrap();
    let s = ExecStream::connect(&url, &["v2.channel.k8s.io"], ch).await.unwrap();
    assert_eq!(s.protocol, "v2.channel.k8s.io");
    let (out, _, status) = s.collect().await;
    assert_eq!(out, b"v2\n");
    assert!(String::from_utf8_lossy(&status).contains("exit status 4"), "{status:?}");
}

#[tokio::test]
async fn exec_with_a_terminal_echoes_and_resizes() {
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("spdy-tty").await;
    let ch = Channels { stdin: true, stdout: true, tty: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sh"], ch).await.unwrap();
    let mut s = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap();
    s.resize(100, 37).await.unwrap();
    // Give the resize a moment to land before asking for it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.send_stdin(b"echo hi-$((40+2)); stty size\n").await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("37 100") {
        assert!(Instant::now() < deadline, "no answer from the terminal: {:?}", String::from_utf8_lossy(&seen));
        match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Some(Event::Stdout(b))) => seen.extend(b),
            Ok(Some(other)) => panic!("unexpected {other:?}; output so far {:?}", String::from_utf8_lossy(&seen)),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&seen).to_string();
    // The terminal echoes what was typed, then the shell answers.
    assert!(text.contains("echo hi-$((40+2))"), "{text:?}");
    assert!(text.contains("hi-42"), "{text:?}");
    assert!(text.contains("37 100"), "{text:?}");
    s.send_stdin(b"exit 5\n").await.unwrap();
    let (_, _, status) = s.collect().await;
    assert_eq!(exit_code(&status), Some(5), "{}", String::from_utf8_lossy(&status));
}

#[tokio::test]
async fn tokens_are_single_use_and_bad_requests_are_refused() {
    let mut d = Daemon::start_full(&[], &["--stream-token-ttl", "1s"]).await;
    let c = d.sleeping_container("spdy-tokens").await;
    let ch = Channels { stdout: true, ..Default::default() };
    // Each run of the command leaves a line in the container's /tmp/runs.
    let cmd = ["sh", "-c", "echo ran; echo x >> /tmp/runs"];

    // A plain GET (no upgrade) is a clear 400 and does not spend the token.
    let url = d.exec_url_with(&c, &cmd, ch).await.unwrap();
    let host = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let path = url.trim_start_matches("http://").trim_start_matches(&host).to_string();
    let plain = raw_get(&host, &path).await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    assert!(plain.contains("SPDY/3.1"), "{plain}");
    let s = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap();
    assert_eq!(s.collect().await.0, b"ran\n");
    // Used once: 404, and nothing runs.
    let e = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.err().expect("reused token accepted");
    assert_eq!(e.kind, berth_core::error::Kind::NotFound, "{e}");
    // Unknown token: 404.
    let e = ExecStream::connect(&format!("http://{host}/exec/00ff"), EXEC_PROTOCOLS, ch).await.err().unwrap();
    assert_eq!(e.kind, berth_core::error::Kind::NotFound);
    // Expired: 404.
    let url = d.exec_url_with(&c, &cmd, ch).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.err().expect("expired token accepted");
    assert_eq!(e.kind, berth_core::error::Kind::NotFound, "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = d.exec_out(&c, &["sh", "-c", "wc -l < /tmp/runs"]).await;
    assert_eq!(runs.trim(), "1", "a refused request ran its command");

    // Bad Exec requests are refused at the CRI call.
    let e = d.exec_url_with(&c, &[], ch).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = d.exec_url_with(&c, &["true"], Channels::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = d.exec_url_with("0123456789abcdef", &["true"], ch).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_client_that_vanishes_leaves_no_process_or_fd() {
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("spdy-vanish").await;
    let pod =
        d.rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items[0].id.clone();
    let shim = d.shim_pid(&pod).await;
    let fds = || std::fs::read_dir(format!("/proc/{shim}/fd")).map(|d| d.count()).unwrap_or(0);
    // Warm up: the first exec makes the shim open what it keeps.
    let ch = Channels { stdout: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["true"], ch).await.unwrap();
    ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap().collect().await;
    let before = fds();

    // With stdin, and without: a process that reads nothing and writes
    // nothing more must still go with its client.
    for (ch, ws, sleep) in [
        (Channels { stdin: true, stdout: true, ..Default::default() }, false, "sleep 4343"),
        (Channels { stdout: true, ..Default::default() }, false, "sleep 4344"),
        (Channels { stdout: true, ..Default::default() }, true, "sleep 4345"),
    ] {
        let url = d.exec_url_with(&c, &["sh", "-c", &format!("echo started; {sleep}")], ch).await.unwrap();
        let mut s = if ws {
            ExecStream::connect_ws(&url, berth_streaming::server::WS_EXEC_PROTOCOLS).await.unwrap()
        } else {
            ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap()
        };
        assert_eq!(s.next().await, Some(Event::Stdout(b"started\n".to_vec())));
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ps = d.exec_out(&c, &["ps", "-o", "args"]).await;
            if !ps.contains(sleep) && fds() <= before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ch:?}: left behind: fds {} (before {before}), processes:\n{ps}",
                fds()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn raw_get(host: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

/// The Go SPDY peer (tests/peers/spdy_exec.go) on Debian's spdystream, the
/// SPDY implementation kubelet and crictl use.
/// None (and the test says it skips) when Go or spdystream is missing.
fn go_peer(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let peer = berth_tests::go_peer("spdy_exec", dir);
    if peer.is_none() {
        berth_tests::skip(
            false,
            "go or golang-github-docker-spdystream-dev missing (scripts/setup.sh --test installs them)",
        );
    }
    peer
}

fn run_peer(peer: &std::path::Path, url: &str, protocol: &str, mode: &str, stdin: &[u8]) -> String {
    use std::io::Write;
    let mut cmd = std::process::Command::new(peer);
    cmd.arg(url).arg(protocol).arg(mode);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "peer failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn go_spdystream_client_execs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(peer) = go_peer(dir.path()) else { return };
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("go-peer").await;
    let ch = Channels { stdin: true, stdout: true, stderr: true, tty: false };
    let url = d.exec_url_with(&c, &["sh", "-c", "read x; echo got:$x; echo e >&2; exit 3"], ch).await.unwrap();
    let out =
        tokio::task::spawn_blocking(move || run_peer(&peer, &url, "v4.channel.k8s.io", "", b"hello\n")).await.unwrap();
    assert!(out.contains("stdout=\"got:hello\\n\""), "{out}");
    assert!(out.contains("stderr=\"e\\n\""), "{out}");
    let status = out.lines().find_map(|l| l.strip_prefix("status=")).unwrap_or("");
    assert_eq!(exit_code(status.as_bytes()), Some(3), "{out}");

    let peer = dir.path().join("spdy_exec");
    let ch = Channels { stdin: true, stdout: true, tty: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sh", "-c", "sleep 0.3; stty size"], ch).await.unwrap();
    let out =
        tokio::task::spawn_blocking(move || run_peer(&peer, &url, "v4.channel.k8s.io", "tty", b"")).await.unwrap();
    assert!(out.contains("33 90"), "{out}");
    assert!(out.contains("\"Success\""), "{out}");

    // Port-forward, as client-go's port-forwarder opens it.
    let cfg = d.pod_config("go-pf");
    let pod = d.run_pod(&cfg).await;
    let port = 17171u16;
    let script = format!("while true; do echo go-pod-answer | nc -l -p {port}; done");
    let srv = d.create(&pod, &cfg, "server", &["sh", "-c", &script]).await;
    d.start_container(&srv).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = d.port_forward_url(&pod, port).await;
        let peer = dir.path().join("spdy_exec");
        let out = tokio::task::spawn_blocking(move || {
            run_peer(&peer, &url, "portforward.k8s.io", &port.to_string(), b"from-go\n")
        })
        .await
        .unwrap();
        if out.contains("data=\"go-pod-answer\\n\"") {
            break;
        }
        assert!(Instant::now() < deadline, "no answer through the Go port-forward: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A listener on the host's loopback that answers every connection with
/// `host-answer`; returns its port.
fn host_listener() -> u16 {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"host-answer\n");
        }
    });
    port
}

async fn forward_once(url: &str, port: u16, send: &[u8]) -> (Vec<u8>, String) {
    let mut pf = berth_streaming::client::PortForward::connect(url).await.unwrap();
    let mut conn = pf.open(port).await.unwrap();
    conn.send(send).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), conn.recv()).await {
        got.extend(d);
        if got.ends_with(b"\n") {
            break;
        }
    }
    drop(pf);
    let err = tokio::time::timeout(Duration::from_secs(5), conn.error()).await.unwrap_or_default();
    (got, err)
}

#[tokio::test]
async fn port_forward_reaches_the_pods_loopback_not_the_hosts() {
    let port = host_listener();
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("pf");
    let pod = d.run_pod(&cfg).await;
    let script = format!("while true; do echo pod-answer | nc -l -p {port}; done");
    let c = d.create(&pod, &cfg, "server", &["sh", "-c", &script]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;

    // The server needs a moment to listen: retry until it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (got, err) = loop {
        let url = d.port_forward_url(&pod, port).await;
        let (got, err) = forward_once(&url, port, b"hello-from-client\n").await;
        if !got.is_empty() || Instant::now() > deadline {
            break (got, err);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(String::from_utf8_lossy(&got), "pod-answer\n", "error stream: {err}");
    // What the client sent reached the server in the pod.
    let log = d.status(&c).await.log_path;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("hello-from-client") {
        assert!(Instant::now() < deadline, "the request never reached the pod");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // berthctl port-forward LOCAL:REMOTE does the same for a local client.
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(berth_tests::bin_dir().join("berthctl"))
        .arg("--endpoint")
        .arg(format!("unix://{}", d.socket.display()))
        .args(["port-forward", &pod, &format!("{local}:{port}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        use std::io::{Read, Write};
        if let Ok(mut t) = std::net::TcpStream::connect(("127.0.0.1", local)) {
            let _ = t.write_all(b"via-berthctl\n");
            t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let _ = t.read_to_end(&mut got);
            if !got.is_empty() {
                break got;
            }
        }
        assert!(Instant::now() < deadline, "berthctl port-forward never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(String::from_utf8_lossy(&answer), "pod-answer\n");

    // Over a WebSocket: channel 0 data, channel 1 errors, each opened with
    // the port in little endian. The pod's nc listens again only after it
    // served the last connection: retry, as above.
    {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
        let le = port.to_le_bytes();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (heads, got) = loop {
            let url = d.port_forward_url(&pod, port).await;
            let mut req = format!("{}?port={port}", url.replacen("http://", "ws://", 1)).into_client_request().unwrap();
            req.headers_mut().insert("sec-websocket-protocol", "v4.channel.k8s.io".parse().unwrap());
            let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
            assert_eq!(resp.headers()["sec-websocket-protocol"], "v4.channel.k8s.io");
            let mut got = Vec::new();
            let mut heads = Vec::new();
            ws.send(Message::binary([&[0u8][..], b"over-ws\n"].concat())).await.unwrap();
            while !got.ends_with(b"\n") {
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => {
                        if heads.len() < 2 {
                            heads.push(b.to_vec());
                        } else if b[0] == 0 {
                            got.extend_from_slice(&b[1..]);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            if got.ends_with(b"\n") {
                break (heads, got);
            }
            assert!(Instant::now() < deadline, "no answer over the WebSocket: {heads:?} {got:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(heads, vec![vec![0, le[0], le[1]], vec![1, le[0], le[1]]]);
        assert_eq!(got, b"pod-answer\n");
    }

    // Nothing listens on another port in the pod: the error stream says so.
    let closed = port.wrapping_add(1).max(1);
    let url = d.port_forward_url(&pod, closed).await;
    let (got, err) = forward_once(&url, closed, b"x").await;
    assert!(got.is_empty());
    assert!(err.contains(&format!("error forwarding port {closed}")), "{err:?}");

    // A host-network pod forwards to the host's own loopback.
    let mut hcfg = d.pod_config("pf-host");
    if let Some(ns) =
        hcfg.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut())
    {
        ns.network = cri::NamespaceMode::Node as i32;
    }
    let hpod = d.run_pod(&hcfg).await;
    let url = d.port_forward_url(&hpod, port).await;
    let (got, _) = forward_once(&url, port, b"x").await;
    assert_eq!(got, b"host-answer\n");

    // Bad requests.
    let e =
        d.rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: "nope".into(), port: vec![] }).await.unwrap_err();
    assert!(matches!(e.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument), "{e:?}");
    let e =
        d.rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![70000] })
            .await
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

async fn attach_url(d: &mut Daemon, c: &str, ch: Channels) -> String {
    d.rt.attach(cri::AttachRequest {
        container_id: c.into(),
        stdin: ch.stdin,
        tty: ch.tty,
        stdout: ch.stdout,
        stderr: ch.stderr,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

async fn read_until(s: &mut ExecStream, want: &str) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(want) {
        assert!(Instant::now() < deadline, "never saw {want:?}: {:?}", String::from_utf8_lossy(&seen));
        match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Some(Event::Stdout(b))) | Ok(Some(Event::Stderr(b))) => seen.extend(b),
            other => panic!("stream ended ({other:?}) before {want:?}: {:?}", String::from_utf8_lossy(&seen)),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn attach_copies_output_to_every_client_and_the_log() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("attach");
    let pod = d.run_pod(&cfg).await;
    let mut conf = berth_tests::container_config("cat", &["cat"]);
    conf.stdin = true;
    let c = d.create_with(&pod, &cfg, conf).await.unwrap();
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;

    let ch = Channels { stdin: true, stdout: true, stderr: true, tty: false };
    let mut a = ExecStream::connect(&attach_url(&mut d, &c, ch).await, EXEC_PROTOCOLS, ch).await.unwrap();
    let watch = Channels { stdout: true, stderr: true, ..Default::default() };
    let mut b = ExecStream::connect(&attach_url(&mut d, &c, watch).await, EXEC_PROTOCOLS, watch).await.unwrap();
    // Both are attached once an echo comes back through the first.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        a.send_stdin(b"ping\n").await.unwrap();
        match tokio::time::timeout(Duration::from_millis(500), a.next()).await {
            Ok(Some(Event::Stdout(_))) => break,
            _ => assert!(Instant::now() < deadline, "attach never echoed"),
        }
    }
    a.send_stdin(b"hello-attach\n").await.unwrap();
    read_until(&mut a, "hello-attach").await;
    read_until(&mut b, "hello-attach").await;
    let log = d.status(&c).await.log_path;
    assert!(std::fs::read_to_string(&log).unwrap().contains("stdout F hello-attach"), "the log missed attached input");

    // Detaching leaves the container running.
    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.status(&c).await.state(), cri::ContainerState::ContainerRunning);

    // With stdin_once, the end of the first attach's stdin ends the container's.
    let mut conf = berth_tests::container_config("once", &["sh", "-c", "cat; echo after-eof"]);
    conf.stdin = true;
    conf.stdin_once = true;
    let once = d.create_with(&pod, &cfg, conf).await.unwrap();
    d.start_container(&once).await;
    d.wait_state(&once, cri::ContainerState::ContainerRunning, Duration::from_secs(10)).await;
    let mut s = ExecStream::connect(&attach_url(&mut d, &once, ch).await, EXEC_PROTOCOLS, ch).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send_stdin(b"only-once\n").await.unwrap();
    read_until(&mut s, "only-once").await;
    s.close_stdin().await.unwrap();
    let st = d.wait_state(&once, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 0);
    assert!(std::fs::read_to_string(&st.log_path).unwrap().contains("after-eof"));

    // stdin to a container created without it is refused.
    let e =
        d.rt.attach(cri::AttachRequest { container_id: c.clone(), stdin: true, stdout: true, ..Default::default() })
            .await;
    assert!(e.is_ok(), "{e:?}");
    let plain = d.create(&pod, &cfg, "plain", &["sleep", "1000"]).await;
    d.start_container(&plain).await;
    let e =
        d.rt.attach(cri::AttachRequest { container_id: plain, stdin: true, stdout: true, ..Default::default() })
            .await
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
}

#[tokio::test]
async fn exec_over_websocket_v5_and_v4() {
    use berth_streaming::server::WS_EXEC_PROTOCOLS;
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("ws-exec").await;
    let ch = Channels { stdin: true, stdout: true, stderr: true, tty: false };
    let url = d.exec_url_with(&c, &["sh", "-c", "read x; echo out:$x; echo err >&2; exit 3"], ch).await.unwrap();
    let mut s = ExecStream::connect_ws(&url, WS_EXEC_PROTOCOLS).await.unwrap();
    assert_eq!(s.protocol, "v5.channel.k8s.io");
    s.send_stdin(b"ws\n").await.unwrap();
    s.close_stdin().await.unwrap();
    let (out, err, status) = s.collect().await;
    assert_eq!(out, b"out:ws\n");
    assert_eq!(err, b"err\n");
    assert_eq!(exit_code(&status), Some(3), "{}", String::from_utf8_lossy(&status));

    // v4: no stdin close signal; a command that needs none.
    let ch = Channels { stdout: true, stderr: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sh", "-c", "echo v4; echo e4 >&2"], ch).await.unwrap();
    let s = ExecStream::connect_ws(&url, &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(s.protocol, "v4.channel.k8s.io");
    let (out, err, status) = s.collect().await;
    assert_eq!((out.as_slice(), err.as_slice()), (&b"v4\n"[..], &b"e4\n"[..]));
    assert_eq!(exit_code(&status), Some(0));

    // A terminal over v5: typed input echoes, a resize reaches stty.
    let ch = Channels { stdin: true, stdout: true, tty: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sh"], ch).await.unwrap();
    let mut s = ExecStream::connect_ws(&url, WS_EXEC_PROTOCOLS).await.unwrap();
    s.resize(120, 41).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.send_stdin(b"stty size; echo ws-$((20+3))\n").await.unwrap();
    let text = read_until(&mut s, "ws-23").await;
    assert!(text.contains("41 120"), "{text:?}");
    s.send_stdin(b"exit 6\n").await.unwrap();
    let (_, _, status) = s.collect().await;
    assert_eq!(exit_code(&status), Some(6));

    // A protocol the server does not speak: 403, and the token is not spent.
    let ch = Channels { stdout: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["echo", "kept"], ch).await.unwrap();
    let e = ExecStream::connect_ws(&url, &["v1.bogus"]).await.err().unwrap();
    assert_eq!(e.kind, berth_core::error::Kind::InvalidArgument, "{e}");
    let s = ExecStream::connect_ws(&url, WS_EXEC_PROTOCOLS).await.unwrap();
    assert_eq!(s.collect().await.0, b"kept\n");
}

#[tokio::test]
async fn streams_over_tls() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        berth_tests::skip(false, "openssl missing (scripts/setup.sh --test installs it)");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let pki = berth_tests::registry::Pki::new(certs.path());
    let (cert, key) = (pki.cert.display().to_string(), pki.key.display().to_string());
    let mut d = Daemon::start_full(&[], &["--stream-tls-cert", &cert, "--stream-tls-key", &key]).await;
    let c = d.sleeping_container("tls").await;
    let ch = Channels { stdout: true, stderr: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sh", "-c", "echo over-tls; exit 2"], ch).await.unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let s = ExecStream::connect_tls(&url, EXEC_PROTOCOLS, ch, Some(&pki.ca)).await.unwrap();
    let (out, _, status) = s.collect().await;
    assert_eq!(out, b"over-tls\n");
    assert_eq!(exit_code(&status), Some(2));
    let url = d.exec_url_with(&c, &["echo", "wss"], ch).await.unwrap();
    let s = ExecStream::connect_ws_tls(&url, berth_streaming::server::WS_EXEC_PROTOCOLS, Some(&pki.ca)).await.unwrap();
    assert_eq!(s.collect().await.0, b"wss\n");
    // Without the CA the server is not trusted.
    let url = d.exec_url_with(&c, &["echo", "no"], ch).await.unwrap();
    let e = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.err().expect("untrusted server accepted");
    assert!(e.message.to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn many_execs_in_one_container_at_once() {
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("many").await;
    let ch = Channels { stdout: true, stderr: true, ..Default::default() };
    let mut urls = Vec::new();
    for i in 0..8 {
        let cmd = format!("sleep 0.3; echo exec-{i}; exit {i}");
        urls.push(d.exec_url_with(&c, &["sh", "-c", &cmd], ch).await.unwrap());
    }
    let runs = urls.into_iter().enumerate().map(|(i, url)| async move {
        let s = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap();
        let (out, _, status) = s.collect().await;
        (i, out, exit_code(&status))
    });
    for (i, out, code) in futures::future::join_all(runs).await {
        assert_eq!(String::from_utf8_lossy(&out), format!("exec-{i}\n"));
        assert_eq!(code, Some(i as i32));
    }
}

/// Stdin and output are pumped independently: a client sending 1 MB of
/// stdin to a command that first writes 1 MB of output and only then reads
/// its stdin gets all of it (berthd's shim used to stop forwarding output
/// while a stdin write waited, and both sides stalled).
#[tokio::test]
async fn big_stdin_and_big_output_flow_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(peer) = go_peer(dir.path()) else { return };
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("pump").await;
    let ch = Channels { stdin: true, stdout: true, stderr: true, tty: false };
    let cmd = ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' a; echo; wc -c"];
    let url = d.exec_url_with(&c, &cmd, ch).await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(&peer)
            .args([url.as_str(), "v4.channel.k8s.io", ""])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&vec![b'z'; 1_000_000]).unwrap();
        drop(stdin);
        // A peer that hangs is killed after 60 s, by pid, only while it runs.
        let pid = child.id() as i32;
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(Duration::from_secs(60)).is_err() {
                berth_tests::kill_tree(pid);
            }
        });
        let out = child.wait_with_output().unwrap();
        let _ = done.send(());
        let _ = watchdog.join();
        String::from_utf8_lossy(&out.stdout).to_string()
    })
    .await
    .unwrap();
    assert!(out.contains(&"a".repeat(1000)), "the output did not come: {}", &out[..out.len().min(300)]);
    assert!(out.contains("1000000\\n"), "not all of stdin arrived: {}", &out[out.len().saturating_sub(300)..]);
}
