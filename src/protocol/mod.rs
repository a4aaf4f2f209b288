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
    let mut head = [0u8; HEADER_LEN];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Frame::Eof),
        Err(e) => return Err(e),
    }
    let header = Header::decode(&head, MAX_FRAME)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut buf = vec![0u8; header.size as usize];
    buf[..HEADER_LEN].copy_from_slice(&head);
    r.read_exact(&mut buf[HEADER_LEN..]).await?;
    Ok(Frame::Message(header, buf))
}
