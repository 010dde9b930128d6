//! Framing: every message is a little-endian `u32` length and a postcard body.
//!
//! Each length a peer sends is checked against [`MAX_FRAME`] before anything is allocated,
//! and bodies decode only into validated types, so a peer's garbage is an error, never a panic
//! or an unbounded allocation.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame accepted (32 MiB): a changeset of some 400,000 operations.
pub const MAX_FRAME: usize = 32 << 20;

/// What can be wrong with a frame a peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("the peer does not speak the hotsync protocol (bad magic bytes)")]
    BadMagic,
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing our own types into a Vec cannot fail: no maps with non-string keys, no I/O.
    let body = postcard::to_allocvec(msg).expect("postcard encodes every protocol type");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The body length announced by a frame header, if acceptable.
pub fn body_len(header: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body. Trailing bytes are an error: a frame holds exactly one message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!("{} stray bytes after the message", rest.len())));
    }
    Ok(msg)
}

/// Incremental decoder over a byte stream: push what arrives, pop whole messages.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `None` if more bytes are needed.
    pub fn pop<T: DeserializeOwned>(&mut self) -> Option<Result<T, CodecError>> {
        let header: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = match body_len(header) {
            Ok(len) => len,
            Err(e) => return Some(Err(e)),
        };
        let body = self.buf.get(4..4 + len)?;
        let msg = decode(body);
        self.buf.drain(..4 + len);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::diff::Op;
    use crate::hash::Hash;
    use crate::index::FileMeta;
    use crate::path::RelPath;
    use crate::proto::{FileRecord, HostMsg, Piece};

    fn commit() -> HostMsg {
        HostMsg::Commit {
            id: 7,
            data_streams: 2,
            ops: vec![
                Op::Mkdir { path: RelPath::new("ü").unwrap() },
                Op::Write {
                    path: RelPath::new("ü/x").unwrap(),
                    meta: FileMeta { size: 3, executable: true, hash: Hash::of(b"abc") },
                },
            ],
            reload: true,
        }
    }

    #[test]
    fn round_trips_split_anywhere() {
        let bytes = [encode(&commit()), encode(&HostMsg::GetIndex)].concat();
        for split in 0..bytes.len() {
            let mut r = FrameReader::default();
            r.push(&bytes[..split]);
            let mut got: Vec<HostMsg> = Vec::new();
            while let Some(m) = r.pop() {
                got.push(m.unwrap());
            }
            r.push(&bytes[split..]);
            while let Some(m) = r.pop() {
                got.push(m.unwrap());
            }
            assert_eq!(got, [commit(), HostMsg::GetIndex]);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut r = FrameReader::default();
        r.push(&u32::MAX.to_le_bytes());
        assert!(matches!(r.pop::<HostMsg>(), Some(Err(CodecError::TooLarge(_)))));
    }

    #[test]
    fn escaping_paths_do_not_decode() {
        #[derive(serde::Serialize)]
        enum EvilOp {
            #[allow(dead_code)]
            Delete { path: String },
        }
        for evil in ["../../etc/passwd", "/etc/passwd", "a/../../b", ".hotsync/index", ""] {
            let body = postcard::to_allocvec(&EvilOp::Delete { path: evil.into() }).unwrap();
            assert!(decode::<Op>(&body).is_err(), "{evil:?} must not decode");
        }
    }

    #[test]
    fn records_that_lie_about_their_size_are_invalid() {
        let rec = FileRecord {
            path: RelPath::new("a").unwrap(),
            size: 10,
            hash: Hash::default(),
            pieces: vec![Piece::Data { len: 4 }, Piece::Copy { from: None, offset: 0, len: u64::MAX }],
        };
        assert!(rec.validate().is_err());
    }

    proptest! {
        /// Whatever a peer sends, decoding returns (an error or a message); it never panics.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut r = FrameReader::default();
            r.push(&bytes);
            while let Some(Ok(_)) = r.pop::<HostMsg>() {}
            let _ = decode::<crate::proto::AgentMsg>(&bytes);
            let _ = decode::<FileRecord>(&bytes);
        }
    }
}
