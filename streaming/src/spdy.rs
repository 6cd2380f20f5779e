//! SPDY/3.1 framing, as Kubernetes' streaming protocols use it (kubelet and
//! crictl speak it through moby/spdystream): control and data frames, and
//! header blocks compressed with one zlib stream per direction primed with
//! the SPDY/3 dictionary. Flow control is not enforced by those peers and is
//! not implemented here; WINDOW_UPDATE, SETTINGS and PING are read and
//! (PING) answered by the session owner.
use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted. The 24-bit length allows 16 MiB; kubelet's and
/// client-go's peers write data in 32 KiB pieces, so 1 MiB is ample and a
/// peer cannot make berthd allocate 16 MiB per frame.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// FIN: the sender's half of the stream ends with this frame.
pub const FLAG_FIN: u8 = 0x01;

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00,
/// 2.6.10.1): length-prefixed header names and values, then common strings.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
            "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
            "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&len32(w.len()));
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Header name/value pairs (names lowercase).
pub type Headers = Vec<(String, String)>;

/// A SPDY frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// Stream id (odd from the client, even from the server).
        id: u32,
        /// Its headers.
        headers: Headers,
        /// FLAG_FIN and FLAG_UNIDIRECTIONAL.
        flags: u8,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream id.
        id: u32,
        /// Its headers.
        headers: Headers,
        /// FLAG_FIN.
        flags: u8,
    },
    /// Ends a stream abnormally.
    RstStream {
        /// Stream id.
        id: u32,
        /// Status code.
        status: u32,
    },
    /// Session settings (ignored).
    Settings,
    /// Liveness check; answered with the same id.
    Ping(u32),
    /// The peer ends the session.
    GoAway {
        /// Last stream the sender accepted.
        last: u32,
        /// Status code.
        status: u32,
    },
    /// More headers on a stream (ignored).
    Headers {
        /// Stream id.
        id: u32,
    },
    /// Flow control credit (not enforced by Kubernetes' peers).
    WindowUpdate {
        /// Stream id.
        id: u32,
        /// Credit.
        delta: u32,
    },
    /// Bytes on a stream.
    Data {
        /// Stream id.
        id: u32,
        /// Bytes.
        data: Vec<u8>,
        /// FLAG_FIN.
        flags: u8,
    },
}

/// A length this side wrote itself (its own header blocks and control
/// bodies, data chunks of at most 32 KiB), in 4 big-endian bytes; the last
/// 3 are a frame's 24-bit length.
#[allow(clippy::cast_possible_truncation)]
fn len32(n: usize) -> [u8; 4] {
    debug_assert!(n < 1 << 24, "SPDY length {n} does not fit a frame");
    (n as u32).to_be_bytes()
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads frames, inflating header blocks with the session's zlib stream.
pub struct Reader<R> {
    r: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader of a new session.
    pub fn new(r: R) -> Self {
        Reader { r, inflate: Decompress::new(true) }
    }

    /// The next frame; None when the peer closed the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = (u32::from_be_bytes([0, head[5], head[6], head[7]])) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!("SPDY frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        if head[0] & 0x80 == 0 {
            let id = be32(&head[..4]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data { id, data: body, flags }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(invalid(format!("SPDY version {version}, only 3 is spoken")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize| if body.len() < n { Err(invalid("short SPDY control frame")) } else { Ok(()) };
        Ok(Some(match kind {
            1 => {
                need(10)?;
                let id = be32(&body) & 0x7fff_ffff;
                let headers = self.headers(&body[10..])?;
                Frame::SynStream { id, headers, flags }
            }
            2 => {
                need(4)?;
                let id = be32(&body) & 0x7fff_ffff;
                let headers = self.headers(&body[4..])?;
                Frame::SynReply { id, headers, flags }
            }
            3 => {
                need(8)?;
                Frame::RstStream { id: be32(&body) & 0x7fff_ffff, status: be32(&body[4..]) }
            }
            4 => Frame::Settings,
            6 => {
                need(4)?;
                Frame::Ping(be32(&body))
            }
            7 => {
                need(4)?;
                let status = if body.len() >= 8 { be32(&body[4..]) } else { 0 };
                Frame::GoAway { last: be32(&body) & 0x7fff_ffff, status }
            }
            8 => {
                need(4)?;
                let id = be32(&body) & 0x7fff_ffff;
                // The block must still go through the shared zlib stream.
                self.headers(&body[4..])?;
                Frame::Headers { id }
            }
            9 => {
                need(8)?;
                Frame::WindowUpdate { id: be32(&body) & 0x7fff_ffff, delta: be32(&body[4..]) & 0x7fff_ffff }
            }
            other => return Err(invalid(format!("unknown SPDY control frame type {other}"))),
        }))
    }

    fn headers(&mut self, block: &[u8]) -> std::io::Result<Headers> {
        let raw = self.inflate_block(block)?;
        let mut p = &raw[..];
        let take = |p: &mut &[u8]| -> std::io::Result<Vec<u8>> {
            if p.len() < 4 {
                return Err(invalid("truncated SPDY header block"));
            }
            let n = be32(p) as usize;
            if p.len() < 4 + n {
                return Err(invalid("truncated SPDY header block"));
            }
            let v = p[4..4 + n].to_vec();
            *p = &p[4 + n..];
            Ok(v)
        };
        if p.len() < 4 {
            return Err(invalid("truncated SPDY header block"));
        }
        let count = be32(p) as usize;
        p = &p[4..];
        let mut out = Vec::new();
        for _ in 0..count {
            let name = String::from_utf8_lossy(&take(&mut p)?).to_lowercase();
            let value = String::from_utf8_lossy(&take(&mut p)?).into_owned();
            out.push((name, value));
        }
        Ok(out)
    }

    fn inflate_block(&mut self, mut input: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(invalid("SPDY header block too large"));
                }
                out.reserve(out.len().max(256));
            }
            let (before_in, before_out) = (self.inflate.total_in(), out.len());
            let r = self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.inflate.total_in() - before_in).unwrap_or(input.len());
            input = &input[used..];
            match r {
                // The session's zlib stream never ends: a block that ends it
                // leaves the rest of the session undecodable (and an inflate
                // that takes nothing and gives nothing would spin here).
                Ok(Status::StreamEnd) => return Err(invalid("SPDY header block ends the session's zlib stream")),
                Ok(Status::Ok | Status::BufError)
                    if used == 0 && out.len() == before_out && out.len() < out.capacity() =>
                {
                    return Err(invalid("SPDY header block does not inflate"));
                }
                Ok(Status::Ok | Status::BufError) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(_) => {
                        self.inflate
                            .set_dictionary(dictionary())
                            .map_err(|e| invalid(format!("zlib dictionary: {e}")))?;
                        continue;
                    }
                    None => return Err(invalid(format!("SPDY header block: {e}"))),
                },
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Writes frames, deflating header blocks with the session's zlib stream.
pub struct Writer<W> {
    w: W,
    deflate: Compress,
    primed: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// A writer of a new session.
    pub fn new(w: W) -> Self {
        Writer { w, deflate: Compress::new(Compression::default(), true), primed: false }
    }

    fn deflate_block(&mut self, headers: &[(&str, &str)]) -> std::io::Result<Vec<u8>> {
        if !self.primed {
            self.deflate.set_dictionary(dictionary()).map_err(|e| invalid(format!("zlib dictionary: {e}")))?;
            self.primed = true;
        }
        let mut raw = Vec::new();
        raw.extend_from_slice(&len32(headers.len()));
        for (k, v) in headers {
            for s in [k.to_lowercase().as_bytes(), v.as_bytes()] {
                raw.extend_from_slice(&len32(s.len()));
                raw.extend_from_slice(s);
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| invalid(format!("compressing SPDY headers: {e}")))?;
            input = &input[usize::try_from(self.deflate.total_in() - before).unwrap_or(input.len())..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    async fn control(&mut self, kind: u16, flags: u8, body: &[u8]) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(8 + body.len());
        f.extend_from_slice(&[0x80, 0x03]);
        f.extend_from_slice(&kind.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&len32(body.len())[1..]);
        f.extend_from_slice(body);
        self.w.write_all(&f).await?;
        self.w.flush().await
    }

    /// Opens stream `id` with `headers`.
    pub async fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)], flags: u8) -> std::io::Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&self.deflate_block(headers)?);
        self.control(1, flags, &body).await
    }

    /// Accepts stream `id`.
    pub async fn syn_reply(&mut self, id: u32, headers: &[(&str, &str)], flags: u8) -> std::io::Result<()> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&self.deflate_block(headers)?);
        self.control(2, flags, &body).await
    }

    /// Resets stream `id`.
    pub async fn rst_stream(&mut self, id: u32, status: u32) -> std::io::Result<()> {
        let body = [id.to_be_bytes(), status.to_be_bytes()].concat();
        self.control(3, 0, &body).await
    }

    /// Answers (or sends) a ping.
    pub async fn ping(&mut self, id: u32) -> std::io::Result<()> {
        self.control(6, 0, &id.to_be_bytes()).await
    }

    /// Ends the session.
    pub async fn go_away(&mut self, last: u32) -> std::io::Result<()> {
        let body = [last.to_be_bytes(), 0u32.to_be_bytes()].concat();
        self.control(7, 0, &body).await
    }

    /// Sends bytes on stream `id` (split into frames of at most 32 KiB).
    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(32 * 1024).collect() };
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            let mut f = Vec::with_capacity(8 + c.len());
            f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            f.push(if fin && i == last { FLAG_FIN } else { 0 });
            f.extend_from_slice(&len32(c.len())[1..]);
            f.extend_from_slice(c);
            self.w.write_all(&f).await?;
        }
        self.w.flush().await
    }

    /// Closes the connection's write side.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.w.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(d)),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    /// A SYN_STREAM whose header block is a complete zlib stream (it ends)
    /// and one more byte: an error at once, not a spinning worker.
    #[test]
    fn a_header_block_that_ends_the_zlib_stream_is_refused_at_once() {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(dictionary()).unwrap();
        let mut block = Vec::with_capacity(256);
        let plain = [0u8, 0, 0, 0];
        z.compress_vec(&plain, &mut block, FlushCompress::Finish).unwrap();
        for extra in [&b""[..], b"x"] {
            let mut b = block.clone();
            b.extend_from_slice(extra);
            let mut body = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            body.extend_from_slice(&b);
            let mut frame = vec![0x80, 3, 0, 1, 0];
            frame.extend_from_slice(&len32(body.len())[1..]);
            frame.extend_from_slice(&body);
            assert!(read_one_within_2s(frame).is_err(), "extra {extra:?}");
        }
        // Garbage that is not zlib at all.
        let mut frame = vec![0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        frame.extend_from_slice(b"\xff\xfe\xfd\xfc");
        assert!(read_one_within_2s(frame).is_err());
    }

    /// Reads one frame on a thread of its own: a reader that spins cannot be
    /// timed out from the same thread.
    fn read_one_within_2s(frame: Vec<u8>) -> std::io::Result<Option<Frame>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = tx.send(rt.block_on(async { Reader::new(&frame[..]).next().await }));
        });
        rx.recv_timeout(std::time::Duration::from_secs(2)).expect("the reader spun")
    }

    #[tokio::test]
    async fn frames_round_trip_through_one_zlib_stream() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = Writer::new(a);
        let mut r = Reader::new(b);
        w.syn_stream(1, &[("streamType", "stdout"), ("x", "y")], 0).await.unwrap();
        w.syn_reply(1, &[], 0).await.unwrap();
        w.syn_stream(3, &[("streamtype", "error")], 0).await.unwrap();
        w.data(1, &vec![7u8; 70_000], true).await.unwrap();
        w.ping(5).await.unwrap();
        w.rst_stream(3, 5).await.unwrap();
        w.go_away(3).await.unwrap();
        let hdr = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Headers>();
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::SynStream { id: 1, headers: hdr(&[("streamtype", "stdout"), ("x", "y")]), flags: 0 })
        );
        assert_eq!(r.next().await.unwrap(), Some(Frame::SynReply { id: 1, headers: vec![], flags: 0 }));
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::SynStream { id: 3, headers: hdr(&[("streamtype", "error")]), flags: 0 })
        );
        let mut got = Vec::new();
        loop {
            match r.next().await.unwrap() {
                Some(Frame::Data { id: 1, data, flags }) => {
                    got.extend(data);
                    if flags & FLAG_FIN != 0 {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got.len(), 70_000);
        assert_eq!(r.next().await.unwrap(), Some(Frame::Ping(5)));
        assert_eq!(r.next().await.unwrap(), Some(Frame::RstStream { id: 3, status: 5 }));
        assert_eq!(r.next().await.unwrap(), Some(Frame::GoAway { last: 3, status: 0 }));
    }
}
