//! Where backups come from. Each source turns part of a cluster into a stream
//! of items for the pipeline; this sources are connections only, the
//! backup logic arrives with the engine.

pub mod etcd;
