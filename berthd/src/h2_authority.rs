//! Accepting any HTTP/2 `:authority` on a unix socket.
//!
//! gRPC clients dialing a unix socket send whatever authority their library
//! chose: gRPC-Go before 1.4x (kubelet 1.28 and 1.29) sends the socket path
//! itself, gRPC C-core since 1.57 its percent-encoding, others an empty one.
//! hyper's HTTP/2 server (h2) parses `:authority` as a URI authority and
//! resets the stream with PROTOCOL_ERROR before any handler runs;
//! containerd's and CRI-O's Go servers accept it. On a unix socket the
//! authority means nothing, so [`AuthorityFix`] sits between the socket and
//! h2 and, in the client-to-server direction, replaces an authority h2 would
//! refuse with `localhost`.
//!
//! It keeps its own HPACK decoder in step with the client's encoder (every
//! header block is decoded, since later blocks may name earlier entries of
//! the dynamic table). Blocks whose authority is fine pass byte for byte
//! until the first one that needs a change; from then on every block is
//! re-encoded as literals without indexing, so h2's dynamic table never
//! again has to match the client's. Anything it does not understand (a bad
//! preface, a block that does not decode, CONTINUATION out of order, an
//! oversized block) ends the rewriting and passes the bytes as they came, so
//! h2 still judges them. The server-to-client direction is untouched.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size h2 accepts unless told otherwise (SETTINGS_MAX_FRAME_SIZE's
/// default); larger frames pass untouched for h2 to refuse.
const MAX_FRAME: usize = 16 * 1024;
/// Largest header block (all its frames) that is rewritten; CRI clients send
/// a few hundred bytes.
const MAX_BLOCK: usize = 256 * 1024;
/// The HPACK table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE's default),
/// the most a client's encoder may use.
const TABLE_SIZE: usize = 4096;
/// What replaces an authority h2 would refuse (what Kubernetes' own clients
/// send for unix sockets).
const REPLACEMENT: &[u8] = b"localhost";

/// Whether h2 accepts `value` as an `:authority`.
fn acceptable(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

enum State {
    /// Waiting for the connection preface (bytes of it still to check).
    Preface,
    /// At a frame boundary.
    Frame,
    /// Passing this many more payload bytes of a frame through.
    Payload(usize),
    /// Passing everything through as it comes.
    Raw,
}

/// A HEADERS frame waiting for its CONTINUATION frames.
struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    /// The frames as they came, for passing them on unchanged.
    raw: Vec<u8>,
    /// The header block fragments, joined.
    block: Vec<u8>,
}

/// A connection whose incoming HTTP/2 requests get an authority h2 accepts.
pub struct AuthorityFix<S> {
    inner: S,
    state: State,
    /// Bytes read from `inner`, not yet looked at.
    input: BytesMut,
    /// Bytes ready for h2.
    output: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<Pending>,
    /// Some block was re-encoded: every later one must be too.
    rewriting: bool,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        AuthorityFix {
            inner,
            state: State::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder,
            pending: None,
            rewriting: false,
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gives up on rewriting: what is held goes out as it came.
    fn go_raw(&mut self) {
        if let Some(p) = self.pending.take() {
            self.output.extend_from_slice(&p.raw);
        }
        self.output.extend_from_slice(&self.input.split());
        self.state = State::Raw;
    }

    /// Moves whatever `input` allows to `output`. Returns whether it made
    /// progress.
    fn process(&mut self) -> bool {
        let before = (self.input.len(), self.output.len());
        loop {
            match self.state {
                State::Raw => {
                    let all = self.input.split();
                    self.output.extend_from_slice(&all);
                    break;
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.go_raw();
                        continue;
                    }
                    if n < PREFACE.len() {
                        break;
                    }
                    let p = self.input.split_to(PREFACE.len());
                    self.output.extend_from_slice(&p);
                    self.state = State::Frame;
                }
                State::Payload(0) => self.state = State::Frame,
                State::Payload(left) => {
                    if self.input.is_empty() {
                        break;
                    }
                    let n = left.min(self.input.len());
                    let chunk = self.input.split_to(n);
                    self.output.extend_from_slice(&chunk);
                    self.state = State::Payload(left - n);
                }
                State::Frame => {
                    if self.input.len() < FRAME_HEADER {
                        break;
                    }
                    let len = (usize::from(self.input[0]) << 16)
                        | (usize::from(self.input[1]) << 8)
                        | usize::from(self.input[2]);
                    let kind = self.input[3];
                    let header_frame = kind == HEADERS || kind == CONTINUATION;
                    if !header_frame {
                        if self.pending.is_some() {
                            // Only CONTINUATION may follow an open block: h2 refuses this.
                            self.go_raw();
                            continue;
                        }
                        let h = self.input.split_to(FRAME_HEADER);
                        self.output.extend_from_slice(&h);
                        self.state = State::Payload(len);
                        continue;
                    }
                    if len > MAX_FRAME {
                        self.go_raw();
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER + len {
                        break;
                    }
                    let frame = self.input.split_to(FRAME_HEADER + len);
                    if !self.header_frame(&frame) {
                        // `frame` is no longer in `input`: put it back in front.
                        let rest = self.input.split();
                        self.input.extend_from_slice(&frame);
                        self.input.extend_from_slice(&rest);
                        self.go_raw();
                    }
                }
            }
        }
        (self.input.len(), self.output.len()) != before
    }

    /// Takes one HEADERS or CONTINUATION frame; false when it cannot be
    /// understood (nothing of it is used then).
    fn header_frame(&mut self, frame: &[u8]) -> bool {
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER..];
        match (kind, &mut self.pending) {
            (HEADERS, None) => {
                if flags & PADDED != 0 {
                    let Some((&pad, rest)) = payload.split_first() else { return false };
                    if usize::from(pad) > rest.len() {
                        return false;
                    }
                    payload = &rest[..rest.len() - usize::from(pad)];
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    if payload.len() < 5 {
                        return false;
                    }
                    let mut p = [0u8; 5];
                    p.copy_from_slice(&payload[..5]);
                    priority = Some(p);
                    payload = &payload[5..];
                }
                self.pending = Some(Pending { stream, flags, priority, raw: frame.to_vec(), block: payload.to_vec() });
            }
            (CONTINUATION, Some(p)) if p.stream == stream => {
                if p.block.len() + payload.len() > MAX_BLOCK {
                    return false;
                }
                p.raw.extend_from_slice(frame);
                p.block.extend_from_slice(payload);
                p.flags |= flags & END_HEADERS;
            }
            _ => return false,
        }
        let ended = self.pending.as_ref().is_some_and(|p| p.flags & END_HEADERS != 0);
        if !ended {
            return true;
        }
        let Some(p) = self.pending.take() else { return true };
        let mut headers = match self.decoder.decode(&p.block) {
            Ok(h) => h,
            Err(_) => {
                // h2 will fail on the same bytes; hand them over as they came.
                self.output.extend_from_slice(&p.raw);
                self.state = State::Raw;
                return true;
            }
        };
        let mut changed = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" && !acceptable(value) {
                *value = REPLACEMENT.to_vec();
                changed = true;
            }
        }
        self.rewriting |= changed;
        if self.rewriting {
            self.emit(p.stream, p.flags, p.priority, &encode_literals(&headers));
        } else {
            self.output.extend_from_slice(&p.raw);
        }
        true
    }

    /// Writes a header block as HEADERS (+ CONTINUATION) frames.
    fn emit(&mut self, stream: u32, flags: u8, priority: Option<[u8; 5]>, block: &[u8]) {
        let first_room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut f = flags & END_STREAM;
        if priority.is_some() {
            f |= PRIORITY;
        }
        if rest.is_empty() {
            f |= END_HEADERS;
        }
        let len = first.len() + if priority.is_some() { 5 } else { 0 };
        self.frame_header(len, HEADERS, f, stream);
        if let Some(p) = priority {
            self.output.extend_from_slice(&p);
        }
        self.output.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME));
            self.frame_header(chunk.len(), CONTINUATION, if more.is_empty() { END_HEADERS } else { 0 }, stream);
            self.output.extend_from_slice(chunk);
            rest = more;
        }
    }

    // len <= MAX_FRAME (callers split there), so it fits in 24 bits.
    #[allow(clippy::cast_possible_truncation)]
    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream: u32) {
        self.output.put_u8((len >> 16) as u8);
        self.output.put_u8((len >> 8) as u8);
        self.output.put_u8(len as u8);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream);
    }
}

/// HPACK literals without indexing, new names, no Huffman: nothing enters
/// h2's dynamic table.
fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            // Writing into a Vec cannot fail.
            let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut out);
            out.extend_from_slice(s);
        }
    }
    out
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.process() {
                continue;
            }
            if this.eof {
                // A truncated frame goes on as it came; h2 sees the same end.
                if !this.input.is_empty() || this.pending.is_some() {
                    this.go_raw();
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.input.extend_from_slice(rb.filled());
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = <tokio::net::UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut v = vec![len[1], len[2], len[3], kind, flags];
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), b"/runtime.v1.RuntimeService/Version".to_vec()),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
            (b"user-agent".to_vec(), b"grpc-go/1.33.3".to_vec()),
        ]
    }

    /// Feeds `input` through the fix in `chunk`-byte reads; returns what h2 would read.
    async fn through(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(chunk);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in input.chunks(chunk) {
                client.write_all(c).await.unwrap();
            }
        });
        let mut fix = AuthorityFix::new(server);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    /// Splits h2's input into (kind, flags, stream, payload) frames after the preface.
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(b.starts_with(PREFACE));
        b = &b[PREFACE.len()..];
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        out
    }

    fn authorities(out: &[u8]) -> Vec<Vec<u8>> {
        let mut dec = loona_hpack::Decoder::new();
        let mut found = Vec::new();
        for (kind, _, _, payload) in frames(out) {
            if kind == HEADERS {
                for (n, v) in dec.decode(&payload).unwrap() {
                    if n == b":authority" {
                        found.push(v);
                    }
                }
            }
        }
        found
    }

    fn connection(authority: &[u8], requests: u32) -> Vec<u8> {
        // The client's encoder indexes: the second request names the path
        // through the dynamic table.
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for i in 0..requests {
            let h = request(authority);
            let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
            let stream = 1 + 2 * i;
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\x04\x0a\x02v1"));
        }
        input
    }

    #[tokio::test]
    async fn a_socket_path_becomes_localhost_in_every_request() {
        for chunk in [1, 7, 4096] {
            let out = through(connection(b"/run/berth/berth.sock", 3), chunk).await;
            assert_eq!(authorities(&out), vec![REPLACEMENT.to_vec(); 3], "chunk {chunk}");
            // Everything else arrives unchanged.
            let f = frames(&out);
            assert_eq!(f.len(), 7);
            assert_eq!(f[2].3, b"\0\0\0\0\x04\x0a\x02v1");
            let mut dec = loona_hpack::Decoder::new();
            let h = dec.decode(&f[5].3).unwrap();
            assert_eq!(h[2], (b":path".to_vec(), b"/runtime.v1.RuntimeService/Version".to_vec()));
            assert_eq!(h.len(), 6);
        }
    }

    #[tokio::test]
    async fn percent_encoded_and_empty_authorities_are_replaced() {
        for a in [&b"%2Frun%2Fberth%2Fberth.sock"[..], b"", b"unix:/run/x.sock"] {
            let out = through(connection(a, 2), 64).await;
            let got = authorities(&out);
            if acceptable(a) {
                assert_eq!(got, vec![a.to_vec(); 2]);
            } else {
                assert_eq!(got, vec![REPLACEMENT.to_vec(); 2], "{:?}", String::from_utf8_lossy(a));
            }
        }
    }

    #[tokio::test]
    async fn a_good_authority_passes_byte_for_byte() {
        let input = connection(b"localhost", 3);
        assert_eq!(through(input.clone(), 5).await, input);
    }

    #[tokio::test]
    async fn continuation_padding_and_priority_are_understood() {
        let mut enc = loona_hpack::Encoder::new();
        let h = request(b"/tmp/c.sock");
        let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
        let (a, b) = block.split_at(10);
        let mut first = vec![3u8]; // pad length
        first.extend_from_slice(&[0x80, 0, 0, 0, 16]); // priority
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &first));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let out = through(input, 3).await;
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(&f[0].3[..5], &[0x80, 0, 0, 0, 16]);
        let h = loona_hpack::Decoder::new().decode(&f[0].3[5..]).unwrap();
        assert_eq!(h[3].1, REPLACEMENT);
    }

    #[tokio::test]
    async fn what_it_cannot_read_passes_as_it_came() {
        // Not HTTP/2 at all.
        let junk = b"GET / HTTP/1.1\r\nHost: /x\r\n\r\n".to_vec();
        assert_eq!(through(junk.clone(), 4).await, junk);
        // A header block that does not decode (index 0 is invalid).
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0x80]));
        input.extend(frame(0x0, END_STREAM, 1, b"x"));
        assert_eq!(through(input.clone(), 4).await, input);
        // A frame other than CONTINUATION inside an open block.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"x"));
        assert_eq!(through(input.clone(), 4).await, input);
        // A truncated frame.
        let mut input = connection(b"/x.sock", 1);
        input.truncate(PREFACE.len() + 9 + 9 + 3);
        assert_eq!(through(input.clone(), 4).await, input);
    }

    #[tokio::test]
    async fn a_large_data_frame_streams_without_being_held() {
        let mut input = connection(b"/x.sock", 1);
        input.extend(frame(0x0, 0, 1, &vec![7u8; 100_000]));
        let out = through(input, 1000).await;
        let f = frames(&out);
        assert_eq!(f.last().unwrap().3.len(), 100_000);
    }
}
