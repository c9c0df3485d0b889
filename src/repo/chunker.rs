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

/// FastCDC 2020's cut points (normalisation level 1, the repository's gear
/// table), found with four independent hash chains instead of one.
///
/// The gear hash of a position is a 64-bit shift register: each byte shifts
/// it left by one and adds the byte's table entry, so after 64 bytes a byte
/// no longer affects it. fastcdc scans with one chain, and its loop waits on
/// that chain's shift and add for every byte (it was a fifth to a third of a
/// backup's CPU time). Here a window is split into four lanes whose hashes
/// start 64 bytes early, and so equal the one chain's exactly from each
/// lane's first byte; the lanes run interleaved, in parallel on a superscalar
/// core. When any lane meets the mask, the window is scanned again with the
/// one chain from its start, which finds the first cut point: the cut points
/// are exactly fastcdc's (checked against it in the tests), so dedup against
/// chunks stored before this code is unchanged.
pub struct Gear {
    table: [u64; 256],
    mask_s: u64,
    mask_l: u64,
    sizes: (usize, usize, usize),
}

impl Gear {
    /// Lanes scanned together, and bytes per lane per window. A window costs
    /// a scalar rescan only at a cut point (once per chunk, at most 16 KiB),
    /// and 64 bytes of warm-up per lane (1.5%).
    const LANES: usize = 4;
    const BLOCK: usize = 4096;

    pub fn new(seed: u64) -> Self {
        let sizes = (CDC_MIN as usize, CDC_AVG as usize, CDC_MAX as usize);
        let (mask_s, mask_l) =
            fastcdc::v2020::select_masks(sizes.1, fastcdc::v2020::Normalization::Level1);
        Self::with_masks(seed, sizes, mask_s, mask_l)
    }

    fn with_masks(seed: u64, sizes: (usize, usize, usize), mask_s: u64, mask_l: u64) -> Self {
        let (gear, _) = fastcdc::v2020::get_gear_with_seed(seed);
        let table: [u64; 256] = gear[..].try_into().expect("a gear table has 256 entries");
        // fastcdc tests every other position against the mask shifted left
        // by one: the same test only while the mask's top bit is clear.
        assert!(
            (mask_s | mask_l) >> 63 == 0 && sizes.0.is_multiple_of(2) && sizes.1.is_multiple_of(2)
        );
        Gear {
            table,
            mask_s,
            mask_l,
            sizes,
        }
    }

    /// The length of the first chunk of `data`: what fastcdc's `FastCDC`
    /// iterator returns for it, `data.len()` when no cut point is found
    /// before the end (or before the maximum size).
    pub fn cut(&self, data: &[u8]) -> usize {
        let (min, avg, max) = self.sizes;
        if data.len() <= min {
            return data.len();
        }
        let remaining = data.len().min(max);
        let center = avg.min(remaining);
        // fastcdc tests positions in pairs: the strict mask below `center`,
        // the relaxed one after it, and never an odd last byte.
        let (split, end) = (center & !1, remaining & !1);
        let mut hash = 0u64;
        self.scan(data, min, split, self.mask_s, &mut hash)
            .or_else(|| self.scan(data, split, end, self.mask_l, &mut hash))
            .unwrap_or(remaining)
    }

    /// The first position in `start..end` whose hash meets `mask`. `hash` is
    /// the hash up to `start` (exclusive), and up to `end` on return.
    fn scan(
        &self,
        data: &[u8],
        start: usize,
        end: usize,
        mask: u64,
        hash: &mut u64,
    ) -> Option<usize> {
        let g = &self.table;
        let step = |h: u64, b: u8| (h << 1).wrapping_add(g[b as usize]);
        let window = Self::LANES * Self::BLOCK;
        let mut at = start;
        while end.saturating_sub(at) >= window {
            let lane = |k: usize| -> &[u8; Self::BLOCK] {
                data[at + k * Self::BLOCK..][..Self::BLOCK]
                    .try_into()
                    .expect("a lane is BLOCK bytes")
            };
            let warm = |k: usize| {
                let first = at + k * Self::BLOCK;
                data[first - 64..first]
                    .iter()
                    .fold(0u64, |h, &b| step(h, b))
            };
            let (l0, l1, l2, l3) = (lane(0), lane(1), lane(2), lane(3));
            let (mut h0, mut h1, mut h2, mut h3) = (*hash, warm(1), warm(2), warm(3));
            let mut met = false;
            for j in 0..Self::BLOCK {
                h0 = step(h0, l0[j]);
                h1 = step(h1, l1[j]);
                h2 = step(h2, l2[j]);
                h3 = step(h3, l3[j]);
                if (h0 & mask == 0) | (h1 & mask == 0) | (h2 & mask == 0) | (h3 & mask == 0) {
                    met = true;
                    break;
                }
            }
            if met {
                // The first cut point is in this window: the one chain from
                // the window's start finds it.
                break;
            }
            *hash = h3;
            at += window;
        }
        for (p, &b) in data[at..end].iter().enumerate() {
            *hash = step(*hash, b);
            if *hash & mask == 0 {
                return Some(at + p);
            }
        }
        None
    }
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
    gear: Option<Gear>,
    buf: Vec<u8>,
}

impl Cutter {
    pub fn new(chunking: Chunking) -> Self {
        let size = match chunking {
            // Room for one maximal chunk and a read-ahead past it.
            Chunking::Cdc { .. } => CDC_MAX as usize + (1 << 20),
            Chunking::Fixed(n) => n,
        };
        let gear = match chunking {
            Chunking::Cdc { seed } => Some(Gear::new(seed)),
            Chunking::Fixed(_) => None,
        };
        Cutter {
            gear,
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
            match &self.gear {
                None => {
                    f(data)?;
                    used = filled;
                }
                Some(gear) => {
                    while used < filled {
                        let length = gear.cut(&data[used..]);
                        let end = used + length;
                        // A chunk that runs into the end of the buffer may
                        // continue in bytes not read yet: cut it next round.
                        if !eof && end == filled && length < CDC_MAX as usize {
                            break;
                        }
                        f(&data[used..end])?;
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

    /// fastcdc's own cut of `data` with the same parameters.
    fn fastcdc_cut(
        seed: u64,
        sizes: (usize, usize, usize),
        masks: (u64, u64),
        data: &[u8],
    ) -> usize {
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(seed);
        let (_, n) = fastcdc::v2020::cut_gear(
            data,
            sizes.0,
            sizes.1,
            sizes.2,
            masks.0,
            masks.1,
            masks.0 << 1,
            masks.1 << 1,
            &gear,
            &gear_ls,
        );
        n
    }

    #[test]
    fn lanes_cut_exactly_where_fastcdc_cuts() {
        use fastcdc::v2020::MASKS;
        // The repository's sizes, and small ones with loose masks, where
        // cut points fall in every lane, often several in one window.
        let cases = [
            ((CDC_MIN as usize, CDC_AVG as usize, CDC_MAX as usize), None),
            ((2048, 8192, 65536), Some((MASKS[14], MASKS[12]))),
            ((64, 4096, 1 << 20), Some((MASKS[12], MASKS[8]))),
            ((0, 64 << 10, 1 << 20), Some((MASKS[16], MASKS[14]))),
        ];
        let data = crate::repo::test_noise(11, 12 << 20);
        // Low-entropy data (runs and repeats) too, as in database pages.
        let mut runs = Vec::new();
        for i in 0..(9u32 << 20) {
            runs.push(if i % 8192 < 6000 {
                0x20
            } else {
                (i / 7 % 251) as u8
            });
        }
        for (sizes, masks) in cases {
            for seed in [0, 1, 0x5eed_5eed_1234] {
                let gear = match masks {
                    None => Gear::new(seed),
                    Some((s, l)) => Gear::with_masks(seed, sizes, s, l),
                };
                let masks = (gear.mask_s, gear.mask_l);
                for input in [&data[..], &runs[..]] {
                    let (mut at, mut cuts) = (0, 0);
                    while at < input.len() {
                        let rest = &input[at..];
                        let want = fastcdc_cut(seed, sizes, masks, rest);
                        assert_eq!(gear.cut(rest), want, "at {at} with {sizes:?}, seed {seed}");
                        at += want;
                        cuts += 1;
                    }
                    assert!(cuts > 1);
                    // Odd and short lengths: the end of a file.
                    for len in [0, 1, 63, sizes.0, sizes.0 + 1, sizes.1 - 1, sizes.1 + 4097] {
                        let rest = &input[..len.min(input.len())];
                        assert_eq!(gear.cut(rest), fastcdc_cut(seed, sizes, masks, rest));
                    }
                }
            }
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
