//! x86-64 SIMD kernels of the small-batch path (see `small_batch`): AVX-512 where the CPU has it,
//! else AVX2+FMA, chosen at run time, so the crate needs no `-C target-cpu`.
//!
//! Written with intrinsics rather than left to the autovectorizer because the point is that an
//! R-rows x NV-vectors accumulator tile stays in registers across the whole k loop while `w` is
//! streamed row by row, which the vectorizer does not promise. The last partial vector of columns
//! uses masked loads and stores, so no scalar tail is needed.

use core::arch::x86_64::*;

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
    const ACC_REGISTERS: usize = 16;
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
    const ACC_REGISTERS: usize = 16;
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

/// `out = act(x @ w + bias)` with AVX2+FMA vectors `V`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `p` and `out` must have the lengths `DenseProblem::check` asserts.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dense_avx2<V: Vector>(p: &DenseProblem<'_, V::Elem>, out: &mut [V::Elem]) {
    dense::<V>(p, out)
}

/// `out = act(x @ w + bias)` with AVX-512 vectors `V`.
///
/// # Safety
/// The CPU must support AVX-512F; `p` and `out` must have the lengths `DenseProblem::check` asserts.
#[target_feature(enable = "avx512f")]
pub unsafe fn dense_avx512<V: Vector>(p: &DenseProblem<'_, V::Elem>, out: &mut [V::Elem]) {
    dense::<V>(p, out)
}

#[inline(always)]
unsafe fn dense<V: Vector>(p: &DenseProblem<'_, V::Elem>, out: &mut [V::Elem]) {
    let mut r = 0;
    if V::ACC_REGISTERS >= 16 {
        // Eight rows by two vectors: `w` streamed once for eight rows instead of twice.
        while r + 8 <= p.m {
            row_block::<V, 8>(p, r, out);
            r += 8;
        }
    }
    while r + 4 <= p.m {
        row_block::<V, 4>(p, r, out);
        r += 4;
    }
    match p.m - r {
        3 => row_block::<V, 3>(p, r, out),
        2 => row_block::<V, 2>(p, r, out),
        1 => row_block::<V, 1>(p, r, out),
        _ => {}
    }
}

/// Rows `r0..r0 + R`: the widest tiles that fit the register budget first, then narrower ones, then
/// one masked vector for the columns left.
#[inline(always)]
unsafe fn row_block<V: Vector, const R: usize>(
    p: &DenseProblem<'_, V::Elem>,
    r0: usize,
    out: &mut [V::Elem],
) {
    let mut j = 0;
    j = tiles::<V, R, 8>(p, r0, j, out);
    j = tiles::<V, R, 4>(p, r0, j, out);
    j = tiles::<V, R, 2>(p, r0, j, out);
    j = tiles::<V, R, 1>(p, r0, j, out);
    if j < p.n {
        tile::<V, R, 1>(p, r0, j, p.n - j, out);
    }
}

#[inline(always)]
unsafe fn tiles<V: Vector, const R: usize, const NV: usize>(
    p: &DenseProblem<'_, V::Elem>,
    r0: usize,
    mut j: usize,
    out: &mut [V::Elem],
) -> usize {
    if R * NV > V::ACC_REGISTERS {
        return j;
    }
    while j + NV * V::LANES <= p.n {
        tile::<V, R, NV>(p, r0, j, V::LANES, out);
        j += NV * V::LANES;
    }
    j
}

/// Columns `j..j + (NV - 1) * LANES + last` of rows `r0..r0 + R`; `last` is how many lanes of the last
/// vector are real columns (LANES except for the masked tail).
#[inline(always)]
unsafe fn tile<V: Vector, const R: usize, const NV: usize>(
    p: &DenseProblem<'_, V::Elem>,
    r0: usize,
    j: usize,
    last: usize,
    out: &mut [V::Elem],
) {
    let (k, n, lanes) = (p.k, p.n, V::LANES);
    let x = p.x.as_ptr().add(r0 * k);
    let count = |v: usize| if v + 1 == NV { last } else { lanes };
    let mut acc = [[V::zero(); NV]; R];
    let mut w = p.w.as_ptr().add(j);
    for kk in 0..k {
        let mut wv = [V::zero(); NV];
        for (v, slot) in wv.iter_mut().enumerate() {
            *slot = V::load(w.add(v * lanes), count(v));
        }
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let xv = V::splat(*x.add(r * k + kk));
            for (a, &b) in acc_row.iter_mut().zip(&wv) {
                *a = V::fmadd(xv, b, *a);
            }
        }
        if PREFETCH {
            for v in 0..NV {
                _mm_prefetch::<_MM_HINT_T0>(
                    w.wrapping_add(PREFETCH_ROWS * n + v * lanes) as *const i8
                );
            }
        }
        w = w.add(n);
    }
    let o = out.as_mut_ptr().add(r0 * n);
    for (r, acc_row) in acc.iter().enumerate() {
        for (v, &a) in acc_row.iter().enumerate() {
            let col = j + v * lanes;
            // The bias is added after the dot product, as numpy's `x @ w + b` does.
            let mut s = a;
            if let Some(b) = p.bias {
                s = V::add(s, V::load(b.as_ptr().add(col), count(v)));
            }
            if p.relu {
                s = V::relu(s);
            }
            V::store(o.add(r * n + col), s, count(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::arch::is_x86_feature_detected;

    fn reference(p: &DenseProblem<'_, f64>) -> Vec<f64> {
        let mut out = vec![0.0; p.m * p.n];
        for i in 0..p.m {
            for j in 0..p.n {
                let s: f64 = (0..p.k)
                    .map(|kk| p.x[i * p.k + kk] * p.w[kk * p.n + j])
                    .sum::<f64>()
                    + p.bias.map_or(0.0, |b| b[j]);
                out[i * p.n + j] = if p.relu { s.max(0.0) } else { s };
            }
        }
        out
    }

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
                let want = reference(&p);
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
                    unsafe { dense_avx2::<__m256d>(&p, &mut out64) };
                    unsafe { dense_avx2::<__m256>(&p32, &mut out32) };
                    runs.push(("avx2 f64", out64.clone()));
                    runs.push(("avx2 f32", out32.iter().map(|&v| v as f64).collect()));
                }
                if avx512 {
                    unsafe { dense_avx512::<__m512d>(&p, &mut out64) };
                    unsafe { dense_avx512::<__m512>(&p32, &mut out32) };
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
