//! The networking layer both agents share: credentials for mutual TLS, QUIC endpoints that
//! pin them, and framed messages on QUIC streams. The protocol itself lives in
//! `hotsync-core`; this crate only moves its bytes.

pub mod credentials;
pub mod endpoint;
pub mod framed;

pub use credentials::{CredentialsError, Identity, Role};
pub use endpoint::{client_endpoint, server_endpoint};
pub use framed::{FrameError, read_frame, write_frame};
pub mod stream_socket;
