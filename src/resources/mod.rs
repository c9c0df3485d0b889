//! Kubernetes API resources as backups and restores choose them: the scope
//! flags both share, and the label selectors both understand.

pub mod scope;
pub mod selector;
