//! Berth's fuzz targets: each takes input an attacker controls (a stream
//! peer, an image, a registry, a config author) and checks a property that
//! must hold for every input, beyond "does not panic": the SPDY reader ends
//! every stream, the WebSocket splitter keeps bytes, the CRI log reader gives
//! back exactly what the writer was given, an unpacked layer changes nothing
//! outside its folder, references re-parse to themselves, and the config,
//! manifest and HTTP/2 authority parsers never hang or panic.
//!
//! They run on stable Rust through proptest: `cargo test -p berth-fuzz`
//! runs each briefly with its corpus (`fuzz/corpus/<target>/`), and
//! `scripts/fuzz.sh [seconds]` runs them longer and reports executions per
//! second.
// Targets build frames and records from small generated values.
#![allow(clippy::cast_possible_truncation)]
use std::path::Path;
use std::time::SystemTime;

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;

/// One fuzz target: its name, how inputs are made, and the check.
pub struct Target {
    /// Name (and corpus folder).
    pub name: &'static str,
    /// Raw bytes into a run (corpus files go through this).
    pub run: fn(&[u8]),
    /// Inputs proptest makes, as bytes for `run`.
    pub strategy: fn() -> BoxedStrategy<Vec<u8>>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target { name: "spdy_frames", run: spdy_frames, strategy: spdy_input },
    Target { name: "websocket_splitter", run: websocket_splitter, strategy: any_bytes },
    Target { name: "cri_log_round_trip", run: cri_log_round_trip, strategy: any_bytes },
    Target { name: "layer_unpack", run: layer_unpack, strategy: tar_input },
    Target { name: "image_reference", run: image_reference, strategy: reference_input },
    Target { name: "config_file", run: config_file, strategy: toml_input },
    Target { name: "manifest", run: manifest, strategy: json_input },
    Target { name: "h2_authority", run: h2_authority, strategy: h2_input },
];

fn any_bytes() -> BoxedStrategy<Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..4096).boxed()
}

fn rt() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("a tokio runtime for the target: {e}"),
    }
}

/// SPDY frames: some built right (so header blocks reach the inflater),
/// the rest bytes. Every stream ends: a frame, an error or the end.
fn spdy_input() -> BoxedStrategy<Vec<u8>> {
    let frame = (any::<bool>(), 0u16..12, any::<u8>(), proptest::collection::vec(any::<u8>(), 0..512)).prop_map(
        |(control, kind, flags, body)| {
            let mut f = if control { vec![0x80, 3, 0, kind as u8, flags] } else { vec![0, 0, 0, 1, flags] };
            f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(&body);
            f
        },
    );
    prop_oneof![proptest::collection::vec(frame, 0..8).prop_map(|v| v.concat()), any_bytes()].boxed()
}

fn spdy_frames(data: &[u8]) {
    rt().block_on(async {
        let mut r = berth_streaming::spdy::Reader::new(data);
        // Each frame consumes at least its 8-byte head: the loop ends.
        for _ in 0..=data.len() / 8 + 1 {
            match r.next().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
        panic!("the SPDY reader returned more frames than its input holds");
    });
}

fn websocket_splitter(data: &[u8]) {
    use berth_streaming::server::{ws_frame, WsFrame};
    use tokio_tungstenite_message as msg;
    match ws_frame(msg::binary(data)) {
        WsFrame::Data(ch, rest) => {
            assert_eq!(Some(&ch), data.first());
            assert_eq!(rest, data[1..]);
        }
        WsFrame::Skip => assert!(data.is_empty()),
        WsFrame::End => panic!("binary data read as a close"),
    }
}

/// Builds tungstenite messages without naming the crate in this one's
/// dependencies twice.
mod tokio_tungstenite_message {
    /// A binary message.
    pub fn binary(data: &[u8]) -> berth_streaming::server::WsMessage {
        berth_streaming::server::WsMessage::Binary(data.to_vec().into())
    }
}

/// Output of one stream cut into reads at arbitrary places (the first byte
/// picks the line limit): the reader joins the records back into exactly
/// the bytes written.
fn cri_log_round_trip(data: &[u8]) {
    use berth_shim::cri_log::{LineSplitter, Stream};
    let (max_line, rest) = match data.split_first() {
        Some((m, rest)) => (usize::from(*m % 64) + 1, rest),
        None => (16, data),
    };
    let mut splitter = LineSplitter::new(Stream::Stdout, max_line);
    let mut out = Vec::new();
    let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    // Reads of varying sizes: 1..=7 bytes, from the data itself.
    let mut i = 0;
    while i < rest.len() {
        let n = (usize::from(rest[i]) % 7 + 1).min(rest.len() - i);
        splitter.push(&rest[i..i + n], ts, &mut out);
        i += n;
    }
    splitter.finish(ts, &mut out);
    let (stdout, stderr) = protocol::cri_log::split_streams(&out);
    assert_eq!(stdout, rest, "the log does not give back what was written");
    assert!(stderr.is_empty());
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert!(protocol::cri_log::parse_line(line).is_some(), "an unparseable record");
    }
}

/// Tar entries with hostile names (`..`, absolute, through links) and
/// types, encoded for `layer_unpack`: per entry, a type byte, a name and a
/// link target separated by NUL, then the data.
fn tar_input() -> BoxedStrategy<Vec<u8>> {
    let part = prop_oneof![Just(".."), Just("."), Just("a"), Just("b"), Just("link"), Just(""), Just("etc")];
    let path = (any::<bool>(), proptest::collection::vec(part, 1..5))
        .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")));
    let entry = (0u8..4, path.clone(), path, proptest::collection::vec(any::<u8>(), 0..16));
    proptest::collection::vec(entry, 1..6)
        .prop_map(|entries| {
            let mut out = Vec::new();
            for (t, p, l, d) in entries {
                out.push(t);
                out.extend_from_slice(p.as_bytes());
                out.push(0);
                out.extend_from_slice(l.as_bytes());
                out.push(0);
                out.push(d.len() as u8);
                out.extend_from_slice(&d);
            }
            out
        })
        .boxed()
}

fn decode_entries(mut data: &[u8]) -> Vec<(tar::EntryType, String, String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((&t, rest)) = data.split_first() {
        let mut parts = rest.splitn(3, |b| *b == 0);
        let (Some(p), Some(l), Some(tail)) = (parts.next(), parts.next(), parts.next()) else { break };
        let Some((&n, tail)) = tail.split_first() else { break };
        let n = usize::from(n).min(tail.len());
        let kind = match t % 4 {
            0 => tar::EntryType::Regular,
            1 => tar::EntryType::Directory,
            2 => tar::EntryType::Symlink,
            _ => tar::EntryType::Link,
        };
        let clip = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(90)]).into_owned();
        out.push((kind, clip(p), clip(l), tail[..n].to_vec()));
        data = &tail[n..];
    }
    out
}

/// Everything below `root` except `skip`: paths and contents.
fn snapshot(root: &Path, skip: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.starts_with(skip) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).ok();
            if meta.as_ref().is_some_and(|m| m.is_dir()) {
                stack.push(p.clone());
            }
            let content =
                if meta.is_some_and(|m| m.is_file()) { std::fs::read(&p).unwrap_or_default() } else { Vec::new() };
            out.push((p.display().to_string(), content));
        }
    }
    out.sort();
    out
}

fn layer_unpack(data: &[u8]) {
    let entries = decode_entries(data);
    let Ok(tmp) = tempfile::tempdir() else { return };
    // The layer lands four levels down: an entry climbing out with the
    // four `..` a name here can hold stays inside the temp folder, where
    // the check sees it.
    let dest = tmp.path().join("a/b/c/dest");
    let outside = tmp.path().join("a/sentinel");
    let _ = std::fs::create_dir_all(dest.parent().unwrap_or(tmp.path()));
    let _ = std::fs::write(&outside, b"untouched");
    let before = snapshot(tmp.path(), &dest);
    let mut b = tar::Builder::new(Vec::new());
    for (kind, path, link, content) in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(content.len() as u64);
        h.set_mode(0o755);
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        let l = link.as_bytes();
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        h.set_cksum();
        if b.append(&h, &content[..]).is_err() {
            return;
        }
    }
    let Ok(tarball) = b.into_inner() else { return };
    let blob = tmp.path().join("layer.tar");
    if std::fs::write(&blob, tarball).is_err() {
        return;
    }
    let _ = berth_images::unpack::unpack_layer(&blob, &dest);
    let mut after = snapshot(tmp.path(), &dest);
    after.retain(|(p, _)| !p.ends_with("layer.tar") && !p.contains("/a/b/c/.tmp-") && !p.ends_with("/a/b/c"));
    let mut before = before;
    before.retain(|(p, _)| !p.ends_with("/a/b/c"));
    assert_eq!(after, before, "unpacking changed something outside its folder: {entries:?}");
}

fn reference_input() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        "[a-z0-9./:@_-]{0,80}".prop_map(String::into_bytes),
        "([a-z0-9]{1,8}\\.){0,2}[a-z]{1,8}(:[0-9]{1,5})?(/[a-z0-9_.-]{1,12}){1,3}(:[A-Za-z0-9_.-]{1,12})?"
            .prop_map(String::into_bytes),
        any_bytes(),
    ]
    .boxed()
}

fn image_reference(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(r) = berth_images::reference::Reference::parse(&s) {
        let again = r.digested().or_else(|| r.tagged()).unwrap_or_else(|| r.repository());
        let r2 = berth_images::reference::Reference::parse(&again)
            .unwrap_or_else(|e| panic!("{again:?} (from {s:?}) does not parse again: {e}"));
        assert_eq!(r2.repository(), r.repository(), "{s:?}");
    }
}

fn toml_input() -> BoxedStrategy<Vec<u8>> {
    let key = prop_oneof![
        Just("version"),
        Just("root"),
        Just("log_level"),
        Just("cgroup_driver"),
        Just("[logs]\nmax_files"),
        Just("[stream]\ntoken_ttl"),
        Just("[registries.\"x\"]\nmirrors"),
        Just("[metrics]\naddress"),
        Just("bogus"),
    ];
    let value = prop_oneof![
        Just("1".to_string()),
        Just("\"info\"".to_string()),
        Just("[\"a\", 1]".to_string()),
        Just("{ x = 1 }".to_string()),
        "\"[ -~]{0,20}\"".prop_map(|s| s),
    ];
    prop_oneof![
        proptest::collection::vec((key, value), 0..6).prop_map(|kv| kv
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect::<String>()
            .into_bytes()),
        any_bytes(),
    ]
    .boxed()
}

fn config_file(data: &[u8]) {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let path = tmp.path().join("config.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(s) = berthd::settings::Settings::load(&[path]) {
        // What loads is valid, and its dump loads back to the same.
        s.validate().unwrap_or_else(|e| panic!("loaded but invalid: {e}"));
        let again: berthd::settings::Settings =
            proptest_toml(&s.to_toml()).unwrap_or_else(|e| panic!("the dump does not load: {e}"));
        assert_eq!(again, s);
    }
}

fn proptest_toml(text: &str) -> Result<berthd::settings::Settings, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let p = tmp.path().join("again.toml");
    std::fs::write(&p, text).map_err(|e| e.to_string())?;
    berthd::settings::Settings::load(&[p]).map_err(|e| e.message)
}

fn json_input() -> BoxedStrategy<Vec<u8>> {
    let digest = prop_oneof![Just(format!("sha256:{}", "a".repeat(64))), "[a-z0-9:]{0,70}".prop_map(|s| s)];
    let desc = (
        digest,
        prop_oneof![Just(serde_json::json!(1)), Just(serde_json::json!(-1)), Just(serde_json::json!("x"))],
    )
        .prop_map(|(d, size)| {
            serde_json::json!({"digest": d, "size": size, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "platform": {"os": "linux", "architecture": "amd64"}})
        });
    let doc = (proptest::collection::vec(desc.clone(), 0..4), desc, 0i64..4).prop_map(|(layers, config, v)| {
        serde_json::to_vec(
            &serde_json::json!({"schemaVersion": v, "config": config, "layers": layers, "manifests": []}),
        )
        .unwrap_or_default()
    });
    prop_oneof![doc, any_bytes()].boxed()
}

fn manifest(data: &[u8]) {
    if let Ok((json, config, layers)) = berth_images::pull::parse_manifest(data) {
        assert_eq!(json["schemaVersion"], 2);
        for (d, _) in std::iter::once(&config).chain(layers.iter()) {
            assert!(berth_images::images::digest_hex(d).is_ok(), "{d}");
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = berth_images::images::select_platform(&v);
    }
}

fn h2_input() -> BoxedStrategy<Vec<u8>> {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    (any::<bool>(), any_bytes())
        .prop_map(move |(with, rest)| if with { [preface.clone(), rest].concat() } else { rest })
        .boxed()
}

fn h2_authority(data: &[u8]) {
    use tokio::io::AsyncReadExt;
    rt().block_on(async {
        let mut fix = berthd::h2_authority::AuthorityFix::new(data);
        let mut out = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), fix.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the authority fix did not finish its input");
    });
}

/// Runs every file of `corpus/<target>/` through the target; how many ran.
pub fn run_corpus(t: &Target, corpus: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(corpus.join(t.name)) else { return 0 };
    let mut n = 0;
    for e in entries.flatten() {
        if let Ok(data) = std::fs::read(e.path()) {
            (t.run)(&data);
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::{Config, TestRunner};

    /// Each target with its corpus and a few hundred generated inputs: what
    /// scripts/test.sh runs (scripts/fuzz.sh runs them longer).
    #[test]
    fn every_target_briefly() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for t in TARGETS {
            run_corpus(t, &corpus);
            let cases = if t.name == "layer_unpack" || t.name == "config_file" { 64 } else { 256 };
            let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
            runner
                .run(&(t.strategy)(), |input| {
                    (t.run)(&input);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        }
    }
}
