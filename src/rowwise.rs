//! Per-row reductions for classifier outputs: softmax and argmax, with numpy's NaN semantics.

use crate::element::Float;

/// The row's maximum; NaN if any element is NaN (as `np.max`).
fn row_max<T: Float>(row: &[T]) -> T {
    let mut max = row[0];
    for &v in row {
        if v.is_nan() {
            return v;
        }
        if v > max {
            max = v;
        }
    }
    max
}

/// `out[r] = exp(x[r] - max(x[r])) / sum(...)` for each of the m rows of the (m, n) `x`:
/// the same formula, in the same order, as the usual numpy expression, so NaN and inf behave alike.
pub fn softmax<T: Float>(x: &[T], out: &mut [T], m: usize, n: usize) {
    assert_eq!(x.len(), m * n, "x length");
    assert_eq!(out.len(), m * n, "out length");
    if n == 0 {
        return;
    }
    for (row, out_row) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let max = row_max(row);
        let mut sum = T::ZERO;
        for (o, &v) in out_row.iter_mut().zip(row) {
            let e = (v - max).exp();
            *o = e;
            sum = sum + e;
        }
        for o in out_row.iter_mut() {
            *o = *o / sum;
        }
    }
}

/// The index of each row's maximum, the first one on ties; the first NaN wins (as `np.argmax`).
/// `n` must be at least 1 when `m` is (an empty row has no argmax).
pub fn argmax<T: Float>(x: &[T], out: &mut [i64], m: usize, n: usize) {
    assert_eq!(x.len(), m * n, "x length");
    assert_eq!(out.len(), m, "out length");
    if m == 0 {
        return;
    }
    assert!(n > 0, "argmax of an empty row");
    for (row, o) in x.chunks_exact(n).zip(out.iter_mut()) {
        let mut best = 0;
        for (j, &v) in row.iter().enumerate() {
            if v.is_nan() {
                best = j;
                break;
            }
            if v > row[best] {
                best = j;
            }
        }
        *o = best as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_nan_or_inf_spread_like_numpy() {
        let x = [
            1.0f64,
            2.0,
            3.0,
            f64::NAN,
            0.0,
            1.0,
            f64::INFINITY,
            0.0,
            1.0,
        ];
        let mut out = [0.0; 9];
        softmax(&x, &mut out, 3, 3);
        assert!((out[..3].iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(out[0] < out[1] && out[1] < out[2]);
        assert!(out[3..6].iter().all(|v| v.is_nan()));
        // inf - inf is NaN, so the whole row is NaN, as with numpy.
        assert!(out[6..].iter().all(|v| v.is_nan()));
        softmax::<f32>(&[], &mut [], 4, 0);
    }

    #[test]
    fn argmax_takes_first_maximum_and_first_nan() {
        let x = [
            1.0f32,
            3.0,
            3.0,
            0.0,
            f32::NAN,
            5.0,
            f32::NAN,
            9.0,
            f32::NEG_INFINITY,
        ];
        let mut out = [0i64; 3];
        argmax(&x, &mut out, 3, 3);
        assert_eq!(out, [1, 1, 0]);
    }
}
