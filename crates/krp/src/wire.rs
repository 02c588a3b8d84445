//! Framing: each message is a 4-byte big-endian length then that many bytes of deterministic
//! CBOR. Frames above [`MAX_FRAME`] are refused before any allocation.

use std::io::{Read, Write};

use serde::{de::DeserializeOwned, Serialize};

use crate::cbor::{from_slice, to_canonical};

/// Largest frame accepted (evidence with a certificate table fits easily).
pub const MAX_FRAME: usize = 1 << 20;

/// Errors on the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(std::io::Error),
    /// The socket's read or write timeout passed (the peer sent or took nothing in time); the
    /// OS reports it as `EAGAIN` ("Resource temporarily unavailable"), which says nothing.
    #[error("connection timed out: the peer did not answer within the timeout ({0})")]
    TimedOut(std::io::Error),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("{0}")]
    Cbor(#[from] crate::cbor::CborError),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => WireError::TimedOut(e),
            _ => WireError::Io(e),
        }
    }
}

/// Write one message.
pub fn write_msg<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), WireError> {
    let body = to_canonical(msg)?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    // Provably fits: MAX_FRAME < u32::MAX.
    let len = body.len() as u32;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()?;
    Ok(())
}

/// Read one frame's bytes; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, WireError> {
    read_frame_phased(r, |_| {})
}

/// [`read_frame`], calling `started` once the frame's first byte has arrived (the KRS starts
/// the frame's deadline there: waiting for a frame and reading one are timed apart).
pub fn read_frame_phased<R: Read>(
    r: &mut R,
    started: impl FnOnce(&mut R),
) -> Result<Option<Vec<u8>>, WireError> {
    let mut len = [0u8; 4];
    loop {
        match r.read(&mut len[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    started(r);
    r.read_exact(&mut len[1..])?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLarge(n));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Read and decode one message.
pub fn read_msg<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, WireError> {
    match read_frame(r)? {
        Some(b) => Ok(Some(from_slice(&b)?)),
        None => Ok(None),
    }
}
