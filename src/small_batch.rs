//! The small-batch path of a dense layer: `out = act(x @ w + bias)` for a handful of rows.
//!
//! A GEMM library packs its operands into panels first; for one to a few rows that packing costs more
//! than the product itself. Here each row block keeps a tile of output columns in registers and walks
//! down `w`'s rows, so every row of `w` is read contiguously once per row block and nothing is packed
//! or allocated. On x86-64 the AVX-512 or AVX2+FMA kernels of `small_batch_x86` are chosen at run time
//! (no `-C target-cpu` needed); elsewhere a portable loop written for the autovectorizer does the work.

use crate::element::{relu, Float};

/// Up to this many rows this kernel is always the fastest path, whatever the size of `w`.
pub const MAX_ROWS: usize = 16;

/// Whether this CPU runs the SIMD kernels (else the portable loop, which is no match for a GEMM library).
pub fn has_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected;
        if is_x86_feature_detected!("avx512f")
            || (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
        {
            return true;
        }
    }
    false
}

/// One dense-layer problem on row-major slices: `x` is (m, k), `w` is (k, n), `bias` is (n,).
#[derive(Clone, Copy)]
pub struct DenseProblem<'a, T> {
    pub x: &'a [T],
    pub w: &'a [T],
    pub bias: Option<&'a [T]>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub relu: bool,
}

impl DenseProblem<'_, f64> {
    /// The plain triple loop, in f64: what every kernel path is tested against.
    #[cfg(test)]
    pub(crate) fn reference(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.m * self.n];
        for i in 0..self.m {
            for j in 0..self.n {
                let s: f64 = (0..self.k)
                    .map(|kk| self.x[i * self.k + kk] * self.w[kk * self.n + j])
                    .sum::<f64>()
                    + self.bias.map_or(0.0, |b| b[j]);
                out[i * self.n + j] = if self.relu { s.max(0.0) } else { s };
            }
        }
        out
    }
}

impl<T: Float> DenseProblem<'_, T> {
    fn check(&self, out: &[T]) {
        assert_eq!(self.x.len(), self.m * self.k, "x length");
        assert_eq!(self.w.len(), self.k * self.n, "w length");
        assert_eq!(out.len(), self.m * self.n, "out length");
        if let Some(b) = self.bias {
            assert_eq!(b.len(), self.n, "bias length");
        }
    }
}

/// `out = act(x @ w + bias)`, row by row, with no allocation and no threads.
pub fn dense<T: Float>(p: &DenseProblem<'_, T>, out: &mut [T]) {
    p.check(out);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: lengths just checked; `out` is borrowed exclusively.
    if unsafe { T::dense_simd(p, 0..p.n, out.as_mut_ptr()) } {
        return;
    }
    dense_portable(p, out);
}

/// Output columns `cols` of `out = act(x @ w + bias)`, leaving the others alone: what lets two
/// threads each compute half of the columns (and read half of `w`). Needs the SIMD kernels; returns
/// false, having written nothing, on a CPU without them (`has_simd`).
///
/// # Safety
/// `p` must have the lengths `DenseProblem::check` asserts, `out` must point to (m, n) elements,
/// `cols` must lie within `0..n`, and nothing else may access those columns of `out` meanwhile.
pub unsafe fn dense_columns<T: Float>(
    p: &DenseProblem<'_, T>,
    cols: core::ops::Range<usize>,
    out: *mut T,
) -> bool {
    debug_assert!(cols.end <= p.n);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract is the kernel's.
    return unsafe { T::dense_simd(p, cols, out) };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, cols, out);
        false
    }
}

/// Up to this many rows of `x`, the SIMD kernels lay their vectors on `w`'s alignment grid
/// (`grid_shift`). There reading `w` from L2 bounds the time, and numpy's weights usually start 16 or
/// 48 bytes into a cache line, so that every full-width load straddles two lines: a batch-1 layer of
/// 784 x 128 took 1.35-1.4x as long as on 64-byte-aligned weights. The grid can cost one vector more
/// per row (9 instead of 8 for 128 columns); from 8 rows on, where the multiply-adds bound the time,
/// that extra vector ate what the aligned loads saved.
pub const GRID_MAX_ROWS: usize = 7;

/// Elements between the last `lanes`-aligned address at or before `w` and `w`'s first element: where
/// the SIMD kernels start their vectors (see `small_batch_x86`), so that every load of `w` is one
/// aligned vector. 0, and vectors that start at each part's first column, when `m` is over
/// `GRID_MAX_ROWS`, when rows of `w` start at different alignments (`n` not a multiple of `lanes`),
/// or when `w` is not aligned to its element size.
pub(crate) fn grid_shift<T>(w: &[T], m: usize, n: usize, lanes: usize) -> usize {
    let size = core::mem::size_of::<T>();
    let address = w.as_ptr() as usize;
    if m > GRID_MAX_ROWS || lanes == 0 || !n.is_multiple_of(lanes) || !address.is_multiple_of(size)
    {
        return 0;
    }
    address / size % lanes
}

/// Where to split the columns of `p` between two threads (`dense_columns`): on a vector boundary of
/// the grid the kernel lays (`grid_shift`), half of the vectors each, the odd one to the first part,
/// which `matmul` gives the calling thread: it starts a quarter of a microsecond before the partner
/// does. (At batch 1-4 with 9 vectors, 5 for the caller ran 6-17 % faster than 4 in three of four
/// paired runs.)
pub fn column_split<T: Float>(p: &DenseProblem<'_, T>) -> usize {
    #[cfg(target_arch = "x86_64")]
    let lanes = T::simd_lanes();
    #[cfg(not(target_arch = "x86_64"))]
    let lanes = 0;
    if lanes == 0 {
        return p.n / 2;
    }
    let shift = grid_shift(p.w, p.m, p.n, lanes);
    let vectors = (shift + p.n).div_ceil(lanes);
    (vectors.div_ceil(2) * lanes).saturating_sub(shift).min(p.n)
}

#[inline(always)]
fn dense_portable<T: Float>(p: &DenseProblem<'_, T>, out: &mut [T]) {
    let mut r = 0;
    while r + 4 <= p.m {
        row_block::<T, 4>(p, r, out);
        r += 4;
    }
    match p.m - r {
        3 => row_block::<T, 3>(p, r, out),
        2 => row_block::<T, 2>(p, r, out),
        1 => row_block::<T, 1>(p, r, out),
        _ => {}
    }
}

/// Rows `r0..r0 + R`: the widest column tiles that fit the register budget first, narrower ones for the rest.
#[inline(always)]
fn row_block<T: Float, const R: usize>(p: &DenseProblem<'_, T>, r0: usize, out: &mut [T]) {
    let mut j = 0;
    j = column_tiles::<T, R, 64>(p, r0, j, out);
    j = column_tiles::<T, R, 32>(p, r0, j, out);
    j = column_tiles::<T, R, 16>(p, r0, j, out);
    j = column_tiles::<T, R, 8>(p, r0, j, out);
    j = column_tiles::<T, R, 4>(p, r0, j, out);
    column_tiles::<T, R, 1>(p, r0, j, out);
}

/// Output columns `j..` in tiles of `TILE`, while a whole tile fits; returns the first column not done.
// Index loops over the constant-size tile keep its shape plain to the autovectorizer.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn column_tiles<T: Float, const R: usize, const TILE: usize>(
    p: &DenseProblem<'_, T>,
    r0: usize,
    mut j: usize,
    out: &mut [T],
) -> usize {
    if R * TILE > T::ACC_BUDGET {
        return j;
    }
    let (k, n) = (p.k, p.n);
    let xs: [&[T]; R] = core::array::from_fn(|r| &p.x[(r0 + r) * k..(r0 + r + 1) * k]);
    while j + TILE <= n {
        let mut acc = [[T::ZERO; TILE]; R];
        for kk in 0..k {
            let w_row: &[T; TILE] = p.w[kk * n + j..kk * n + j + TILE].try_into().unwrap();
            for r in 0..R {
                let xv = xs[r][kk];
                for t in 0..TILE {
                    acc[r][t] = xv * w_row[t] + acc[r][t];
                }
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            let out_row = &mut out[(r0 + r) * n + j..(r0 + r) * n + j + TILE];
            for t in 0..TILE {
                // The bias is added after the dot product, as numpy's `x @ w + b` does.
                let mut v = acc_row[t];
                if let Some(b) = p.bias {
                    v = v + b[j + t];
                }
                out_row[t] = if p.relu { relu(v) } else { v };
            }
        }
        j += TILE;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook triple loop, in f64, as the reference.
    fn reference(p: &DenseProblem<'_, f64>) -> Vec<f64> {
        let mut out = vec![0.0; p.m * p.n];
        for i in 0..p.m {
            for j in 0..p.n {
                let mut s = 0.0;
                for kk in 0..p.k {
                    s += p.x[i * p.k + kk] * p.w[kk * p.n + j];
                }
                if let Some(b) = p.bias {
                    s += b[j];
                }
                out[i * p.n + j] = if p.relu { s.max(0.0) } else { s };
            }
        }
        out
    }

    fn values(len: usize, seed: u64) -> Vec<f64> {
        // A small LCG: deterministic, no dev-dependency.
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_the_triple_loop_for_every_row_count_and_ragged_widths() {
        for m in 0..=9 {
            for &(k, n) in &[(0, 3), (1, 1), (7, 10), (13, 129), (784, 128), (5, 71)] {
                let (x, w, b) = (values(m * k, 1), values(k * n, 2), values(n, 3));
                for relu in [false, true] {
                    let p = DenseProblem {
                        x: &x,
                        w: &w,
                        bias: Some(&b),
                        m,
                        k,
                        n,
                        relu,
                    };
                    let mut out = vec![f64::NAN; m * n];
                    dense(&p, &mut out);
                    let want = reference(&p);
                    for (got, want) in out.iter().zip(&want) {
                        assert!(
                            (got - want).abs() < 1e-9,
                            "m={m} k={k} n={n}: {got} vs {want}"
                        );
                    }
                    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                    let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                    let p32 = DenseProblem {
                        x: &x32,
                        w: &w32,
                        bias: None,
                        m,
                        k,
                        n,
                        relu: false,
                    };
                    let mut out32 = vec![0f32; m * n];
                    dense(&p32, &mut out32);
                    let want = reference(&DenseProblem {
                        bias: None,
                        relu: false,
                        ..p
                    });
                    for (got, want) in out32.iter().zip(&want) {
                        assert!((*got as f64 - want).abs() < 1e-3, "f32 m={m} k={k} n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn portable_loop_matches_the_triple_loop() {
        for m in 0..=6 {
            for &(k, n) in &[(0, 3), (7, 10), (13, 129)] {
                let (x, w, b) = (values(m * k, 4), values(k * n, 5), values(n, 6));
                let p = DenseProblem {
                    x: &x,
                    w: &w,
                    bias: Some(&b),
                    m,
                    k,
                    n,
                    relu: true,
                };
                let mut out = vec![f64::NAN; m * n];
                dense_portable(&p, &mut out);
                for (got, want) in out.iter().zip(&reference(&p)) {
                    assert!((got - want).abs() < 1e-9, "m={m} k={k} n={n}");
                }
            }
        }
    }

    #[test]
    fn nan_propagates_through_relu() {
        let p = DenseProblem {
            x: &[f32::NAN, 1.0],
            w: &[1.0, 1.0],
            bias: None,
            m: 1,
            k: 2,
            n: 1,
            relu: true,
        };
        let mut out = [0f32];
        dense(&p, &mut out);
        assert!(out[0].is_nan());
    }
}
