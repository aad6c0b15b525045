//! Inner loops over parameter vectors, written so the compiler vectorises them.
//!
//! Element-wise loops (`axpy`, `scale_into`) vectorise as they are. Reductions do not:
//! floating-point addition is not associative, so a plain `sum += x * x` stays scalar.
//! The reductions here keep `LANES` independent partial sums, which the compiler maps to
//! SIMD registers, and add them up at the end.

/// Independent partial sums per reduction: two 256-bit or four 128-bit registers.
const LANES: usize = 16;

/// `acc += w * x`.
pub(crate) fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
    debug_assert_eq!(acc.len(), x.len());
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * v;
    }
}

/// `acc += w * x`, returning `||x||²`, in one pass over `x`.
pub(crate) fn axpy_norm2(acc: &mut [f32], w: f32, x: &[f32]) -> f64 {
    debug_assert_eq!(acc.len(), x.len());
    let mut lanes = [0.0f32; LANES];
    let (acc_chunks, acc_tail) = acc.as_chunks_mut::<LANES>();
    let (x_chunks, x_tail) = x.as_chunks::<LANES>();
    for (a, v) in acc_chunks.iter_mut().zip(x_chunks) {
        for k in 0..LANES {
            a[k] += w * v[k];
            lanes[k] += v[k] * v[k];
        }
    }
    let mut total: f64 = lanes.iter().map(|&l| f64::from(l)).sum();
    for (a, &v) in acc_tail.iter_mut().zip(x_tail) {
        *a += w * v;
        total += f64::from(v * v);
    }
    total
}

/// `out = w * x` (first update of a running sum: no zeroed buffer to read).
pub(crate) fn scaled(w: f32, x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| w * v).collect()
}

/// `x *= w`.
pub(crate) fn scale(x: &mut [f32], w: f32) {
    for v in x {
        *v *= w;
    }
}

/// `||a - b||²`, accumulated in `f32` lanes (callers keep slices short and add the
/// partial results in `f64`).
pub(crate) fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, a_tail) = a.as_chunks::<LANES>();
    let (b_chunks, b_tail) = b.as_chunks::<LANES>();
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for k in 0..LANES {
            let d = x[k] - y[k];
            lanes[k] += d * d;
        }
    }
    let mut total: f32 = lanes.iter().sum();
    for (x, y) in a_tail.iter().zip(b_tail) {
        let d = x - y;
        total += d * d;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_scalar_loops_including_tails() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let y: Vec<f32> = (0..37).map(|i| (i % 5) as f32).collect();
        let mut acc = y.clone();
        let n2 = axpy_norm2(&mut acc, 2.0, &x);
        let want_n2: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
        assert!((n2 - want_n2).abs() < 1e-9);
        for i in 0..37 {
            assert_eq!(acc[i], y[i] + 2.0 * x[i]);
        }
        let d = squared_distance(&x, &y);
        let want_d: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        assert!((d - want_d).abs() < 1e-3);
    }
}
