//! NRI's connection multiplexing (containerd/nri `pkg/net/multiplex`): one
//! unix socket, the trunk, carries several byte streams. Each frame is a
//! 4-byte big-endian connection id, a 4-byte big-endian payload length and
//! the payload. NRI runs the plugin's ttrpc service on connection 1 and the
//! runtime's on connection 2; each comes out of [`split`] as a tokio duplex
//! stream ttrpc runs on. Either end of NRI uses it: berthd and a plugin.
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// The connection the plugin serves (the runtime's calls to the plugin).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// The connection the runtime serves (the plugin's calls to the runtime).
pub const RUNTIME_SERVICE_CONN: u32 = 2;
/// The largest frame accepted: a ttrpc header and its largest message.
pub const MAX_FRAME: usize = 10 + (4 << 20);
/// The largest frame sent. A Go peer reads each frame into its ttrpc
/// reader's 4 KiB buffer at once and fails on a larger one; the payloads
/// are a byte stream, so small frames cost nothing else.
const OUT_FRAME: usize = 4096;
/// Buffered per stream before the trunk stops being read.
const STREAM_BUFFER: usize = 64 * 1024;

/// The two streams of a multiplexed trunk, and the tasks that move their
/// bytes: dropping [`Mux`] stops them and closes the trunk.
pub struct Mux {
    /// Connection 1, the plugin's service.
    pub plugin_service: DuplexStream,
    /// Connection 2, the runtime's service.
    pub runtime_service: DuplexStream,
    /// The pumps, ended when this is dropped.
    pub pumps: Pumps,
}

/// The tasks moving a trunk's frames; aborted on drop.
pub struct Pumps {
    reader: Option<JoinHandle<()>>,
    writers: Vec<JoinHandle<()>>,
}

impl Pumps {
    /// Resolves when the trunk is closed or broken (the peer went away or
    /// sent a frame past [`MAX_FRAME`]).
    pub async fn closed(&mut self) {
        if let Some(r) = self.reader.as_mut() {
            let _ = r.await;
            self.reader = None;
        }
    }
}

impl Drop for Pumps {
    fn drop(&mut self) {
        if let Some(r) = &self.reader {
            r.abort();
        }
        for w in &self.writers {
            w.abort();
        }
    }
}

/// Splits `trunk` into NRI's two streams. Must be called within a tokio
/// runtime.
pub fn split(trunk: UnixStream) -> Mux {
    let (rd, wr) = trunk.into_split();
    let wr = std::sync::Arc::new(tokio::sync::Mutex::new(wr));
    let (plugin_service, plugin_ours) = tokio::io::duplex(STREAM_BUFFER);
    let (runtime_service, runtime_ours) = tokio::io::duplex(STREAM_BUFFER);
    let (plugin_rd, plugin_wr) = tokio::io::split(plugin_ours);
    let (runtime_rd, runtime_wr) = tokio::io::split(runtime_ours);
    let reader = tokio::spawn(demultiplex(rd, plugin_wr, runtime_wr));
    let writers = vec![
        tokio::spawn(multiplex(PLUGIN_SERVICE_CONN, plugin_rd, wr.clone())),
        tokio::spawn(multiplex(RUNTIME_SERVICE_CONN, runtime_rd, wr)),
    ];
    Mux { plugin_service, runtime_service, pumps: Pumps { reader: Some(reader), writers } }
}

/// Reads frames off the trunk into their streams until the trunk ends;
/// then the streams end too, which ends ttrpc on them.
async fn demultiplex(
    rd: tokio::net::unix::OwnedReadHalf,
    mut plugin: WriteHalf<DuplexStream>,
    mut runtime: WriteHalf<DuplexStream>,
) {
    pump_frames(rd, &mut plugin, &mut runtime).await;
    // A dropped half leaves the stream open (its read half holds it): the
    // peer reads EOF only once this side is shut.
    let _ = plugin.shutdown().await;
    let _ = runtime.shutdown().await;
}

async fn pump_frames(
    mut rd: tokio::net::unix::OwnedReadHalf,
    plugin: &mut WriteHalf<DuplexStream>,
    runtime: &mut WriteHalf<DuplexStream>,
) {
    let mut header = [0u8; 8];
    let mut payload = Vec::new();
    loop {
        if rd.read_exact(&mut header).await.is_err() {
            return;
        }
        let (id, len) = parse_header(header);
        let Some(len) = usize::try_from(len).ok().filter(|l| *l <= MAX_FRAME) else {
            return;
        };
        payload.resize(len, 0);
        if rd.read_exact(&mut payload).await.is_err() {
            return;
        }
        // A frame for a connection nobody opened is dropped, as NRI does.
        let to = match id {
            PLUGIN_SERVICE_CONN => &mut *plugin,
            RUNTIME_SERVICE_CONN => &mut *runtime,
            _ => continue,
        };
        if to.write_all(&payload).await.is_err() {
            return;
        }
    }
}

/// Sends what ttrpc writes on one stream as frames of connection `id`.
async fn multiplex(
    id: u32,
    mut from: ReadHalf<DuplexStream>,
    trunk: std::sync::Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
) {
    let mut buf = vec![0u8; 8 + OUT_FRAME];
    loop {
        let n = match from.read(&mut buf[8..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(len) = u32::try_from(n) else { return };
        buf[..8].copy_from_slice(&frame_header(id, len));
        if trunk.lock().await.write_all(&buf[..8 + n]).await.is_err() {
            return;
        }
    }
}

/// A frame's header: connection id and payload length, big-endian.
pub fn frame_header(id: u32, len: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&id.to_be_bytes());
    h[4..].copy_from_slice(&len.to_be_bytes());
    h
}

/// The connection id and payload length of a frame header.
pub fn parse_header(h: [u8; 8]) -> (u32, u32) {
    (u32::from_be_bytes([h[0], h[1], h[2], h[3]]), u32::from_be_bytes([h[4], h[5], h[6], h[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_cross_the_trunk_in_small_frames_and_end_with_it() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut left = split(a);
        let mut right = split(b);
        let big = vec![7u8; 10_000];
        left.plugin_service.write_all(&big).await.unwrap();
        left.runtime_service.write_all(b"runtime").await.unwrap();
        let mut got = vec![0u8; big.len()];
        right.plugin_service.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        let mut got = [0u8; 7];
        right.runtime_service.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"runtime");
        drop(left);
        right.pumps.closed().await;
        let mut rest = Vec::new();
        assert_eq!(right.plugin_service.read_to_end(&mut rest).await.unwrap(), 0, "the stream ends with the trunk");
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_the_trunk() {
        let (mut raw, b) = UnixStream::pair().unwrap();
        let mut m = split(b);
        let too_big = u32::try_from(MAX_FRAME + 1).unwrap();
        raw.write_all(&frame_header(PLUGIN_SERVICE_CONN, too_big)).await.unwrap();
        m.pumps.closed().await;
        let mut rest = Vec::new();
        assert_eq!(m.plugin_service.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn frames_of_unknown_connections_are_dropped() {
        let (mut raw, b) = UnixStream::pair().unwrap();
        let mut m = split(b);
        raw.write_all(&frame_header(9, 3)).await.unwrap();
        raw.write_all(b"xyz").await.unwrap();
        raw.write_all(&frame_header(RUNTIME_SERVICE_CONN, 2)).await.unwrap();
        raw.write_all(b"ok").await.unwrap();
        let mut got = [0u8; 2];
        m.runtime_service.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ok");
    }
}
