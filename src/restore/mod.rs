//! Restores: the read side of the pipeline. Every pack is checked against
//! its SHA-256 key before use, every chunk against its keyed id after
//! decryption and decompression; nothing unverified reaches the target.

pub mod beneath;
pub mod etcd;
pub mod resources;
pub mod select;
pub mod volume;
