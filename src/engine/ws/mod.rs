//! RFC 6455: the upgrade handshake and the frame codec.

pub mod deflate;
pub mod frame;
pub mod handshake;
