//! Where backups come from. Each source turns part of a cluster into a stream
//! of chunks for the write pipeline ([`crate::repo::writer`]).

pub mod etcd;
pub mod resources;
pub mod volume;
