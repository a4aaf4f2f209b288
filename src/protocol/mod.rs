//! JunoDB wire protocol v1: what clients and proxies exchange.

mod status;
mod wire;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod golden_tests;

pub use status::{OpCode, Status};
pub use wire::{
    DecodeError, Direction, Header, Meta, OpMessage, Payload, SourceInfo, HEADER_LEN, OP_HEADER_LEN,
};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame a proxy or client accepts. Far above JunoDB's largest payload (200 KiB
/// by default) so that an oversized payload gets BadParam rather than a closed socket.
pub const MAX_FRAME: u32 = 8 << 20;

/// What reading one frame off a stream produced.
#[derive(Debug)]
pub enum Frame {
    /// A complete frame (header included) whose header is valid.
    Message(Header, Vec<u8>),
    /// The peer closed the stream between frames.
    Eof,
}

/// Reads one length-delimited JunoDB frame. A bad header is an error: the stream can no
/// longer be framed and must be closed.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    match read_header(r).await? {
        Some((header, head)) => Ok(Frame::Message(header, read_body(r, &header, head).await?)),
        None => Ok(Frame::Eof),
    }
}

/// Reads a frame's header alone (`None`: the peer closed the stream between frames),
/// so that a server can decide whether to take the frame before it buffers the body.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(Header, [u8; HEADER_LEN])>> {
    let mut head = [0u8; HEADER_LEN];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let header = Header::decode(&head, MAX_FRAME)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some((header, head)))
}

/// Reads the rest of the frame whose header [`read_header`] returned: the whole frame.
pub async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    header: &Header,
    head: [u8; HEADER_LEN],
) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; header.size as usize];
    buf[..HEADER_LEN].copy_from_slice(&head);
    r.read_exact(&mut buf[HEADER_LEN..]).await?;
    Ok(buf)
}

/// A JunoDB request id as JunoDB prints it (a UUID), or `-`: in the proxy's and the
/// storage servers' log lines about a request.
pub struct RequestId(pub Option<[u8; 16]>);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(id) = self.0 else {
            return f.write_str("-");
        };
        for (i, b) in id.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
