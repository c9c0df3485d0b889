//! Cutting data into chunks.
//!
//! Files and streams use content-defined chunking (FastCDC 2020): an insert
//! near the start of a file moves only the chunks around it, so a changed
//! database page costs about one chunk, not the rest of the file. Raw block
//! images use fixed-size chunks: file systems align their blocks, so fixed
//! boundaries already line up and are cheaper to find.
//!
//! Sizes: min 256 KiB, average 1 MiB, max 4 MiB. Chunks much below 1 MiB
//! multiply per-chunk costs (an age header and an id per chunk, catalog rows);
//! much above it, a small change re-uploads more. restic and kopia land in the
//! same range. The gear table is seeded from the repository secret, so chunk
//! sizes do not reveal which well-known files a repository holds.

use std::io::Read;

pub const CDC_MIN: u32 = 256 * 1024;
pub const CDC_AVG: u32 = 1024 * 1024;
pub const CDC_MAX: u32 = 4 * 1024 * 1024;
/// Chunk size for raw block images.
pub const BLOCK_CHUNK: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub enum Chunking {
    /// Content-defined, with the repository's seed.
    Cdc { seed: u64 },
    /// Fixed-size chunks of this many bytes.
    Fixed(usize),
}

/// Reads `reader` to its end and calls `f` with each chunk in order. Returns
/// the number of bytes read.
pub fn chunk_stream<E: From<std::io::Error>>(
    reader: impl Read,
    chunking: Chunking,
    mut f: impl FnMut(Vec<u8>) -> Result<(), E>,
) -> Result<u64, E> {
    let mut total = 0u64;
    match chunking {
        Chunking::Cdc { seed } => {
            let cdc = fastcdc::v2020::StreamCDC::with_level_and_seed(
                reader,
                CDC_MIN as usize,
                CDC_AVG as usize,
                CDC_MAX as usize,
                fastcdc::v2020::Normalization::Level1,
                seed,
            );
            for chunk in cdc {
                let chunk = chunk.map_err(|e| match e {
                    fastcdc::v2020::Error::IoError(io) => io,
                    other => std::io::Error::other(other.to_string()),
                })?;
                total += chunk.length as u64;
                f(chunk.data)?;
            }
        }
        Chunking::Fixed(size) => {
            let mut reader = reader;
            loop {
                let mut buf = Vec::with_capacity(size);
                let n = (&mut reader).take(size as u64).read_to_end(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                f(buf)?;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], c: Chunking) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chunk_stream::<std::io::Error>(data, c, |v| {
            out.push(v);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn cdc_resynchronises_after_an_insert() {
        let mut data = vec![0u8; 8 << 20];
        let mut x = 1u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let a = chunks(&data, Chunking::Cdc { seed: 7 });
        let mut changed = data.clone();
        changed.splice(100..100, [1, 2, 3]);
        let b = chunks(&changed, Chunking::Cdc { seed: 7 });
        assert_eq!(a.concat(), data);
        let shared = a.iter().filter(|c| b.contains(c)).count();
        assert!(shared + 2 >= a.len(), "{shared} of {} shared", a.len());
        assert!(a.iter().all(|c| c.len() <= CDC_MAX as usize));
    }

    #[test]
    fn fixed_chunks_are_fixed() {
        let data = vec![5u8; 2 * BLOCK_CHUNK + 10];
        let c = chunks(&data, Chunking::Fixed(BLOCK_CHUNK));
        assert_eq!(
            c.iter().map(Vec::len).collect::<Vec<_>>(),
            [BLOCK_CHUNK, BLOCK_CHUNK, 10]
        );
    }
}
