//! The streaming server against hostile and greedy peers: broken SPDY
//! header blocks, peers that never finish their upgrade, idle streams, and
//! the caps on connections and streams.
use std::time::{Duration, Instant};

use berth_streaming::client::{exit_code, Channels, ExecStream};
use berth_streaming::server::EXEC_PROTOCOLS;
use berth_tests::Daemon;
use protocol::cri;

/// A hostile SPDY peer: after the upgrade, one SYN_STREAM whose header
/// block is a complete zlib stream plus a byte. berthd closes that
/// connection and keeps answering CRI calls.
#[tokio::test]
async fn a_hostile_spdy_header_block_closes_only_its_connection() {
    use tokio::io::AsyncWriteExt;
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("hostile").await;
    let ch = Channels { stdout: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["true"], ch).await.unwrap();
    let mut conn = spdy_upgrade(&url).await;
    let mut z = flate2::Compress::new(flate2::Compression::default(), true);
    z.set_dictionary(berth_streaming::spdy::dictionary()).unwrap();
    let mut block = Vec::with_capacity(256);
    z.compress_vec(&[0, 0, 0, 0], &mut block, flate2::FlushCompress::Finish).unwrap();
    block.push(b'x');
    let mut body = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&block);
    let mut frame = vec![0x80, 3, 0, 1, 0];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(&body);
    conn.write_all(&frame).await.unwrap();
    // berthd hangs up on this peer...
    assert!(closed_within(&mut conn, Duration::from_secs(5)).await, "berthd kept the hostile connection open");
    // ...and keeps serving everyone else.
    let v =
        tokio::time::timeout(Duration::from_secs(2), d.rt.version(cri::VersionRequest { version: "v1".into() })).await;
    assert!(v.is_ok_and(|r| r.is_ok()), "berthd stopped answering");
}

/// A raw connection upgraded to SPDY/3.1 on an exec URL.
async fn spdy_upgrade(url: &str) -> tokio::net::TcpStream {
    spdy_upgrade_with(url, "v4.channel.k8s.io").await
}

/// A raw connection upgraded to SPDY/3.1 speaking `protocol`.
async fn spdy_upgrade_with(url: &str, protocol: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    conn
}

/// Whether the server closes `conn` within `limit` (reading what it sends).
async fn closed_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The streaming server's bounds, each against a hostile peer: a frame
/// past the size cap, more streams than an exec has, request headers that
/// never end; every one closes its connection and CRI keeps answering.
#[tokio::test]
async fn the_streaming_server_bounds_hostile_peers() {
    use tokio::io::AsyncWriteExt;
    let mut d = Daemon::start().await;
    let c = d.sleeping_container("bounds").await;
    let ch = Channels { stdout: true, stdin: true, ..Default::default() };
    // A data frame announcing 2 MiB (more than berthd takes): closed before
    // the body comes.
    let url = d.exec_url_with(&c, &["cat"], ch).await.unwrap();
    let mut conn = spdy_upgrade(&url).await;
    let len = (berth_streaming::spdy::MAX_FRAME + 1) as u32;
    let mut frame = vec![0, 0, 0, 1, 0];
    frame.extend_from_slice(&len.to_be_bytes()[1..]);
    conn.write_all(&frame).await.unwrap();
    assert!(closed_within(&mut conn, Duration::from_secs(5)).await, "an oversized frame kept its connection");
    // Streams past what an exec needs.
    let url = d.exec_url_with(&c, &["cat"], ch).await.unwrap();
    let conn = spdy_upgrade(&url).await;
    let (mut rd, wr) = conn.into_split();
    let mut w = berth_streaming::spdy::Writer::new(wr);
    for i in 0..40u32 {
        let kind = format!("bogus-{i}");
        if w.syn_stream(1 + 2 * i, &[("streamtype", kind.as_str())], 0).await.is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 4096];
        while !matches!(rd.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await;
    assert!(closed.is_ok(), "endless streams kept their connection");
    // Request headers that never end: closed after the header timeout.
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /exec/0000 HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let limit = berth_streaming::server::HEADER_TIMEOUT + Duration::from_secs(5);
    assert!(closed_within(&mut slow, limit).await, "a never-ending request kept its connection");
    let v = d.rt.version(cri::VersionRequest { version: "v1".into() }).await;
    assert!(v.is_ok());
}

/// A stream with no traffic either way for `--stream-idle-timeout` is
/// closed and its exec ended; one with output keeps going.
#[tokio::test]
async fn idle_streams_are_closed_and_their_exec_ended() {
    let mut d = Daemon::start_full(&[], &["--stream-idle-timeout", "1s"]).await;
    let c = d.sleeping_container("idle").await;
    let ch = Channels { stdout: true, ..Default::default() };
    let url = d.exec_url_with(&c, &["sleep", "4242"], ch).await.unwrap();
    let s = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap();
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.collect()).await.expect("an idle stream stayed open");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the idle timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.exec_out(&c, &["ps", "-o", "args"]).await.contains("sleep 4242") {
        assert!(Instant::now() < deadline, "the idle exec's process was left running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Output every 300 ms for 2.5 s: never idle, all of it arrives.
    let url =
        d.exec_url_with(&c, &["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.3; done"], ch).await.unwrap();
    let (out, _, status) = ExecStream::connect(&url, EXEC_PROTOCOLS, ch).await.unwrap().collect().await;
    assert_eq!(String::from_utf8_lossy(&out), "1\n2\n3\n4\n5\n6\n7\n8\n");
    assert_eq!(exit_code(&status), Some(0));
}

/// The connection cap and the port-forward stream cap, against peers that
/// hold connections open and open streams without end.
#[tokio::test]
async fn connection_and_stream_caps_hold() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut d = Daemon::start_full(&[], &["--stream-max-connections", "4"]).await;
    let cfg = d.pod_config("caps");
    let pod = d.run_pod(&cfg).await;
    let url = d.port_forward_url(&pod, 80).await;
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    // Four idle connections take every slot; a fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(closed_within(&mut fifth, Duration::from_secs(2)).await, "a connection past the cap was served");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // With the slots free again, a port-forward session: streams past the
    // cap are refused (RST_STREAM, REFUSED_STREAM).
    let conn = spdy_upgrade_with(&url, berth_streaming::server::PORT_FORWARD_PROTOCOL).await;
    let (rd, wr) = conn.into_split();
    let mut w = berth_streaming::spdy::Writer::new(wr);
    let total = berth_streaming::server::MAX_FORWARD_STREAMS as u32 + 100;
    for i in 0..total {
        let rid = i.to_string();
        w.syn_stream(1 + 2 * i, &[("streamtype", "data"), ("port", "80"), ("requestid", rid.as_str())], 0)
            .await
            .unwrap();
    }
    let mut r = berth_streaming::spdy::Reader::new(rd);
    let mut refused = 0;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(f)) = r.next().await {
            if let berth_streaming::spdy::Frame::RstStream { status: 7, .. } = f {
                refused += 1;
                if refused >= 100 {
                    break;
                }
            }
        }
    })
    .await;
    assert_eq!(refused, 100, "streams past the cap were not refused");
    let _ = w;
    let mut probe = tokio::net::TcpStream::connect(&addr).await.unwrap();
    probe.write_all(b"GET /exec/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = probe.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 4"), "{out}");
}
