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
use crate::small_batch::{grid_shift, DenseProblem};

/// Rows of `w` ahead that an unpacked tile prefetches into L1 ...
const PREFETCH_ROWS: usize = 8;
/// ... from this many rows of `x` per tile. Below it the tile streams `w` with few multiply-adds per
/// line and the hardware keeps up on its own: one-row tiles of a 784 x 128 layer ran 11 % faster
/// without the prefetches, two- and three-row tiles 0-6 % (same-process A/B), and `mlp_forward` at
/// batch 1 6-11 %; from 8 rows the prefetches gain 2-5 %, at 4 rows they make no difference.
const PREFETCH_MIN_ROWS: usize = 4;

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
    /// A selection of lanes, for the masked loads and stores below.
    type Mask: Copy;
    /// Lanes `lo..hi` (`lo < hi <= LANES`).
    unsafe fn mask(lo: usize, hi: usize) -> Self::Mask;
    /// The lanes `m` selects from `p`, zeros elsewhere; memory under the other lanes is not read
    /// (so `p` may point before the start of an array, as the first vector of an aligned tile does).
    unsafe fn load_masked(p: *const Self::Elem, m: Self::Mask) -> Self;
    /// Writes the lanes `m` selects to `p`; memory under the other lanes is not touched.
    unsafe fn store_masked(p: *mut Self::Elem, v: Self, m: Self::Mask);
}

/// AVX2 lanes `lo..hi` of `lanes` (as 8 x i32, all-ones = on; an f64 lane spans two i32 lanes).
#[inline(always)]
unsafe fn range_avx2(lo: usize, hi: usize, lanes: usize) -> __m256i {
    let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let below_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32((hi * 8 / lanes) as i32), index);
    let below_lo = _mm256_cmpgt_epi32(_mm256_set1_epi32((lo * 8 / lanes) as i32), index);
    _mm256_andnot_si256(below_lo, below_hi)
}

/// AVX-512 lanes `lo..hi` as a bit mask.
#[inline(always)]
fn range_bits(lo: usize, hi: usize) -> u32 {
    ((1u32 << hi) - 1) & !((1u32 << lo) - 1)
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
    type Mask = __m256i;
    #[inline(always)]
    unsafe fn mask(lo: usize, hi: usize) -> __m256i {
        range_avx2(lo, hi, 8)
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, m: __m256i) -> Self {
        _mm256_maskload_ps(p, m)
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, v: Self, m: __m256i) {
        _mm256_maskstore_ps(p, m, v)
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
    type Mask = __m256i;
    #[inline(always)]
    unsafe fn mask(lo: usize, hi: usize) -> __m256i {
        range_avx2(lo, hi, 4)
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f64, m: __m256i) -> Self {
        _mm256_maskload_pd(p, m)
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f64, v: Self, m: __m256i) {
        _mm256_maskstore_pd(p, m, v)
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
    type Mask = __mmask16;
    #[inline(always)]
    unsafe fn mask(lo: usize, hi: usize) -> __mmask16 {
        range_bits(lo, hi) as __mmask16
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, m: __mmask16) -> Self {
        _mm512_maskz_loadu_ps(m, p)
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, v: Self, m: __mmask16) {
        _mm512_mask_storeu_ps(p, m, v)
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
    type Mask = __mmask8;
    #[inline(always)]
    unsafe fn mask(lo: usize, hi: usize) -> __mmask8 {
        range_bits(lo, hi) as __mmask8
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f64, m: __mmask8) -> Self {
        _mm512_maskz_loadu_pd(m, p)
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f64, v: Self, m: __mmask8) {
        _mm512_mask_storeu_pd(p, m, v)
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
    if cols.is_empty() {
        return;
    }
    let lead = lead_lanes::<V>(p, cols.start);
    let mut r = 0;
    if V::ACC_REGISTERS >= 16 {
        // Eight rows by two or three vectors: `w` streamed once for eight rows instead of twice.
        while r + 8 <= p.m {
            row_block::<V, 8>(p, r, &cols, lead, out);
            r += 8;
        }
    }
    while r + 4 <= p.m {
        row_block::<V, 4>(p, r, &cols, lead, out);
        r += 4;
    }
    match p.m - r {
        3 => row_block::<V, 3>(p, r, &cols, lead, out),
        2 => row_block::<V, 2>(p, r, &cols, lead, out),
        1 => row_block::<V, 1>(p, r, &cols, lead, out),
        _ => {}
    }
}

/// How many lanes of the first vector lie before column `first`, when the vectors are laid on `w`'s
/// alignment grid (`small_batch::grid_shift`; 0 where there is none).
#[inline(always)]
fn lead_lanes<V: Vector>(p: &DenseProblem<'_, V::Elem>, first: usize) -> usize {
    (grid_shift(p.w, p.m, p.n, V::LANES) + first) % V::LANES
}

/// Rows `r0..r0 + R` of columns `cols`, whose first vector starts `lead` lanes before `cols.start`:
/// the widest tiles that fit the register budget first, then narrower ones; the part's first and
/// last vectors are masked to its columns.
#[inline(always)]
unsafe fn row_block<V: Vector, const R: usize>(
    p: &DenseProblem<'_, V::Elem>,
    r0: usize,
    cols: &Range<usize>,
    lead: usize,
    out: *mut V::Elem,
) {
    // Offsets into the span of lanes the part's vectors cover, `lead` before its first column.
    let span = lead + cols.len();
    let mut o = 0;
    o = tiles::<V, R, 9>(p, r0, o, cols, lead, out);
    o = tiles::<V, R, 8>(p, r0, o, cols, lead, out);
    o = tiles::<V, R, 6>(p, r0, o, cols, lead, out);
    o = tiles::<V, R, 5>(p, r0, o, cols, lead, out);
    o = tiles::<V, R, 4>(p, r0, o, cols, lead, out);
    o = tiles::<V, R, 3>(p, r0, o, cols, lead, out);
    o = tiles::<V, R, 2>(p, r0, o, cols, lead, out);
    o = tiles::<V, R, 1>(p, r0, o, cols, lead, out);
    debug_assert!(o >= span);
}

/// Tiles of NV vectors from span offset `o`, while the span has at least NV vectors left (the last
/// of which may be partly past its end, and masked); returns the first offset not done.
#[inline(always)]
unsafe fn tiles<V: Vector, const R: usize, const NV: usize>(
    p: &DenseProblem<'_, V::Elem>,
    r0: usize,
    mut o: usize,
    cols: &Range<usize>,
    lead: usize,
    out: *mut V::Elem,
) -> usize {
    // Past the budget, or with no register left for the row of `w` (shared by several rows; a single
    // row reads it as a memory operand of each multiply-add), LLVM spills accumulators to memory.
    if R * NV > V::ACC_REGISTERS || (R > 1 && R * NV + NV + 1 > V::REGISTERS) {
        return o;
    }
    let span = lead + cols.len();
    while o < span && (span - o).div_ceil(V::LANES) >= NV {
        // Lanes of the tile's first and last vectors that hold its columns.
        let first = if o == 0 { lead } else { 0 };
        let last = (span - o - (NV - 1) * V::LANES).min(V::LANES);
        let t = unpacked_tile(p, r0, cols.start + o, lead, out);
        if first == 0 && last == V::LANES {
            tile::<V, R, NV, false, false>(&t, 0, V::LANES);
        } else {
            tile::<V, R, NV, false, true>(&t, first, last);
        }
        o += NV * V::LANES;
    }
    o
}

/// The tile whose first vector starts `lead` lanes before column `j` (pointers wrap: the lanes before
/// the array are masked, never read or written), read straight from `x` and `w`.
#[inline(always)]
unsafe fn unpacked_tile<E: Float>(
    p: &DenseProblem<'_, E>,
    r0: usize,
    j: usize,
    lead: usize,
    out: *mut E,
) -> Tile<E> {
    Tile {
        x: p.x.as_ptr().add(r0 * p.k),
        x_stride: p.k,
        w: p.w.as_ptr().wrapping_add(j).wrapping_sub(lead),
        w_stride: p.n,
        depth: p.k,
        out: out.wrapping_add(r0 * p.n + j).wrapping_sub(lead),
        out_stride: p.n,
        accumulate: false,
        epilogue: Some(Epilogue {
            bias: p
                .bias
                .map(|b| b.as_ptr().wrapping_add(j).wrapping_sub(lead)),
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

/// One tile: lanes `first..` of its first vector, every lane of the middle ones, and lanes `..last` of
/// its last vector (all of them but at the part's edges). `EDGE`: the first or last vector is partial,
/// so `w` is read through masks there (else `first` is 0 and, unless `PACKED`, `last` is LANES).
/// `PACKED`: `w` is a contiguous panel padded with zeros to whole vectors, which the hardware
/// prefetcher follows without help, and `x` is packed inner index first (`packed_x86::pack_x`): step
/// kk's R values at `x + kk * R`.
#[inline(always)]
pub(crate) unsafe fn tile<
    V: Vector,
    const R: usize,
    const NV: usize,
    const PACKED: bool,
    const EDGE: bool,
>(
    t: &Tile<V::Elem>,
    first: usize,
    last: usize,
) {
    let lanes = V::LANES;
    debug_assert!(EDGE || (first == 0 && (PACKED || last == lanes)));
    // The lanes of the first vector (`first..`) and of the last (`..last`): masks for an edge tile,
    // counts otherwise. Which vector is which is known at compile time once the loops are unrolled;
    // a mask chosen at run time here made LLVM store every accumulator to the stack on every step.
    let first_mask = V::mask(first, if NV == 1 { last } else { lanes });
    let last_mask = V::mask(if NV == 1 { first } else { 0 }, last);
    let edge = |v: usize| EDGE && (v == 0 || v + 1 == NV);
    let mask = |v: usize| if v == 0 { first_mask } else { last_mask };
    let count = |v: usize| if v + 1 == NV { last } else { lanes };
    let mut acc = [[V::zero(); NV]; R];
    let mut w = t.w;
    let mut x = t.x;
    for kk in 0..t.depth {
        let mut wv = [V::zero(); NV];
        for (v, slot) in wv.iter_mut().enumerate() {
            // Packed panels are padded with zeros: whole vectors, and no branch in the loop (which
            // would also cost the accumulators their registers: LLVM then keeps them in memory).
            let at = w.wrapping_add(v * lanes);
            *slot = if edge(v) {
                V::load_masked(at, mask(v))
            } else {
                V::load(at, lanes)
            };
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
        if !PACKED && R >= PREFETCH_MIN_ROWS {
            for v in 0..NV {
                _mm_prefetch::<_MM_HINT_T0>(
                    w.wrapping_add(PREFETCH_ROWS * t.w_stride + v * lanes) as *const i8
                );
            }
        }
        w = w.wrapping_add(t.w_stride);
        if PACKED {
            x = x.add(R);
        }
    }
    for (r, acc_row) in acc.iter().enumerate() {
        for (v, &a) in acc_row.iter().enumerate() {
            let o = t.out.wrapping_add(r * t.out_stride + v * lanes);
            let load = |at: *const V::Elem| {
                if edge(v) {
                    V::load_masked(at, mask(v))
                } else {
                    V::load(at, count(v))
                }
            };
            let mut s = a;
            if t.accumulate {
                s = V::add(load(o), s);
            }
            if let Some(e) = t.epilogue {
                // The bias is added after the dot product, as numpy's `x @ w + b` does.
                if let Some(b) = e.bias {
                    s = V::add(s, load(b.wrapping_add(v * lanes)));
                }
                if e.relu {
                    s = V::relu(s);
                }
            }
            if edge(v) {
                V::store_masked(o, s, mask(v));
            } else {
                V::store(o, s, count(v));
            }
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

    /// `w` starting at every element offset within a vector, so that the kernel lays its vectors on
    /// every possible alignment grid (a masked first vector reaching back before the part, a masked
    /// last one past it), for parts that start and end anywhere: each part's columns match the
    /// triple loop, and nothing outside them is written, neither the other columns nor the elements
    /// around `out`.
    #[test]
    fn the_alignment_grid_matches_the_triple_loop_at_every_offset() {
        fn run<V: Vector>(
            name: &str,
            kernel: unsafe fn(&DenseProblem<'_, V::Elem>, Range<usize>, *mut V::Elem),
            from: fn(f64) -> V::Elem,
            to: fn(V::Elem) -> f64,
        ) {
            const GUARD: usize = 32;
            let lanes = V::LANES;
            for m in [1, 2, 3, 4, 5, 7, 8, 9] {
                for &(k, n) in &[(3, 16), (9, 32), (5, 48), (17, 128), (4, 40), (6, 8)] {
                    let x: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 11) as f64) - 5.0).collect();
                    let b: Vec<f64> = (0..n).map(|i| (i % 3) as f64 - 1.0).collect();
                    let x_e: Vec<V::Elem> = x.iter().map(|&v| from(v)).collect();
                    let b_e: Vec<V::Elem> = b.iter().map(|&v| from(v)).collect();
                    // Room to start `w` at any element of a 64-byte line.
                    let mut w_buf: Vec<V::Elem> = vec![from(0.0); k * n + 64];
                    for offset in 0..lanes {
                        let w: Vec<f64> = (0..k * n)
                            .map(|i| ((i * 5 % 13 + offset) as f64) - 6.0)
                            .collect();
                        let start = (64 - (w_buf.as_ptr() as usize % 64)) % 64
                            / core::mem::size_of::<V::Elem>()
                            + offset;
                        let w_e = &mut w_buf[start..start + k * n];
                        for (d, &v) in w_e.iter_mut().zip(&w) {
                            *d = from(v);
                        }
                        let p = DenseProblem {
                            x: &x,
                            w: &w,
                            bias: Some(&b[..]),
                            m,
                            k,
                            n,
                            relu: offset % 2 == 1,
                        };
                        let want = p.reference();
                        let p_e = DenseProblem {
                            x: &x_e,
                            w: w_e,
                            bias: Some(&b_e[..]),
                            m,
                            k,
                            n,
                            relu: p.relu,
                        };
                        let mid = crate::small_batch::column_split(&p_e);
                        let parts = [0..n, 0..mid, mid..n, 1..n - 1, 3..n.min(21)];
                        for cols in parts {
                            let mut out = vec![from(f64::NAN); m * n + 2 * GUARD];
                            // SAFETY: the kernel runs only where its features were detected.
                            unsafe { kernel(&p_e, cols.clone(), out.as_mut_ptr().add(GUARD)) };
                            for (i, &got) in out.iter().enumerate() {
                                let inside = i >= GUARD && i < GUARD + m * n;
                                let (row, col) = ((i - GUARD.min(i)) / n, (i - GUARD.min(i)) % n);
                                if inside && cols.contains(&col) {
                                    assert_eq!(
                                        to(got),
                                        want[row * n + col],
                                        "{name} m={m} k={k} n={n} offset={offset} cols={cols:?} \
                                         at ({row}, {col})"
                                    );
                                } else {
                                    assert!(
                                        to(got).is_nan(),
                                        "{name} m={m} k={k} n={n} offset={offset} cols={cols:?}: \
                                         wrote element {i} of the guarded output, outside the part"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            run::<__m256>("avx2 f32", dense_avx2::<__m256>, |v| v as f32, |v| v as f64);
            run::<__m256d>("avx2 f64", dense_avx2::<__m256d>, |v| v, |v| v);
        }
        if is_x86_feature_detected!("avx512f") {
            run::<__m512>(
                "avx512 f32",
                dense_avx512::<__m512>,
                |v| v as f32,
                |v| v as f64,
            );
            run::<__m512d>("avx512 f64", dense_avx512::<__m512d>, |v| v, |v| v);
        }
    }
}
