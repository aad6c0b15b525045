//! The fixed-point encoding of updates and the pseudorandom masks added to it.
//!
//! Inputs are summed in the ring of 32-bit integers: a coordinate v (already weighted)
//! encodes as round(v · scale) in two's complement, masks are ChaCha20 keystreams read as
//! little-endian words, and everything adds with wrapping. As long as the true sum stays in
//! i32's range — which [`scale_for`] guarantees — the wrapped sum reads back exactly.

use rand::rngs::ChaCha20Rng;
use rand::{Rng, SeedableRng};
use zeroize::Zeroizing;

use super::wire::MAX_COHORT;

/// Whether a mask is added to or subtracted from an accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sign {
    /// Wrapping addition.
    Plus,
    /// Wrapping subtraction.
    Minus,
}

/// Words of keystream generated per refill: 4 KiB, small enough to stay in L1.
const CHUNK_WORDS: usize = 1024;

/// Adds (or subtracts) the ChaCha20 keystream of `seed` to `acc`, word by word, wrapping.
///
/// The stream is the RFC 8439 keystream for key `seed`, nonce 0 and counter 0, read as
/// little-endian u32: agents and aggregator expand identical masks from the same seed.
pub(crate) fn add_prg(acc: &mut [u32], seed: &[u8; 32], sign: Sign) {
    add_prg_from(acc, seed, sign, 0);
}

/// Adds (or subtracts) the keystream of `seed` from word `offset` on to `acc`: the part
/// of [`add_prg`] over `offset..offset + acc.len()`.
fn add_prg_from(acc: &mut [u32], seed: &[u8; 32], sign: Sign, offset: usize) {
    let mut prg = ChaCha20Rng::from_seed(*seed);
    prg.set_word_pos(offset as u128);
    let mut buffer = Zeroizing::new([0u8; CHUNK_WORDS * 4]);
    for chunk in acc.chunks_mut(CHUNK_WORDS) {
        let bytes = &mut buffer[..chunk.len() * 4];
        prg.fill_bytes(bytes);
        let (words, _) = bytes.as_chunks::<4>();
        let pairs = chunk.iter_mut().zip(words);
        match sign {
            Sign::Plus => pairs.for_each(|(a, w)| *a = a.wrapping_add(u32::from_le_bytes(*w))),
            Sign::Minus => pairs.for_each(|(a, w)| *a = a.wrapping_sub(u32::from_le_bytes(*w))),
        }
    }
}

/// Words below which splitting the masks across threads costs more than it saves.
const PARALLEL_FROM_WORDS: usize = 1 << 16;

/// Applies every `(seed, sign)` keystream to `acc`, as [`add_prg`] one after another
/// would, with `acc` split into contiguous parts across up to `threads` threads: each
/// thread seeks every stream to the start of its part. The aggregator's unmasking is one
/// stream per contributing agent over the whole update, so this is where its time goes.
pub(crate) fn add_prgs(acc: &mut [u32], masks: &[(Zeroizing<[u8; 32]>, Sign)], threads: usize) {
    let threads = threads.clamp(1, acc.len().div_ceil(PARALLEL_FROM_WORDS).max(1));
    if threads == 1 {
        for (seed, sign) in masks {
            add_prg(acc, seed, *sign);
        }
        return;
    }
    // Parts of whole ChaCha blocks (16 words), so no block is generated twice.
    let part = acc.len().div_ceil(threads).next_multiple_of(16);
    std::thread::scope(|scope| {
        for (i, slice) in acc.chunks_mut(part).enumerate() {
            scope.spawn(move || {
                for (seed, sign) in masks {
                    add_prg_from(slice, seed, *sign, i * part);
                }
            });
        }
    });
}

/// Headroom for rounding: each of at most 255 inputs rounds by at most 1/2.
const ROUNDING_HEADROOM: f64 = (MAX_COHORT / 2 + 1) as f64;

/// The largest magnitude an encoded sum may reach before rounding: i32::MAX less the
/// rounding headroom.
const MAX_ENCODED: f64 = i32::MAX as f64 - ROUNDING_HEADROOM;

/// The largest fixed-point scale at which the sum of inputs with total weight at most
/// `max_total_weight`, each coordinate clipped to [-clip, clip], cannot overflow i32.
///
/// It is (2^31 − 1 − 128) / (clip · max_total_weight): the 128 leaves room for each of up to
/// 255 inputs to round by 1/2. The quantisation error of a coordinate of the weighted mean
/// is then at most n / (2 · scale · total weight) for n inputs.
/// For a clip or bound of zero the result is infinite (and refused by the round).
pub fn scale_for(clip: f32, max_total_weight: u64) -> f64 {
    MAX_ENCODED / (f64::from(clip) * max_total_weight as f64)
}

/// Encodes `weight · clip(update)` at `scale`, as two's-complement words.
///
/// Every value is assumed finite (NaN would encode as 0).
pub(crate) fn encode(update: &[f32], weight: u64, clip: f32, scale: f64) -> Vec<u32> {
    let factor = weight as f64 * scale;
    // max/min rather than clamp: they never panic, whatever clip is.
    update
        .iter()
        .map(|&v| (f64::from(v.max(-clip).min(clip)) * factor).round() as i64 as u32)
        .collect()
}

/// Decodes an unmasked sum of inputs with total weight `total_weight` into their weighted mean.
pub(crate) fn decode(sum: &[u32], scale: f64, total_weight: u64) -> Vec<f32> {
    let divisor = scale * total_weight as f64;
    sum.iter().map(|&w| (f64::from(w as i32) / divisor) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prg_is_the_standard_chacha20_keystream() {
        // RFC 8439 appendix A.1, test vector 1: all-zero key and nonce, block counter 0.
        let mut acc = vec![0u32; 4];
        add_prg(&mut acc, &[0; 32], Sign::Plus);
        assert_eq!(acc, [0xade0_b876, 0x903d_f1a0, 0xe56a_5d40, 0x28bd_8653]);
    }

    #[test]
    fn plus_then_minus_cancels_across_chunks() {
        let mut acc: Vec<u32> = (0..3 * CHUNK_WORDS as u32 + 7).collect();
        let original = acc.clone();
        add_prg(&mut acc, &[7; 32], Sign::Plus);
        let changed = acc.iter().zip(&original).filter(|(a, b)| a != b).count();
        assert!(changed > acc.len() * 99 / 100);
        add_prg(&mut acc, &[7; 32], Sign::Minus);
        assert_eq!(acc, original);
    }

    #[test]
    fn the_stream_does_not_depend_on_the_chunking() {
        let mut long = vec![0u32; CHUNK_WORDS + 3];
        add_prg(&mut long, &[9; 32], Sign::Plus);
        let mut short = vec![0u32; 5];
        add_prg(&mut short, &[9; 32], Sign::Plus);
        assert_eq!(long[..5], short);
    }

    #[test]
    fn masks_split_across_threads_equal_masks_in_turn() {
        // Long enough to split; not a multiple of a block or of the parts.
        let len = 3 * PARALLEL_FROM_WORDS + 37;
        let masks: Vec<(Zeroizing<[u8; 32]>, Sign)> = (0..5u8)
            .map(|i| {
                (
                    Zeroizing::new([i; 32]),
                    if i % 2 == 0 { Sign::Plus } else { Sign::Minus },
                )
            })
            .collect();
        let mut in_turn: Vec<u32> = (0..len as u32).collect();
        for (seed, sign) in &masks {
            add_prg(&mut in_turn, seed, *sign);
        }
        for threads in [1, 2, 3, 4, 7] {
            let mut split: Vec<u32> = (0..len as u32).collect();
            add_prgs(&mut split, &masks, threads);
            assert!(split == in_turn, "{threads} threads");
        }
    }

    #[test]
    fn fixed_point_round_trips_within_half_a_step() {
        let scale = scale_for(1.0, 10);
        let update = [0.0, 0.5, -0.5, 1e-9, -0.999_999, 0.123_456_78];
        let decoded = decode(&encode(&update, 3, 1.0, scale), scale, 3);
        for (v, d) in update.iter().zip(&decoded) {
            assert!(
                (f64::from(*v) - f64::from(*d)).abs() <= 0.5 / (3.0 * scale) + 1e-7,
                "{v} -> {d}"
            );
        }
    }

    #[test]
    fn values_are_clipped_before_encoding() {
        let scale = scale_for(0.5, 1);
        let decoded = decode(&encode(&[3.0, -3.0, f32::MAX], 1, 0.5, scale), scale, 1);
        assert_eq!(decoded, [0.5, -0.5, 0.5]);
    }

    #[test]
    fn negative_sums_wrap_and_come_back() {
        let scale = scale_for(1.0, 4);
        let a = encode(&[-0.75, 0.25, -1.0], 1, 1.0, scale);
        let b = encode(&[0.25, -0.5, -1.0], 3, 1.0, scale);
        assert!(a[0] > u32::MAX / 2, "a negative value is a large word");
        let sum: Vec<u32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
        let mean = decode(&sum, scale, 4);
        let expected = [(-0.75 + 3.0 * 0.25) / 4.0, (0.25 - 3.0 * 0.5) / 4.0, -1.0];
        for (m, e) in mean.iter().zip(expected) {
            assert!((f64::from(*m) - e).abs() < 1e-7, "{m} vs {e}");
        }
    }

    #[test]
    fn the_extreme_sum_does_not_overflow() {
        // 255 inputs at the clip, with the whole weight budget: the worst case scale_for covers.
        let (clip, inputs) = (0.3f32, 255u64);
        let scale = scale_for(clip, inputs);
        let mut sum = [0u32; 2];
        for _ in 0..inputs {
            let word = encode(&[clip, -clip], 1, clip, scale);
            sum[0] = sum[0].wrapping_add(word[0]);
            sum[1] = sum[1].wrapping_add(word[1]);
        }
        let mean = decode(&sum, scale, inputs);
        assert!(
            (mean[0] - clip).abs() < 1e-6 && (mean[1] + clip).abs() < 1e-6,
            "{mean:?}"
        );
    }
}
