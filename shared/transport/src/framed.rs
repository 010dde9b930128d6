//! Framed messages on QUIC streams: a `u32` length and a postcard body, with the codec's
//! limits checked before anything is allocated.

use hotsync_core::codec::{self, CodecError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("stream ended in the middle of a message")]
    Truncated,
    #[error("connection lost: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("connection lost: {0}")]
    Write(#[from] quinn::WriteError),
}

impl From<quinn::ReadExactError> for FrameError {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(_) => FrameError::Truncated,
            quinn::ReadExactError::ReadError(e) => FrameError::Read(e),
        }
    }
}

/// Writes one message.
pub async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), FrameError> {
    send.write_all(&codec::encode(msg)).await?;
    Ok(())
}

/// Reads one message; `None` when the stream ends cleanly between messages.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = codec::body_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(codec::decode(&body)?))
}
