//! AVX2+FMA kernel of the small-batch path (see `small_batch`), chosen at run time on x86-64.
//!
//! Written with intrinsics rather than left to the autovectorizer because the whole point is that the
//! R x V accumulator tile stays in registers across the k loop, which the vectorizer does not promise.

use core::arch::x86_64::*;

use crate::element::Float;
use crate::small_batch::DenseProblem;

/// An element type's 256-bit vector operations.
pub trait Avx: Float {
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(v: Self) -> Self::V;
    unsafe fn load(p: *const Self) -> Self::V;
    unsafe fn store(p: *mut Self, v: Self::V);
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn vadd(a: Self::V, b: Self::V) -> Self::V;
    /// max(0, v) with NaN kept (`maxps` returns its second operand when either is NaN).
    unsafe fn relu(v: Self::V) -> Self::V;
}

impl Avx for f32 {
    type V = __m256;
    const LANES: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vadd(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn relu(v: __m256) -> __m256 {
        _mm256_max_ps(_mm256_setzero_ps(), v)
    }
}

impl Avx for f64 {
    type V = __m256d;
    const LANES: usize = 4;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256d {
        _mm256_setzero_pd()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(v: f64) -> __m256d {
        _mm256_set1_pd(v)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f64) -> __m256d {
        _mm256_loadu_pd(p)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f64, v: __m256d) {
        _mm256_storeu_pd(p, v)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fmadd(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
        _mm256_fmadd_pd(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vadd(a: __m256d, b: __m256d) -> __m256d {
        _mm256_add_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn relu(v: __m256d) -> __m256d {
        _mm256_max_pd(_mm256_setzero_pd(), v)
    }
}

/// The vector part of `out = act(x @ w + bias)`: every column up to the last whole vector.
/// Returns the first column left for the scalar tail.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `p` and `out` must have the lengths `DenseProblem::check` asserts.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dense<T: Avx>(p: &DenseProblem<'_, T>, out: &mut [T]) -> usize {
    let mut r = 0;
    let mut done = 0;
    while r + 4 <= p.m {
        done = row_block::<T, 4>(p, r, out);
        r += 4;
    }
    match p.m - r {
        3 => done = row_block::<T, 3>(p, r, out),
        2 => done = row_block::<T, 2>(p, r, out),
        1 => done = row_block::<T, 1>(p, r, out),
        _ => {}
    }
    if p.m == 0 {
        done = p.n - p.n % T::LANES;
    }
    done
}

/// Rows `r0..r0 + R`: tiles of V vectors, R * V <= 8 accumulators, widest first.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_block<T: Avx, const R: usize>(
    p: &DenseProblem<'_, T>,
    r0: usize,
    out: &mut [T],
) -> usize {
    let mut j = 0;
    if R == 1 {
        j = tiles::<T, R, 8>(p, r0, j, out);
    }
    if R <= 2 {
        j = tiles::<T, R, 4>(p, r0, j, out);
    }
    j = tiles::<T, R, 2>(p, r0, j, out);
    tiles::<T, R, 1>(p, r0, j, out)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tiles<T: Avx, const R: usize, const V: usize>(
    p: &DenseProblem<'_, T>,
    r0: usize,
    mut j: usize,
    out: &mut [T],
) -> usize {
    let (k, n, lanes) = (p.k, p.n, T::LANES);
    let x = p.x.as_ptr().add(r0 * k);
    let o = out.as_mut_ptr().add(r0 * n);
    while j + V * lanes <= n {
        let mut acc = [[T::zero(); V]; R];
        let mut w = p.w.as_ptr().add(j);
        for kk in 0..k {
            let mut wv = [T::zero(); V];
            for (v, slot) in wv.iter_mut().enumerate() {
                *slot = T::load(w.add(v * lanes));
            }
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let xv = T::splat(*x.add(r * k + kk));
                for (a, &b) in acc_row.iter_mut().zip(&wv) {
                    *a = T::fmadd(xv, b, *a);
                }
            }
            w = w.add(n);
        }
        for (r, acc_row) in acc.iter().enumerate() {
            for (v, &a) in acc_row.iter().enumerate() {
                let col = j + v * lanes;
                // The bias is added after the dot product, as numpy's `x @ w + b` does.
                let mut s = a;
                if let Some(b) = p.bias {
                    s = T::vadd(s, T::load(b.as_ptr().add(col)));
                }
                if p.relu {
                    s = T::relu(s);
                }
                T::store(o.add(r * n + col), s);
            }
        }
        j += V * lanes;
    }
    j
}
