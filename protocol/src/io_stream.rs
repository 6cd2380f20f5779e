//! Frames on a berth-shim io connection (`<sandbox dir>/io.sock`): berthd's
//! streaming server and the shim exchange an interactive process's stdin,
//! output, terminal size and exit over one unix stream. Each frame is a kind
//! byte, a big-endian u32 length and that many bytes.
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 1 << 20;

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// berthd → shim, first: a protobuf `IoStart`.
    Start(Vec<u8>),
    /// berthd → shim: bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// berthd → shim: the client closed stdin.
    StdinClose,
    /// berthd → shim: terminal size (columns, rows).
    Resize(u16, u16),
    /// shim → berthd: process output.
    Stdout(Vec<u8>),
    /// shim → berthd: process error output.
    Stderr(Vec<u8>),
    /// shim → berthd, last: the process exited with this code.
    Exit(i32),
    /// shim → berthd, last: the process could not run.
    Error(String),
}

impl Frame {
    fn parts(&self) -> (u8, Vec<u8>) {
        match self {
            Frame::Start(b) => (1, b.clone()),
            Frame::Stdin(b) => (2, b.clone()),
            Frame::StdinClose => (3, Vec::new()),
            Frame::Resize(w, h) => (4, [w.to_be_bytes(), h.to_be_bytes()].concat()),
            Frame::Stdout(b) => (5, b.clone()),
            Frame::Stderr(b) => (6, b.clone()),
            Frame::Exit(c) => (7, c.to_be_bytes().to_vec()),
            Frame::Error(m) => (8, m.as_bytes().to_vec()),
        }
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let (kind, payload) = f.parts();
    let len = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "io stream frame over 4 GiB"))?;
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&payload);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame; None at a clean end of the stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("io frame of {len} bytes")));
    }
    let mut p = vec![0u8; len];
    r.read_exact(&mut p).await?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed io frame");
    Ok(Some(match head[0] {
        1 => Frame::Start(p),
        2 => Frame::Stdin(p),
        3 => Frame::StdinClose,
        4 if p.len() == 4 => Frame::Resize(u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])),
        5 => Frame::Stdout(p),
        6 => Frame::Stderr(p),
        7 if p.len() == 4 => Frame::Exit(i32::from_be_bytes([p[0], p[1], p[2], p[3]])),
        8 => Frame::Error(String::from_utf8_lossy(&p).into_owned()),
        _ => return Err(bad()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::Start(vec![1, 2]),
            Frame::Stdin(b"hi".to_vec()),
            Frame::StdinClose,
            Frame::Resize(80, 24),
            Frame::Stdout(vec![0; 70000]),
            Frame::Stderr(vec![]),
            Frame::Exit(-3),
            Frame::Error("no".into()),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.unwrap();
        }
        let mut r = &buf[..];
        for f in &frames {
            assert_eq!(read_frame(&mut r).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
    }
}
