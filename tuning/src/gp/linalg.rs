//! Linear algebra on row-major matrices with lower-triangular (Cholesky) factors.

/// Factorises the symmetric positive-definite `a` (n × n, row-major; only the lower
/// triangle is read) in place into its lower Cholesky factor `L` (`a = L Lᵀ`), zeroing
/// the upper triangle. Returns `false` when `a` is not numerically positive definite.
pub(super) fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let s = a[j * n + j] - a[j * n..j * n + j].iter().map(|v| v * v).sum::<f64>();
        if !(s > 0.0 && s.is_finite()) {
            return false;
        }
        let ljj = s.sqrt();
        a[j * n + j] = ljj;
        a[j * n + j + 1..(j + 1) * n].fill(0.0);
        for i in j + 1..n {
            let (head, tail) = a.split_at_mut(i * n);
            let lj = &head[j * n..j * n + j];
            let row_i = &mut tail[..n];
            let dot: f64 = row_i[..j].iter().zip(lj).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / ljj;
        }
    }
    true
}

/// Solves `L x = b` in place (`b` becomes `x`).
pub(super) fn solve_lower(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let row = &l[i * n..i * n + i];
        let dot: f64 = row.iter().zip(&b[..i]).map(|(a, x)| a * x).sum();
        b[i] = (b[i] - dot) / l[i * n + i];
    }
}

/// Solves `Lᵀ x = b` in place.
pub(super) fn solve_upper_t(l: &[f64], n: usize, b: &mut [f64]) {
    for i in (0..n).rev() {
        b[i] /= l[i * n + i];
        let xi = b[i];
        for (bk, lik) in b[..i].iter_mut().zip(&l[i * n..i * n + i]) {
            *bk -= lik * xi;
        }
    }
}
