//! Restores: the read side of the pipeline. Every pack is checked against
//! its SHA-256 key before use, every chunk against its keyed id after
//! decryption and decompression; nothing unverified reaches the target.

pub mod beneath;
pub mod etcd;
pub mod resources;
pub mod select;
pub mod set;
pub mod volume;

/// The manifest of backup `id`, authenticated, its trees not read.
/// Blocking.
pub fn open_manifest(
    repo: &crate::repo::Repository,
    id: uuid::Uuid,
) -> crate::error::Result<crate::repo::manifest::Manifest> {
    use crate::repo::manifest::{self, Manifest};
    let sealed = manifest::read_sealed(&*repo.store, id)?.bytes;
    let mut m = Manifest::open(id, &sealed, &repo.secret, repo.identity()?)?;
    crate::repo::object_table::expand(repo, &mut m)?;
    Ok(m)
}
