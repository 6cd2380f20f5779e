//! Pod networking through real CNI plugins (Debian's containernetworking-
//! plugins: bridge, host-local, portmap) on a bridge and subnet of the
//! test's own.
use std::io::{Read, Write};
use std::time::Duration;

use berth_tests::{cni_available, Daemon, TestNet};
use protocol::cri;

#[tokio::test]
async fn pods_get_ips_reach_each_other_and_a_host_port() {
    if !cni_available() {
        eprintln!("skipped: containernetworking-plugins are not installed (scripts/setup.sh installs them)");
        return;
    }
    let mut d = Daemon::start().await;
    let net = TestNet::new(&d);
    let host_port = 30000 + (std::process::id() % 2000) as i32;

    let mut cfg_a = d.pod_config("web");
    cfg_a.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let pod_a = d.run_pod(&cfg_a).await;
    let cfg_b = d.pod_config("client");
    let pod_b = d.run_pod(&cfg_b).await;
    let ip_a = d.pod_status(&pod_a).await.network.unwrap().ip;
    let ip_b = d.pod_status(&pod_b).await.network.unwrap().ip;
    assert!(ip_a.starts_with(&format!("{}.", net.prefix)), "{ip_a} not in {}.0/24", net.prefix);
    assert!(ip_b.starts_with(&format!("{}.", net.prefix)));
    assert_ne!(ip_a, ip_b);

    let web = d
        .create(
            &pod_a,
            &cfg_a,
            "web",
            &["sh", "-c", "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www"],
        )
        .await;
    d.start_container(&web).await;
    let client = d.create(&pod_b, &cfg_b, "client", &["sleep", "1000"]).await;
    d.start_container(&client).await;
    d.wait_state(&client, cri::ContainerState::ContainerRunning, Duration::from_secs(5)).await;
    // Pod to pod over the bridge.
    assert_eq!(d.exec_out(&client, &["sh", "-c", &format!("ip addr show eth0 | grep -c 'inet {ip_b}/'")]).await, "1");
    let r = d.exec(&client, &["ping", "-c", "1", "-W", "3", &ip_a], 10).await.unwrap();
    assert_eq!(
        r.exit_code,
        0,
        "ping failed: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    // The host port, from the host, through portmap's DNAT.
    let gateway = format!("{}.1", net.prefix);
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(
            &format!("{gateway}:{host_port}").parse().unwrap(),
            Duration::from_secs(2),
        ) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            body.clear();
            let _ = s.read_to_string(&mut body);
            if body.contains("hello-from-pod") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("hello-from-pod"), "host port {host_port} did not reach the pod: {body:?}");

    // Stop releases the network (CNI DEL), and again is fine.
    for pod in [&pod_a, &pod_b] {
        d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.to_string() }).await.unwrap();
        d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.to_string() }).await.unwrap();
        d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.to_string() }).await.unwrap();
    }
    // IPs released, no NAT rules left for them.
    let leases: Vec<String> = std::fs::read_dir(&net.ipam)
        .map(|it| {
            it.flatten()
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(!leases.iter().any(|l| l == &ip_a || l == &ip_b), "IPs still reserved: {leases:?}");
    let rules = std::process::Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    assert!(
        !rules.contains(&format!("{ip_a}:8080")) && !rules.contains(&format!("--dport {host_port} ")),
        "portmap rules left behind"
    );
}

#[tokio::test]
async fn a_cni_failure_fails_the_pod_and_leaves_nothing() {
    let mut d = Daemon::start().await;
    let dir = d.dir.path().join("cni");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("10-bad.conflist"),
        r#"{"cniVersion":"1.0.0","name":"bad","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let cfg = d.pod_config("nonet");
    let e =
        d.rt.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(cfg), runtime_handler: String::new() })
            .await
            .unwrap_err();
    assert!(e.message().contains("no-such-plugin"), "{e:?}");
    let pods = d.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    assert!(pods.is_empty());
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    assert!(d.mounts().is_empty(), "{:?}", d.mounts());
    let status = d.rt.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let net = status.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(net.status, "a configuration is present");
}

/// CNI DEL runs with the configuration ADD ran with (cached beside the ADD
/// result, as libcni does): after the configuration is removed, or replaced
/// by another network, stopping the pod still releases its IP and host port.
#[tokio::test]
async fn del_uses_the_add_time_configuration() {
    if !cni_available() {
        eprintln!("skipped: containernetworking-plugins are not installed (scripts/setup.sh installs them)");
        return;
    }
    let mut d = Daemon::start().await;
    let net = TestNet::new(&d);
    let conf_dir = d.dir.path().join("cni");
    let host_port = 32000 + (std::process::id() % 2000) as i32;
    for replace in [false, true] {
        let name = if replace { "replaced" } else { "removed" };
        let mut cfg = d.pod_config(name);
        cfg.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: host_port + replace as i32,
            host_ip: String::new(),
        }];
        let pod = d.run_pod(&cfg).await;
        let ip = d.pod_status(&pod).await.network.unwrap().ip;
        let lease = net.ipam.join(&net.name);
        assert!(lease.join(&ip).exists(), "no host-local lease for {ip} in {}", lease.display());
        let saved = std::fs::read(conf_dir.join("10-test.conflist")).unwrap();
        std::fs::remove_file(conf_dir.join("10-test.conflist")).unwrap();
        if replace {
            // Another network altogether: its plugin fails for any pod.
            std::fs::write(
                conf_dir.join("05-other.conflist"),
                r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"no-such-plugin"}]}"#,
            )
            .unwrap();
        }
        d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
        assert!(!lease.join(&ip).exists(), "{name}: the IP {ip} is still reserved");
        let rules = std::process::Command::new("iptables-save")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        assert!(!rules.contains(&format!("--dport {} ", host_port + replace as i32)), "{name}: portmap rules left");
        d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
        let _ = std::fs::remove_file(conf_dir.join("05-other.conflist"));
        std::fs::write(conf_dir.join("10-test.conflist"), saved).unwrap();
    }
}

/// A pod whose network namespace pin is gone (an administrator's cleanup, a
/// crash between two steps) still stops and is removed: CNI DEL runs with
/// an empty CNI_NETNS, as the CNI spec allows, and releases the IP.
#[tokio::test]
async fn a_pod_without_its_netns_pin_still_stops_and_is_removed() {
    if !cni_available() {
        eprintln!("skipped: containernetworking-plugins are not installed (scripts/setup.sh installs them)");
        return;
    }
    let mut d = Daemon::start().await;
    let net = TestNet::new(&d);
    let cfg = d.pod_config("unpinned");
    let pod = d.run_pod(&cfg).await;
    let ip = d.pod_status(&pod).await.network.unwrap().ip;
    let lease = net.ipam.join(&net.name).join(&ip);
    assert!(lease.exists());
    let pin = d.dir.path().join("s/sandboxes").join(&pod).join("ns/net");
    nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH).unwrap();
    d.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert!(!lease.exists(), "the IP {ip} is still reserved");
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    assert!(d.mounts().is_empty(), "{:?}", d.mounts());
}
