//! The shim writes container output to the CRI log file, completely, before
//! the exit is reported.
use std::time::Duration;

use berth_tests::Daemon;
use protocol::cri;
use protocol::cri_log::{parse_line, split_streams};

#[tokio::test]
async fn output_is_in_the_log_in_order_before_exit_is_reported() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("logs");
    let pod = d.run_pod(&cfg).await;
    // 2000 numbered lines on each stream, an empty line, and a last line
    // without a newline.
    let script = "i=0; while [ $i -lt 2000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done; echo; printf tail";
    let c = d.create(&pod, &cfg, "writer", &["sh", "-c", script]).await;
    d.start_container(&c).await;
    let st = d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(30)).await;
    assert_eq!(st.exit_code, 0);
    // Read right away: every byte must already be there.
    let path = st.log_path.clone();
    assert!(path.ends_with("writer.log"), "{path}");
    let data = std::fs::read(&path).unwrap();
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let r = parse_line(line).unwrap_or_else(|| panic!("unparsable line {:?}", String::from_utf8_lossy(line)));
        assert!(r.timestamp.ends_with('Z') && r.timestamp.len() == 30, "timestamp {}", r.timestamp);
    }
    let (out, err) = split_streams(&data);
    let mut want_out: String = (0..2000).map(|i| format!("out-{i}\n")).collect();
    want_out.push_str("\ntail");
    let want_err: String = (0..2000).map(|i| format!("err-{i}\n")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), want_out);
    assert_eq!(String::from_utf8(err).unwrap(), want_err);
    // The unterminated last line is a partial record (the last of stdout's;
    // stderr's records may come after it in the file).
    let r = data.split(|&b| b == b'\n').rev().filter_map(parse_line).find(|r| r.stream == "stdout").unwrap();
    assert!(!r.full && r.content == b"tail");
}

#[tokio::test]
async fn long_lines_are_split_into_partials() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("longlines");
    let pod = d.run_pod(&cfg).await;
    // 40000 bytes on one line: 16 KiB + 16 KiB partials and a full rest.
    let c = d.create(&pod, &cfg, "long", &["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' x; echo"]).await;
    d.start_container(&c).await;
    let st = d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    let data = std::fs::read(&st.log_path).unwrap();
    let recs: Vec<_> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| parse_line(l).unwrap()).collect();
    let shape: Vec<_> = recs.iter().map(|r| (r.full, r.content.len())).collect();
    assert_eq!(shape, vec![(false, 16384), (false, 16384), (true, 40000 - 2 * 16384)]);
}

#[tokio::test]
async fn reopen_after_rename_loses_nothing() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("reopen");
    let pod = d.run_pod(&cfg).await;
    let c = d
        .create(
            &pod,
            &cfg,
            "counter",
            &["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done; sleep 1000"],
        )
        .await;
    d.start_container(&c).await;
    let path = d.status(&c).await.log_path;
    let mut rotated = Vec::new();
    for n in 0..5 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let to = format!("{path}.{n}");
        std::fs::rename(&path, &to).unwrap();
        rotated.push(to);
        d.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: c.clone() }).await.unwrap();
        assert!(std::path::Path::new(&path).exists(), "reopen did not create the file");
    }
    // Wait for the writer to finish its 3000 lines.
    let mut all = Vec::new();
    for _ in 0..200 {
        all.clear();
        for p in rotated.iter().chain(std::iter::once(&path)) {
            all.extend(std::fs::read(p).unwrap());
        }
        if split_streams(&all).0.ends_with(b"line-2999\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let want: String = (0..3000).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(String::from_utf8(split_streams(&all).0).unwrap(), want);
    // Not running: an error, and no new file.
    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let e = d.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: c }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(!std::path::Path::new(&path).exists());
}

#[tokio::test]
async fn every_kind_of_output_round_trips_exactly() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("format");
    let pod = d.run_pod(&cfg).await;
    // Mixed streams, empty lines, a 100 KiB line, binary bytes (including
    // 0xff and a carriage return) and an unterminated last line.
    let script = "printf 'one\\n\\n'; printf 'e1\\n' >&2; head -c 102400 /dev/zero | tr '\\0' y; echo; \
                  printf '\\001\\002\\377\\r bin\\n' >&2; printf '\\n\\n'; printf 'no newline at the end'";
    let c = d.create(&pod, &cfg, "format", &["sh", "-c", script]).await;
    d.start_container(&c).await;
    let st = d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    let data = std::fs::read(&st.log_path).unwrap();
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(parse_line(line).is_some(), "unparsable: {:?}", String::from_utf8_lossy(&line[..line.len().min(80)]));
    }
    let (out, err) = split_streams(&data);
    let mut want_out = b"one\n\n".to_vec();
    want_out.extend(std::iter::repeat_n(b'y', 102400));
    want_out.extend_from_slice(b"\n\n\nno newline at the end");
    assert_eq!(out, want_out);
    assert_eq!(err, b"e1\n\x01\x02\xff\r bin\n");
}

#[tokio::test]
async fn no_line_is_lost_when_rotating_under_load() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("rotate-load");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "burst", &["sh", "-c", "seq 1 200000; seq 1 200000 >&2"]).await;
    d.start_container(&c).await;
    let path = d.status(&c).await.log_path;
    let mut files = Vec::new();
    let mut n = 0;
    loop {
        let st = d.status(&c).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let to = format!("{path}.{n}");
        n += 1;
        if std::fs::rename(&path, &to).is_ok() {
            files.push(to);
            // The container may exit between the rename and the reopen.
            let _ = d.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: c.clone() }).await;
        }
    }
    files.push(path);
    let mut all = Vec::new();
    for f in &files {
        all.extend(std::fs::read(f).unwrap_or_default());
    }
    let (out, err) = split_streams(&all);
    let want: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), want, "stdout lost or repeated lines over {} files", files.len());
    assert_eq!(String::from_utf8(err).unwrap(), want, "stderr lost or repeated lines");
}

#[tokio::test]
async fn berthctl_follow_reads_through_rotations_and_exits_with_the_container() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("follow");
    let pod = d.run_pod(&cfg).await;
    let script =
        "i=0; while [ $i -lt 600 ]; do echo line-$i; i=$((i+1)); [ $((i % 100)) = 0 ] && sleep 0.3; done; true";
    let c = d.create(&pod, &cfg, "follow", &["sh", "-c", script]).await;
    let path = d.status(&c).await.log_path;
    // Started before the container is.
    let follower = std::process::Command::new(berth_tests::bin_dir().join("berthctl"))
        .arg("--endpoint")
        .arg(format!("unix://{}", d.socket.display()))
        .args(["logs", "--follow", &c])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.start_container(&c).await;
    for n in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::rename(&path, format!("{path}.{n}")).unwrap();
        d.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: c.clone() }).await.unwrap();
    }
    let out = tokio::task::spawn_blocking(move || follower.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want: String = (0..600).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
}

#[tokio::test]
async fn berthctl_logs_options() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("opts");
    let pod = d.run_pod(&cfg).await;
    let c = d.create(&pod, &cfg, "opts", &["sh", "-c", "echo o1; echo e1 >&2; sleep 0.2; echo o2; echo o3"]).await;
    d.start_container(&c).await;
    d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(10)).await;
    let ctl = |args: &[&str]| {
        let o = std::process::Command::new(berth_tests::bin_dir().join("berthctl"))
            .arg("--endpoint")
            .arg(format!("unix://{}", d.socket.display()))
            .arg("logs")
            .args(args)
            .arg(&c)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
    };
    assert_eq!(ctl(&[]), ("o1\no2\no3\n".to_string(), "e1\n".to_string()));
    assert_eq!(ctl(&["--tail", "2"]), ("o2\no3\n".to_string(), String::new()));
    assert_eq!(ctl(&["--stream", "stderr"]), (String::new(), "e1\n".to_string()));
    assert_eq!(ctl(&["--stream", "stdout", "--limit-bytes", "4"]).0, "o1\no");
    assert_eq!(ctl(&["--since", "1h"]).0, "o1\no2\no3\n");
    assert_eq!(ctl(&["--since", "2100-01-01T00:00:00Z"]).0, "");
    let (ts, _) = ctl(&["--timestamps"]);
    for l in ts.lines() {
        let (t, rest) = l.split_once(' ').unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok() && rest.starts_with('o'), "{l}");
    }
}

#[tokio::test]
async fn a_full_log_disk_never_stops_the_container() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("fulldisk");
    // The pod's log directory on a tiny tmpfs, mostly filled up front.
    let dir = std::path::PathBuf::from(&cfg.log_directory);
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(Some("tmpfs"), &dir, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=256k")).unwrap();
    let filler = dir.join("filler");
    let filled = std::process::Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=1k", "count=200"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(filled.success());
    let pod = d.run_pod(&cfg).await;
    let c = d
        .create(
            &pod,
            &cfg,
            "chatty",
            &["sh", "-c", "i=0; while true; do echo line-$i-padding-padding-padding; i=$((i+1)); sleep 0.002; done"],
        )
        .await;
    d.start_container(&c).await;

    let mut full = false;
    for _ in 0..300 {
        let st = d.status(&c).await;
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32, "the container stopped: {st:?}");
        if st.message.contains("No space left") {
            full = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(full, "a full log disk was never reported");
    assert!(d.log_contains("container output cannot be logged").await, "berthd did not log the condition");
    let path = d.status(&c).await.log_path;
    // The file stays parseable at the cut.
    for line in std::fs::read(&path).unwrap().split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(parse_line(line).is_some());
    }
    let size_full = std::fs::metadata(&path).unwrap().len();
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = false;
    for _ in 0..200 {
        let st = d.status(&c).await;
        if st.message.is_empty() && std::fs::metadata(&path).unwrap().len() > size_full {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "logging did not resume after space was freed");
    assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerRunning as i32);
    d.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    nix::mount::umount(&dir).unwrap();
}

/// Runs a container writing 4000 numbered lines under berthd-side rotation
/// with `max_files`; returns the numbers in the kept files (oldest first) and
/// the most files seen at once.
async fn rotate_run(max_files: &str) -> (Vec<usize>, usize) {
    let mut d = Daemon::start_full(
        &[],
        &[
            "--container-log-max-size",
            "8Ki",
            "--container-log-max-files",
            max_files,
            "--container-log-check-interval",
            "50ms",
        ],
    )
    .await;
    let cfg = d.pod_config("rotation");
    let pod = d.run_pod(&cfg).await;
    let script = "i=0; while [ $i -lt 4000 ]; do echo n-$i; i=$((i+1)); [ $((i % 50)) = 0 ] && sleep 0.02; done";
    let c = d.create(&pod, &cfg, "steady", &["sh", "-c", script]).await;
    let path = std::path::PathBuf::from(d.status(&c).await.log_path);
    let dir = path.parent().unwrap().to_path_buf();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let files_now = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(&name) && !n.ends_with(".tmp"))
            .collect();
        v.sort();
        v
    };
    d.start_container(&c).await;
    let mut most = 0;
    while d.status(&c).await.state != cri::ContainerState::ContainerExited as i32 {
        most = most.max(files_now().len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let a rotation in flight finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let files = files_now();
    most = most.max(files.len());
    let mut all = Vec::new();
    // Rotated files sort oldest first; the current log (the bare name) is last.
    for f in files.iter().filter(|f| **f != name).chain(std::iter::once(&name)) {
        let raw = std::fs::read(dir.join(f)).unwrap();
        if f.ends_with(".gz") {
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut all).unwrap();
        } else {
            all.extend(raw);
        }
    }
    let (out, _) = split_streams(&all);
    let numbers =
        String::from_utf8(out).unwrap().lines().map(|l| l.strip_prefix("n-").unwrap().parse().unwrap()).collect();
    (numbers, most)
}

#[tokio::test]
async fn berthd_rotation_keeps_max_files_and_loses_no_line() {
    // Few files: never more than max-files, and what is kept is an unbroken
    // run up to the last line.
    let (kept, most) = rotate_run("3").await;
    assert!(most <= 3, "{most} files at once with --container-log-max-files 3");
    let first = *kept.first().expect("nothing kept");
    assert!(first > 0, "no rotation happened");
    let want: Vec<usize> = (first..4000).collect();
    if kept != want {
        let at = kept.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(kept.len().min(want.len()));
        panic!(
            "kept files have a gap or a repeat at index {at}: {:?} (want from {first} to 3999, got {} lines)",
            &kept[at.saturating_sub(2)..(at + 3).min(kept.len())],
            kept.len()
        );
    }
    // Room for every file: the union is the whole output, once and in order.
    let (all, _) = rotate_run("1000").await;
    let want: Vec<usize> = (0..4000).collect();
    if all != want {
        let at = all.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(all.len().min(want.len()));
        panic!("lines lost or repeated across rotations: {} lines, first difference at index {at}", all.len());
    }
}

#[tokio::test]
async fn tty_output_is_logged_and_resize_reaches_the_container() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("tty");
    let pod = d.run_pod(&cfg).await;
    let mut cc = berth_tests::container_config(
        "term",
        &["sh", "-c", "echo on-a-tty; while true; do stty size; sleep 0.1; done"],
    );
    cc.tty = true;
    cc.stdin = true;
    let c = d.create_with(&pod, &cfg, cc).await.unwrap();
    d.start_container(&c).await;
    let path = d.status(&c).await.log_path;
    // The shim's own API resizes the terminal (CRI does it through the
    // streaming server, which kubelet drives).
    let shim = berthd::shim_client::Shim::connect(&d.dir.path().join("s/sandboxes").join(&pod)).await.unwrap();
    shim.resize_pty(&c, 123, 45).await.unwrap();
    let mut seen = String::new();
    for _ in 0..100 {
        let data = std::fs::read(&path).unwrap_or_default();
        let (out, err) = split_streams(&data);
        assert!(err.is_empty(), "a terminal has one stream");
        seen = String::from_utf8_lossy(&out).to_string();
        if seen.contains("45 123") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.contains("on-a-tty"), "{seen}");
    assert!(seen.contains("45 123"), "resize did not reach the container: {seen}");
    // A terminal turns \n into \r\n; the log keeps what the terminal gave.
    assert!(seen.contains("on-a-tty\r\n"), "{seen:?}");
    d.rt.stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.unwrap();
    assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerExited as i32);
}

#[tokio::test]
async fn stdin_stays_open_until_closed() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("stdin");
    let pod = d.run_pod(&cfg).await;
    // `cat` exits at end of input: with stdin kept open it keeps running.
    let mut cc = berth_tests::container_config("reader", &["sh", "-c", "cat; echo input-closed"]);
    cc.stdin = true;
    let c = d.create_with(&pod, &cfg, cc).await.unwrap();
    d.start_container(&c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.status(&c).await.state, cri::ContainerState::ContainerRunning as i32, "stdin was not kept open");
    let shim = berthd::shim_client::Shim::connect(&d.dir.path().join("s/sandboxes").join(&pod)).await.unwrap();
    shim.close_io(&c).await.unwrap();
    let st = d.wait_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(5)).await;
    assert_eq!(st.exit_code, 0);
    let (out, _) = split_streams(&std::fs::read(&st.log_path).unwrap());
    assert_eq!(out, b"input-closed\n");
    // Without stdin, the container's stdin is at end of file at once.
    let c2 = d.create(&pod, &cfg, "no-stdin", &["sh", "-c", "cat; echo done"]).await;
    d.start_container(&c2).await;
    let st = d.wait_state(&c2, cri::ContainerState::ContainerExited, Duration::from_secs(5)).await;
    assert_eq!(st.exit_code, 0);
}

/// Log files are opened (and reopened after rotation) without following
/// symlinks below the pod's log directory: a link planted where a log goes
/// makes the call fail and writes nothing where it points.
#[tokio::test]
async fn log_files_are_never_opened_through_symlinks() {
    let mut d = Daemon::start().await;
    let cfg = d.pod_config("nofollow");
    let pod = d.run_pod(&cfg).await;
    let log_dir = std::path::PathBuf::from(&cfg.log_directory);
    std::fs::create_dir_all(&log_dir).unwrap();
    let outside = d.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.join("target");
    std::fs::write(&target, "original").unwrap();
    std::os::unix::fs::symlink(&target, log_dir.join("a.log")).unwrap();
    std::os::unix::fs::symlink(&outside, log_dir.join("sub")).unwrap();
    for (name, log_path) in [("a", "a.log"), ("b", "sub/b.log")] {
        let mut c = berth_tests::container_config(name, &["sh", "-c", "echo escaped"]);
        c.log_path = log_path.into();
        let r = d.create_with(&pod, &cfg, c).await;
        assert!(r.is_err(), "{log_path}: created through a symlink");
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original");
    assert!(!outside.join("b.log").exists());

    // After a rotation, a link planted before the reopen.
    let mut c = berth_tests::container_config("ok", &["sh", "-c", "while true; do echo line; sleep 0.05; done"]);
    c.log_path = "ok.log".into();
    let id = d.create_with(&pod, &cfg, c).await.unwrap();
    d.start_container(&id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(log_dir.join("ok.log"), log_dir.join("ok.log.1")).unwrap();
    std::os::unix::fs::symlink(&target, log_dir.join("ok.log")).unwrap();
    let r = d.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() }).await;
    assert!(r.is_err(), "reopened through a symlink");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original");
    assert_eq!(d.status(&id).await.state, cri::ContainerState::ContainerRunning as i32);
}
