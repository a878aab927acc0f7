//! x86-64 SIMD kernels of the small-batch path (see `small_batch`): AVX-512 where the CPU has it,
//! else AVX2+FMA, chosen at run time, so the crate needs no `-C target-cpu`.
//!
//! Written with intrinsics rather than left to the autovectorizer because the point is that an
//! R-rows x NV-vectors accumulator tile stays in registers across the whole k loop while `w` is
//! streamed row by row, which the vectorizer does not promise. The last partial vector of columns
//! uses masked loads and stores, so no scalar tail is needed.

use core::arch::x86_64::*;
use core::ops::Range;

use crate::element::Float;
use crate::small_batch::DenseProblem;

const PREFETCH: bool = true;
const PREFETCH_ROWS: usize = 8;

/// One SIMD register type and its operations. Every method is `inline(always)`, so it is compiled with
/// the target features of the `dense_*` entry point it is inlined into.
pub trait Vector: Copy {
    type Elem: Float;
    const LANES: usize;
    /// Accumulator registers a tile may use: what leaves room for the row of `w` and the broadcasts.
    const ACC_REGISTERS: usize;
    /// Vector registers the instruction set has.
    const REGISTERS: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: Self::Elem) -> Self;
    /// The first `count` (<= LANES) elements at `p`, zeros after.
    unsafe fn load(p: *const Self::Elem, count: usize) -> Self;
    unsafe fn store(p: *mut Self::Elem, v: Self, count: usize);
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// max(0, v) with NaN kept (`max` returns its second operand when either is NaN).
    unsafe fn relu(v: Self) -> Self;
}

/// An AVX2 lane mask selecting the first `count` of `lanes` 32-bit lanes, as 8 x i32 (all-ones = on).
#[inline(always)]
unsafe fn mask_avx2(count: usize, lanes: usize) -> __m256i {
    // Lane i of an f64 vector spans two i32 lanes, so scale the count.
    let on = (count * 8 / lanes) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(on),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

impl Vector for __m256 {
    type Elem = f32;
    const LANES: usize = 8;
    const ACC_REGISTERS: usize = 8;
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, count: usize) -> Self {
        if count == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, mask_avx2(count, 8))
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self, count: usize) {
        if count == 8 {
            _mm256_storeu_ps(p, v)
        } else {
            _mm256_maskstore_ps(p, mask_avx2(count, 8), v)
        }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn relu(v: Self) -> Self {
        _mm256_max_ps(_mm256_setzero_ps(), v)
    }
}

impl Vector for __m256d {
    type Elem = f64;
    const LANES: usize = 4;
    const ACC_REGISTERS: usize = 8;
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_pd()
    }
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        _mm256_set1_pd(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f64, count: usize) -> Self {
        if count == 4 {
            _mm256_loadu_pd(p)
        } else {
            _mm256_maskload_pd(p, _mm256_castsi256_pd(mask_avx2(count, 4)).to_mask64())
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: Self, count: usize) {
        if count == 4 {
            _mm256_storeu_pd(p, v)
        } else {
            _mm256_maskstore_pd(p, _mm256_castsi256_pd(mask_avx2(count, 4)).to_mask64(), v)
        }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_pd(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm256_add_pd(a, b)
    }
    #[inline(always)]
    unsafe fn relu(v: Self) -> Self {
        _mm256_max_pd(_mm256_setzero_pd(), v)
    }
}

/// `_mm256_maskload_pd` takes its mask as 4 x i64; the i32 mask built above is that, reinterpreted.
trait ToMask64 {
    unsafe fn to_mask64(self) -> __m256i;
}

impl ToMask64 for __m256d {
    #[inline(always)]
    unsafe fn to_mask64(self) -> __m256i {
        _mm256_castpd_si256(self)
    }
}

impl Vector for __m512 {
    type Elem = f32;
    const LANES: usize = 16;
    // 24 of the 32: with the 784 x 128 layer, 8 rows by 3 vectors ran batch 8 in 0.8-0.9x the time of
    // 8 by 2 (a third fewer broadcasts of `x` per multiply-add) and batch 4 in 0.85-0.95x (4 by 6).
    const ACC_REGISTERS: usize = 24;
    const REGISTERS: usize = 32;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, count: usize) -> Self {
        if count == 16 {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(((1u32 << count) - 1) as __mmask16, p)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self, count: usize) {
        if count == 16 {
            _mm512_storeu_ps(p, v)
        } else {
            _mm512_mask_storeu_ps(p, ((1u32 << count) - 1) as __mmask16, v)
        }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn relu(v: Self) -> Self {
        _mm512_max_ps(_mm512_setzero_ps(), v)
    }
}

impl Vector for __m512d {
    type Elem = f64;
    const LANES: usize = 8;
    const ACC_REGISTERS: usize = 24;
    const REGISTERS: usize = 32;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_pd()
    }
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        _mm512_set1_pd(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f64, count: usize) -> Self {
        if count == 8 {
            _mm512_loadu_pd(p)
        } else {
            _mm512_maskz_loadu_pd(((1u32 << count) - 1) as __mmask8, p)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: Self, count: usize) {
        if count == 8 {
            _mm512_storeu_pd(p, v)
        } else {
            _mm512_mask_storeu_pd(p, ((1u32 << count) - 1) as __mmask8, v)
        }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_pd(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm512_add_pd(a, b)
    }
    #[inline(always)]
    unsafe fn relu(v: Self) -> Self {
        _mm512_max_pd(_mm512_setzero_pd(), v)
    }
}

/// `out = act(x @ w + bias)` with AVX2+FMA vectors `V`, for output columns `cols` only.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `p` must have the lengths `DenseProblem::check` asserts, `out`
/// must point to (m, n) elements, and `cols` must lie within `0..n`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dense_avx2<V: Vector>(
    p: &DenseProblem<'_, V::Elem>,
    cols: Range<usize>,
    out: *mut V::Elem,
) {
    dense::<V>(p, cols, out)
}

/// `out = act(x @ w + bias)` with AVX-512 vectors `V`, for output columns `cols` only.
///
/// # Safety
/// The CPU must support AVX-512F; otherwise as `dense_avx2`.
#[target_feature(enable = "avx512f")]
pub unsafe fn dense_avx512<V: Vector>(
    p: &DenseProblem<'_, V::Elem>,
    cols: Range<usize>,
    out: *mut V::Elem,
) {
    dense::<V>(p, cols, out)
}

#[inline(always)]
unsafe fn dense<V: Vector>(p: &DenseProblem<'_, V::Elem>, cols: Range<usize>, out: *mut V::Elem) {
    let mut r = 0;
    if V::ACC_REGISTERS >= 16 {
        // Eight rows by two or three vectors: `w` streamed once for eight rows instead of twice.
        while r + 8 <= p.m {
            row_block::<V, 8>(p, r, cols.clone(), out);
            r += 8;
        }
    }
    while r + 4 <= p.m {
        row_block::<V, 4>(p, r, cols.clone(), out);
        r += 4;
    }
    match p.m - r {
        3 => row_block::<V, 3>(p, r, cols, out),
        2 => row_block::<V, 2>(p, r, cols, out),
        1 => row_block::<V, 1>(p, r, cols, out),
        _ => {}
    }
}

/// Rows `r0..r0 + R` of columns `cols`: the widest tiles that fit the register budget first, then
/// narrower ones, then one masked vector for the columns left.
#[inline(always)]
unsafe fn row_block<V: Vector, const R: usize>(
    p: &DenseProblem<'_, V::Elem>,
    r0: usize,
    cols: Range<usize>,
    out: *mut V::Elem,
) {
    let mut j = cols.start;
    j = tiles::<V, R, 8>(p, r0, j, cols.end, out);
    j = tiles::<V, R, 6>(p, r0, j, cols.end, out);
    j = tiles::<V, R, 4>(p, r0, j, cols.end, out);
    j = tiles::<V, R, 3>(p, r0, j, cols.end, out);
    j = tiles::<V, R, 2>(p, r0, j, cols.end, out);
    j = tiles::<V, R, 1>(p, r0, j, cols.end, out);
    if j < cols.end {
        tile::<V, R, 1, false>(&unpacked_tile(p, r0, j, out), cols.end - j);
    }
}

#[inline(always)]
unsafe fn tiles<V: Vector, const R: usize, const NV: usize>(
    p: &DenseProblem<'_, V::Elem>,
    r0: usize,
    mut j: usize,
    end: usize,
    out: *mut V::Elem,
) -> usize {
    // Past the budget, or with no register left for the row of `w` (shared by several rows; a single
    // row reads it as a memory operand of each multiply-add), LLVM spills accumulators to memory.
    if R * NV > V::ACC_REGISTERS || (R > 1 && R * NV + NV + 1 > V::REGISTERS) {
        return j;
    }
    while j + NV * V::LANES <= end {
        tile::<V, R, NV, false>(&unpacked_tile(p, r0, j, out), V::LANES);
        j += NV * V::LANES;
    }
    j
}

/// The tile at rows `r0..`, columns `j..` of a whole problem, read straight from `x` and `w`.
#[inline(always)]
unsafe fn unpacked_tile<E: Float>(
    p: &DenseProblem<'_, E>,
    r0: usize,
    j: usize,
    out: *mut E,
) -> Tile<E> {
    Tile {
        x: p.x.as_ptr().add(r0 * p.k),
        x_stride: p.k,
        w: p.w.as_ptr().add(j),
        w_stride: p.n,
        depth: p.k,
        out: out.add(r0 * p.n + j),
        out_stride: p.n,
        accumulate: false,
        epilogue: Some(Epilogue {
            bias: p.bias.map(|b| b.as_ptr().add(j)),
            relu: p.relu,
        }),
    }
}

/// Where one R-rows x NV-vectors tile reads and writes. Raw pointers and strides, so that the same
/// register kernel serves operands read in place (`w` with row stride n) and packed (`packed_x86`).
#[derive(Clone, Copy)]
pub(crate) struct Tile<E> {
    /// Row r of the tile's `x` starts at `x + r * x_stride`; `depth` elements of it are used. For a
    /// `PACKED` tile, `x_stride` is R and step kk's values start at `x + kk * R`.
    pub x: *const E,
    pub x_stride: usize,
    /// Row kk of the tile's `w` starts at `w + kk * w_stride`.
    pub w: *const E,
    pub w_stride: usize,
    pub depth: usize,
    pub out: *mut E,
    pub out_stride: usize,
    /// Add to what `out` holds (a later slice of the inner dimension) instead of overwriting it.
    pub accumulate: bool,
    /// Bias and activation, once the whole inner dimension has been summed.
    pub epilogue: Option<Epilogue<E>>,
}

#[derive(Clone, Copy)]
pub(crate) struct Epilogue<E> {
    /// The bias of the tile's first column.
    pub bias: Option<*const E>,
    pub relu: bool,
}

/// One tile: columns `0..(NV - 1) * LANES + last` of `t`; `last` is how many lanes of the last
/// vector are real columns (LANES except for the masked tail). `PACKED`: `w` is a contiguous panel
/// padded with zeros to whole vectors, which the hardware prefetcher follows without help, and `x`
/// is packed inner index first (`packed_x86::pack_x`): step kk's R values at `x + kk * R`.
#[inline(always)]
pub(crate) unsafe fn tile<V: Vector, const R: usize, const NV: usize, const PACKED: bool>(
    t: &Tile<V::Elem>,
    last: usize,
) {
    let lanes = V::LANES;
    let count = |v: usize| if v + 1 == NV { last } else { lanes };
    let mut acc = [[V::zero(); NV]; R];
    let mut w = t.w;
    let mut x = t.x;
    for kk in 0..t.depth {
        let mut wv = [V::zero(); NV];
        for (v, slot) in wv.iter_mut().enumerate() {
            // Packed panels are padded with zeros: whole vectors, and no branch in the loop (which
            // would also cost the accumulators their registers: LLVM then keeps them in memory).
            *slot = V::load(w.add(v * lanes), if PACKED { lanes } else { count(v) });
        }
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // Packed, the R values of this step lie side by side (`x_stride` is R): one pointer,
            // fixed offsets, no address arithmetic per row.
            let xv = if PACKED {
                V::splat(*x.add(r))
            } else {
                V::splat(*x.add(r * t.x_stride + kk))
            };
            for (a, &b) in acc_row.iter_mut().zip(&wv) {
                *a = V::fmadd(xv, b, *a);
            }
        }
        if PREFETCH && !PACKED {
            for v in 0..NV {
                _mm_prefetch::<_MM_HINT_T0>(
                    w.wrapping_add(PREFETCH_ROWS * t.w_stride + v * lanes) as *const i8
                );
            }
        }
        w = w.add(t.w_stride);
        if PACKED {
            x = x.add(R);
        }
    }
    for (r, acc_row) in acc.iter().enumerate() {
        for (v, &a) in acc_row.iter().enumerate() {
            let o = t.out.add(r * t.out_stride + v * lanes);
            let mut s = a;
            if t.accumulate {
                s = V::add(V::load(o, count(v)), s);
            }
            if let Some(e) = t.epilogue {
                // The bias is added after the dot product, as numpy's `x @ w + b` does.
                if let Some(b) = e.bias {
                    s = V::add(s, V::load(b.add(v * lanes), count(v)));
                }
                if e.relu {
                    s = V::relu(s);
                }
            }
            V::store(o, s, count(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::arch::is_x86_feature_detected;

    /// Every ISA this CPU has, for both element types, against the f64 triple loop: all row-block
    /// sizes, every tile width and masked tails.
    #[test]
    fn each_instruction_set_matches_the_triple_loop() {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = is_x86_feature_detected!("avx512f");
        for m in 0..=9 {
            for &(k, n) in &[
                (1, 1),
                (3, 5),
                (17, 10),
                (9, 33),
                (40, 129),
                (5, 200),
                (2, 0),
            ] {
                let x: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 11) as f64) - 5.0).collect();
                let w: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 13) as f64) - 6.0).collect();
                let b: Vec<f64> = (0..n).map(|i| (i % 3) as f64 - 1.0).collect();
                let p = DenseProblem {
                    x: &x,
                    w: &w,
                    bias: Some(&b),
                    m,
                    k,
                    n,
                    relu: m % 2 == 0,
                };
                let want = p.reference();
                let (x32, w32, b32): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                    x.iter().map(|&v| v as f32).collect(),
                    w.iter().map(|&v| v as f32).collect(),
                    b.iter().map(|&v| v as f32).collect(),
                );
                let p32 = DenseProblem {
                    x: &x32,
                    w: &w32,
                    bias: Some(&b32[..]),
                    m,
                    k,
                    n,
                    relu: p.relu,
                };
                let mut runs: Vec<(&str, Vec<f64>)> = Vec::new();
                let mut out64 = vec![f64::NAN; m * n];
                let mut out32 = vec![f32::NAN; m * n];
                // SAFETY (all four): each kernel runs only where its features were detected above.
                if avx2 {
                    unsafe { dense_avx2::<__m256d>(&p, 0..n, out64.as_mut_ptr()) };
                    unsafe { dense_avx2::<__m256>(&p32, 0..n, out32.as_mut_ptr()) };
                    runs.push(("avx2 f64", out64.clone()));
                    runs.push(("avx2 f32", out32.iter().map(|&v| v as f64).collect()));
                }
                if avx512 {
                    unsafe { dense_avx512::<__m512d>(&p, 0..n, out64.as_mut_ptr()) };
                    unsafe { dense_avx512::<__m512>(&p32, 0..n, out32.as_mut_ptr()) };
                    runs.push(("avx512 f64", out64.clone()));
                    runs.push(("avx512 f32", out32.iter().map(|&v| v as f64).collect()));
                }
                for (name, got) in runs {
                    // Small integers: exact in both types.
                    assert_eq!(got, want, "{name} m={m} k={k} n={n}");
                }
            }
        }
    }
}
