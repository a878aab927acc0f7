//! The two element types the kernel computes in, behind one small trait so that every compute
//! function is written once.

use core::fmt::Debug;
use core::ops::{Add, Div, Mul, Range, Sub};

use crate::small_batch::DenseProblem;

/// `f32` or `f64`: what the compute functions need from an element type.
pub trait Float:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    /// How many accumulator elements the small-batch kernel may keep live at once: eight AVX
    /// registers' worth, leaving the other eight for loads and broadcasts.
    const ACC_BUDGET: usize;
    /// numpy's name for the type, for error messages.
    const NAME: &'static str;

    fn exp(self) -> Self;
    fn is_nan(self) -> bool;

    /// `c = a @ b` on raw row-major pointers through matrixmultiply (its own runtime SIMD dispatch).
    ///
    /// # Safety
    /// `a`, `b`, `c` must point to (m, k), (k, n), (m, n) row-major matrices; `c` exclusive.
    unsafe fn gemm_raw(m: usize, k: usize, n: usize, a: *const Self, b: *const Self, c: *mut Self);

    /// The x86-64 SIMD small-batch kernel for this type, over output columns `cols`, if the CPU has
    /// AVX-512F or AVX2+FMA; false (and nothing written) otherwise.
    ///
    /// # Safety
    /// `p` must have the lengths `DenseProblem::check` asserts, `out` must point to (m, n) elements,
    /// `cols` must lie within `0..n`, and nothing else may access those columns of `out` meanwhile.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dense_simd(p: &DenseProblem<'_, Self>, cols: Range<usize>, out: *mut Self) -> bool;

    /// Lanes of the vectors `dense_simd` computes in on this CPU (0 where it has no SIMD kernel).
    #[cfg(target_arch = "x86_64")]
    fn simd_lanes() -> usize;

    /// The x86-64 packed SIMD kernel (`packed_x86`) for this type, over output columns `cols`, with
    /// `xp` = `p.x` laid out by `packed_x86::pack_x` for `packed_tile_rows()`; false (and nothing
    /// written) on a CPU without AVX-512F or AVX2+FMA.
    ///
    /// # Safety
    /// As `dense_simd`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dense_packed_simd(
        p: &DenseProblem<'_, Self>,
        xp: &[Self],
        cols: Range<usize>,
        out: *mut Self,
    ) -> bool;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const ACC_BUDGET: usize = 64;
    const NAME: &'static str = "float32";

    #[inline(always)]
    fn exp(self) -> Self {
        f32::exp(self)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    unsafe fn gemm_raw(m: usize, k: usize, n: usize, a: *const Self, b: *const Self, c: *mut Self) {
        let (k_, n_) = (k as isize, n as isize);
        matrixmultiply::sgemm(m, k, n, 1.0, a, k_, 1, b, n_, 1, 0.0, c, n_, 1);
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn dense_simd(p: &DenseProblem<'_, Self>, cols: Range<usize>, out: *mut Self) -> bool {
        use core::arch::x86_64::{__m256, __m512};

        use crate::small_batch_x86::{dense_avx2, dense_avx512};
        // SAFETY: each kernel runs only on a CPU that has just been checked for its features; the
        // caller vouches for the rest.
        match x86_isa() {
            Some(Isa::Avx512) => unsafe { dense_avx512::<__m512>(p, cols, out) },
            Some(Isa::Avx2) => unsafe { dense_avx2::<__m256>(p, cols, out) },
            None => return false,
        }
        true
    }
    #[cfg(target_arch = "x86_64")]
    fn simd_lanes() -> usize {
        match x86_isa() {
            Some(Isa::Avx512) => 16,
            Some(Isa::Avx2) => 8,
            None => 0,
        }
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn dense_packed_simd(
        p: &DenseProblem<'_, Self>,
        xp: &[Self],
        cols: Range<usize>,
        out: *mut Self,
    ) -> bool {
        use core::arch::x86_64::{__m256, __m512};

        use crate::packed_x86::{dense_packed_avx2, dense_packed_avx512};
        // SAFETY: as in `dense_simd`.
        match x86_isa() {
            Some(Isa::Avx512) => unsafe { dense_packed_avx512::<__m512>(p, xp, cols, out) },
            Some(Isa::Avx2) => unsafe { dense_packed_avx2::<__m256>(p, xp, cols, out) },
            None => return false,
        }
        true
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const ACC_BUDGET: usize = 32;
    const NAME: &'static str = "float64";

    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    unsafe fn gemm_raw(m: usize, k: usize, n: usize, a: *const Self, b: *const Self, c: *mut Self) {
        let (k_, n_) = (k as isize, n as isize);
        matrixmultiply::dgemm(m, k, n, 1.0, a, k_, 1, b, n_, 1, 0.0, c, n_, 1);
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn dense_simd(p: &DenseProblem<'_, Self>, cols: Range<usize>, out: *mut Self) -> bool {
        use core::arch::x86_64::{__m256d, __m512d};

        use crate::small_batch_x86::{dense_avx2, dense_avx512};
        // SAFETY: each kernel runs only on a CPU that has just been checked for its features; the
        // caller vouches for the rest.
        match x86_isa() {
            Some(Isa::Avx512) => unsafe { dense_avx512::<__m512d>(p, cols, out) },
            Some(Isa::Avx2) => unsafe { dense_avx2::<__m256d>(p, cols, out) },
            None => return false,
        }
        true
    }
    #[cfg(target_arch = "x86_64")]
    fn simd_lanes() -> usize {
        match x86_isa() {
            Some(Isa::Avx512) => 8,
            Some(Isa::Avx2) => 4,
            None => 0,
        }
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn dense_packed_simd(
        p: &DenseProblem<'_, Self>,
        xp: &[Self],
        cols: Range<usize>,
        out: *mut Self,
    ) -> bool {
        use core::arch::x86_64::{__m256d, __m512d};

        use crate::packed_x86::{dense_packed_avx2, dense_packed_avx512};
        // SAFETY: as in `dense_simd`.
        match x86_isa() {
            Some(Isa::Avx512) => unsafe { dense_packed_avx512::<__m512d>(p, xp, cols, out) },
            Some(Isa::Avx2) => unsafe { dense_packed_avx2::<__m256d>(p, xp, cols, out) },
            None => return false,
        }
        true
    }
}

/// ReLU that lets NaN through, as `np.maximum(h, 0)` does (`f32::max` would turn NaN into 0).
#[inline(always)]
pub fn relu<T: Float>(v: T) -> T {
    if v < T::ZERO {
        T::ZERO
    } else {
        v
    }
}

/// The SIMD instruction sets the x86-64 kernels are written for.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Isa {
    Avx512,
    Avx2,
}

/// Rows per tile of the packed kernel `dense_packed_simd` runs on this CPU: the row blocks
/// `packed_x86::pack_x` must lay `x` out in (4 where there is no packed kernel: unused).
#[cfg(target_arch = "x86_64")]
pub(crate) fn packed_tile_rows() -> usize {
    use crate::packed_x86::{AVX2_ROWS, AVX512_ROWS};
    match x86_isa() {
        Some(Isa::Avx512) => AVX512_ROWS,
        _ => AVX2_ROWS,
    }
}

/// The best of them this CPU has (`is_x86_feature_detected!` caches the CPUID answer).
#[cfg(target_arch = "x86_64")]
#[inline]
fn x86_isa() -> Option<Isa> {
    use std::arch::is_x86_feature_detected;
    if is_x86_feature_detected!("avx512f") {
        Some(Isa::Avx512)
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Some(Isa::Avx2)
    } else {
        None
    }
}
