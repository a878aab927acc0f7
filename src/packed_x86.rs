//! x86-64 kernel of the packed path of a dense layer (see `matmul`), for products too large for the
//! unpacked small-batch kernel: `w` is copied, one block of the inner dimension at a time, into
//! panels two vectors wide, in the order the register kernel of `small_batch_x86` reads them.
//!
//! Why pack: read in place, a tile's band of `w` is a few dozen bytes from each row of a matrix whose
//! rows lie kilobytes apart, so every step of the inner loop touches a new page; packed, the tile
//! streams one contiguous panel, and the whole block stays in L2 while every row block of `x` passes
//! over it. A row block of `x` is packed too (a small copy, reused by every panel).

use core::ops::Range;

use crate::element::Float;
use crate::small_batch::DenseProblem;
use crate::small_batch_x86::{tile, Epilogue, Tile, Vector};

/// Bytes of each row of `w` the packed block covers per column, i.e. rows of the inner dimension
/// packed at once: 512 for f32, 256 for f64. A block is that many rows by the columns one call
/// computes (at most 512 from `matmul`): 1 MiB, half of this machine's 2 MiB L2, so it stays there
/// while every row block passes over it. Deeper blocks mean fewer passes that load and store the
/// output tiles (one per block).
const DEPTH_BLOCK_BYTES: usize = 2048;

/// Columns `cols` of `out = act(x @ w + bias)` with AVX-512 vectors `V`, in tiles of 14 rows by two
/// vectors: 28 accumulators of the 32 registers (two hold the panel's row, one the broadcast). Each
/// panel row loaded from L2 then feeds 28 FMAs instead of 16: 8 rows measured 4-11% slower at
/// n = 1024-2048 (paired runs, 1 and 2 threads); LLVM still keeps all 28 in registers.
///
/// # Safety
/// The CPU must support AVX-512F; `p` must have the lengths `DenseProblem::check` asserts, `out` must
/// point to (m, n) elements, and `cols` must lie within `0..n`.
#[target_feature(enable = "avx512f")]
pub unsafe fn dense_packed_avx512<V: Vector>(
    p: &DenseProblem<'_, V::Elem>,
    cols: Range<usize>,
    out: *mut V::Elem,
) {
    packed::<V, 14>(p, cols, out)
}

/// As `dense_packed_avx512`, with AVX2+FMA vectors: 4 rows by two vectors, 8 of the 16 registers
/// (the small-batch kernel's shape for AVX2).
///
/// # Safety
/// The CPU must support AVX2 and FMA; otherwise as `dense_packed_avx512`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dense_packed_avx2<V: Vector>(
    p: &DenseProblem<'_, V::Elem>,
    cols: Range<usize>,
    out: *mut V::Elem,
) {
    packed::<V, 4>(p, cols, out)
}

#[inline(always)]
unsafe fn packed<V: Vector, const MR: usize>(
    p: &DenseProblem<'_, V::Elem>,
    cols: Range<usize>,
    out: *mut V::Elem,
) {
    if cols.is_empty() || p.m == 0 {
        return;
    }
    let width = 2 * V::LANES;
    let depth_block = DEPTH_BLOCK_BYTES / core::mem::size_of::<V::Elem>();
    let mut panels: Vec<V::Elem> =
        Vec::with_capacity(cols.len().div_ceil(width) * width * p.k.min(depth_block));
    let mut k0 = 0;
    // At least one pass, so that k = 0 still writes the bias.
    loop {
        let depth = (p.k - k0).min(depth_block);
        pack(p, k0..k0 + depth, cols.clone(), width, &mut panels);
        let block = Block {
            p,
            k0,
            depth,
            cols: cols.clone(),
            panels: &panels,
            out,
        };
        let mut r = 0;
        while r + MR <= p.m {
            block.rows::<V, MR>(r);
            r += MR;
        }
        while r + 4 <= p.m {
            block.rows::<V, 4>(r);
            r += 4;
        }
        while r < p.m {
            block.rows::<V, 1>(r);
            r += 1;
        }
        k0 += depth;
        if k0 >= p.k {
            break;
        }
    }
}

/// Copies `w[depth, cols]` into `panels`: for each run of `width` columns, `depth` rows of `width`
/// elements, the last run padded with zeros.
fn pack<E: Float>(
    p: &DenseProblem<'_, E>,
    depth: Range<usize>,
    cols: Range<usize>,
    width: usize,
    panels: &mut Vec<E>,
) {
    panels.clear();
    for j in cols.clone().step_by(width) {
        let used = (cols.end - j).min(width);
        for kk in depth.clone() {
            let row = kk * p.n + j;
            panels.extend_from_slice(&p.w[row..row + used]);
            panels.extend(core::iter::repeat_n(E::ZERO, width - used));
        }
    }
}

/// One packed block of the inner dimension, ready for the row blocks of `x` to pass over it.
struct Block<'a, 'p, E> {
    p: &'a DenseProblem<'p, E>,
    k0: usize,
    depth: usize,
    cols: Range<usize>,
    panels: &'a [E],
    out: *mut E,
}

impl<E: Float> Block<'_, '_, E> {
    /// Rows `r0..r0 + R`, every panel. `x` is read in place: the rows' slice of it is reused by every
    /// panel, from L1. (Packing it too was measured slower: LLVM then kept the accumulators in memory.)
    #[inline(always)]
    unsafe fn rows<V: Vector<Elem = E>, const R: usize>(&self, r0: usize) {
        let (p, width) = (self.p, 2 * V::LANES);
        let last_block = self.k0 + self.depth == p.k;
        for (i, j) in self.cols.clone().step_by(width).enumerate() {
            let used = (self.cols.end - j).min(width);
            let t = Tile {
                x: p.x.as_ptr().add(r0 * p.k + self.k0),
                x_stride: p.k,
                w: self.panels.as_ptr().add(i * width * self.depth),
                w_stride: width,
                depth: self.depth,
                out: self.out.add(r0 * p.n + j),
                out_stride: p.n,
                accumulate: self.k0 > 0,
                epilogue: last_block.then(|| Epilogue {
                    bias: p.bias.map(|b| b.as_ptr().add(j)),
                    relu: p.relu,
                }),
            };
            if used > V::LANES {
                tile::<V, R, 2, true>(&t, used - V::LANES);
            } else {
                tile::<V, R, 1, true>(&t, used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::arch::x86_64::{__m256, __m256d, __m512, __m512d};
    use std::arch::is_x86_feature_detected;

    /// Every ISA this CPU has, both element types, against the f64 triple loop on small integers
    /// (exact in both): row counts around the row-block sizes, ragged panels, inner dimensions over
    /// one packed block (so later blocks add to the output), column ranges that start mid-matrix.
    #[test]
    fn each_instruction_set_matches_the_triple_loop_on_every_column_range() {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = is_x86_feature_detected!("avx512f");
        for &(m, k, n) in &[
            (13, 7, 45),
            (8, 300, 33),
            (21, 600, 70),
            (5, 0, 17),
            (3, 257, 16),
        ] {
            let x: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 11) as f64) - 5.0).collect();
            let w: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 13) as f64) - 6.0).collect();
            let b: Vec<f64> = (0..n).map(|i| (i % 3) as f64 - 1.0).collect();
            let (x32, w32, b32): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                x.iter().map(|&v| v as f32).collect(),
                w.iter().map(|&v| v as f32).collect(),
                b.iter().map(|&v| v as f32).collect(),
            );
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
                let p32 = DenseProblem {
                    x: &x32,
                    w: &w32,
                    bias: Some(&b32[..]),
                    m,
                    k,
                    n,
                    relu,
                };
                let want = p.reference();
                // Two calls covering the columns between them, as two bands of `matmul` do.
                let split = (n / 2).min(32);
                let mut runs: Vec<(&str, Vec<f64>)> = Vec::new();
                let mut out64 = vec![f64::NAN; m * n];
                let mut out32 = vec![f32::NAN; m * n];
                // SAFETY (all): each kernel runs only where its features were detected; the
                // slices are (m, k), (k, n) and (m, n).
                if avx2 {
                    for cols in [0..split, split..n] {
                        unsafe {
                            dense_packed_avx2::<__m256d>(&p, cols.clone(), out64.as_mut_ptr())
                        };
                        unsafe { dense_packed_avx2::<__m256>(&p32, cols, out32.as_mut_ptr()) };
                    }
                    runs.push(("avx2 f64", out64.clone()));
                    runs.push(("avx2 f32", out32.iter().map(|&v| v as f64).collect()));
                }
                if avx512 {
                    out64.fill(f64::NAN);
                    out32.fill(f32::NAN);
                    for cols in [0..split, split..n] {
                        unsafe {
                            dense_packed_avx512::<__m512d>(&p, cols.clone(), out64.as_mut_ptr())
                        };
                        unsafe { dense_packed_avx512::<__m512>(&p32, cols, out32.as_mut_ptr()) };
                    }
                    runs.push(("avx512 f64", out64.clone()));
                    runs.push(("avx512 f32", out32.iter().map(|&v| v as f64).collect()));
                }
                for (name, got) in runs {
                    assert_eq!(got, want, "{name} m={m} k={k} n={n} relu={relu}");
                }
            }
        }
    }
}
