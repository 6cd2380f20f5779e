//! The shim writes container output to the CRI log file, completely, before
//! the exit is reported.
use std::time::Duration;

use berth::cri_log_reader::{parse_line, split_streams};
use berth_tests::Daemon;
use protocol::cri;

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
    // The unterminated last line is a partial record.
    let last = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).last().unwrap();
    let r = parse_line(last).unwrap();
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
    let c = d.create(&pod, &cfg, "counter", &["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done; sleep 1000"]).await;
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
