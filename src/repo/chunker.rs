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

/// Cuts streams into chunks with a buffer reused from one stream to the next.
///
/// fastcdc's own `StreamCDC` allocates (and zeroes) a 4 MiB buffer per stream
/// and moves the rest of it down after every chunk; with thousands of small
/// files that was a quarter of a backup's CPU time. This keeps one buffer of
/// a maximal chunk and 1 MiB per reader and cuts with the slice chunker, whose cut
/// points depend only on the bytes from the chunk start, so the chunks are
/// exactly those of a streaming cut.
pub struct Cutter {
    chunking: Chunking,
    buf: Vec<u8>,
}

impl Cutter {
    pub fn new(chunking: Chunking) -> Self {
        let size = match chunking {
            // Room for one maximal chunk and a read-ahead past it.
            Chunking::Cdc { .. } => CDC_MAX as usize + (1 << 20),
            Chunking::Fixed(n) => n,
        };
        Cutter {
            chunking,
            buf: vec![0; size],
        }
    }

    /// Reads `reader` to its end and calls `f` with each chunk in order.
    /// Returns the number of bytes read.
    pub fn cut<E: From<std::io::Error>>(
        &mut self,
        mut reader: impl Read,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut total = 0u64;
        let mut filled = 0usize;
        let mut eof = false;
        loop {
            while !eof && filled < self.buf.len() {
                match reader.read(&mut self.buf[filled..]) {
                    Ok(0) => eof = true,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if filled == 0 {
                return Ok(total);
            }
            let data = &self.buf[..filled];
            let mut used = 0;
            match self.chunking {
                Chunking::Fixed(_) => {
                    f(data)?;
                    used = filled;
                }
                Chunking::Cdc { seed } => {
                    let cdc = fastcdc::v2020::FastCDC::with_level_and_seed(
                        data,
                        CDC_MIN as usize,
                        CDC_AVG as usize,
                        CDC_MAX as usize,
                        fastcdc::v2020::Normalization::Level1,
                        seed,
                    );
                    for chunk in cdc {
                        let end = chunk.offset + chunk.length;
                        // A chunk that runs into the end of the buffer may
                        // continue in bytes not read yet: cut it next round.
                        if !eof && end == filled && chunk.length < CDC_MAX as usize {
                            break;
                        }
                        f(&data[chunk.offset..end])?;
                        used = end;
                    }
                }
            }
            total += used as u64;
            self.buf.copy_within(used..filled, 0);
            filled -= used;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], c: Chunking) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        Cutter::new(c)
            .cut::<std::io::Error>(data, |v| {
                out.push(v.to_vec());
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn cdc_resynchronises_after_an_insert() {
        let data = crate::repo::test_noise(1, 8 << 20);
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
    fn cutter_matches_the_streaming_chunker_across_reads() {
        let data = crate::repo::test_noise(99, 13 << 20);
        let expected: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level_and_seed(
            &data[..],
            CDC_MIN as usize,
            CDC_AVG as usize,
            CDC_MAX as usize,
            fastcdc::v2020::Normalization::Level1,
            5,
        )
        .map(|c| c.unwrap().data)
        .collect();
        // A reader that returns odd-sized pieces, to cross buffer refills.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = out.len().min(self.0.len()).min(777_777);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut cutter = Cutter::new(Chunking::Cdc { seed: 5 });
        for _ in 0..2 {
            let mut got = Vec::new();
            cutter
                .cut::<std::io::Error>(Dribble(&data), |c| {
                    got.push(c.to_vec());
                    Ok(())
                })
                .unwrap();
            assert_eq!(got, expected);
        }
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
