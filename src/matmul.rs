//! Matrix products on row-major slices, and the choice of path for them:
//! * weights that fit in L2 (and any product with a handful of rows): the register-tiled kernel of
//!   `small_batch`, unpacked; for a few microseconds of work its columns are split with the partner
//!   thread (`threads::join_pair`), for more over row blocks of the kernel's rayon pool;
//! * larger ones, on a CPU with AVX2+FMA or AVX-512: the same register kernel on `w` packed into
//!   panels and `x` into tiles (`packed_x86`), in column bands over the pool;
//! * elsewhere: matrixmultiply's packed, runtime-dispatched GEMM, in row bands over the pool.
//!
//! Our packed kernel rather than a GEMM crate: on this project's machine (2 vCPUs of an AVX-512 Xeon)
//! matrixmultiply (AVX2 at most) ran sgemm at 0.7-0.8x OpenBLAS from n = 1024 and the `gemm` crate at
//! 0.5x (its AVX-512 kernels are behind an opt-in feature); the kernel we already had needed only
//! packing to use AVX-512 on large products too.

use crate::element::{relu, Float};
use crate::small_batch::{self, DenseProblem};
use crate::threads;

/// Below this many multiply-adds, handing work to the pool costs more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 21;
/// From this many multiply-adds (a batch-1 784 x 128 layer is 100k), splitting the columns with the
/// partner thread saves more than its handoff (a fraction of a microsecond when it is spinning).
const PAIR_MIN_WORK: usize = 1 << 15;
/// Row chunks per thread, at most: a few, so that a thread slowed by a noisy neighbour is balanced by the
/// others stealing.
const BANDS_PER_THREAD: usize = 4;

/// Weights up to this size are multiplied unpacked by the register-tiled kernel: they stay in each
/// core's L2 while it walks the rows, so packing them (what a GEMM library does first) buys nothing.
const UNPACKED_MAX_W_BYTES: usize = 1 << 20;
/// Widest column band of the packed path: its packed block of `w` (`packed_x86`) must stay in L2.
const PACKED_MAX_BAND: usize = 512;

/// A pointer that threads writing disjoint parts of one output may share.
#[derive(Clone, Copy)]
struct SharedOut<T>(*mut T);
// SAFETY: only ever used to write disjoint columns or rows, one thread each.
unsafe impl<T: Send> Send for SharedOut<T> {}
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// Through a method, so that closures capture the whole (Sync) wrapper, not the raw pointer.
    fn ptr(self) -> *mut T {
        self.0
    }
}

/// `out = a @ b`: `a` is (m, k), `b` is (k, n), `out` is (m, n), all row-major.
pub fn matmul<T: Float>(a: &[T], b: &[T], out: &mut [T], m: usize, k: usize, n: usize) {
    let p = DenseProblem {
        x: a,
        w: b,
        bias: None,
        m,
        k,
        n,
        relu: false,
    };
    dense_into(&p, out);
}

/// `out = act(x @ w + bias)`, on whichever path suits the shapes.
pub fn dense_into<T: Float>(p: &DenseProblem<'_, T>, out: &mut [T]) {
    assert_eq!(p.x.len(), p.m * p.k, "x length");
    assert_eq!(p.w.len(), p.k * p.n, "w length");
    assert_eq!(out.len(), p.m * p.n, "out length");
    if let Some(b) = p.bias {
        assert_eq!(b.len(), p.n, "bias length");
    }
    let w_bytes = core::mem::size_of_val(p.w);
    let simd = small_batch::has_simd();
    if p.m <= small_batch::MAX_ROWS || (simd && w_bytes <= UNPACKED_MAX_W_BYTES) {
        unpacked(p, out);
        return;
    }
    if simd {
        packed(p, out);
        return;
    }
    gemm_into(p.x, p.w, out, p.m, p.k, p.n);
    if p.n == 0 || (p.bias.is_none() && !p.relu) {
        return;
    }
    // One pass over the product (still in cache for the sizes that matter) adds the bias in place.
    for row in out.chunks_exact_mut(p.n) {
        for (j, v) in row.iter_mut().enumerate() {
            let s = match p.bias {
                Some(b) => *v + b[j],
                None => *v,
            };
            *v = if p.relu { relu(s) } else { s };
        }
    }
}

/// The register-tiled kernel: on the calling thread for tiny work, its columns split with the partner
/// thread for small work, over row blocks of the pool for large work.
fn unpacked<T: Float>(p: &DenseProblem<'_, T>, out: &mut [T]) {
    let threads = threads::num_threads();
    let work = p.m.saturating_mul(p.k).saturating_mul(p.n);
    if threads == 1 || work < PAIR_MIN_WORK || p.n < 64 || !small_batch::has_simd() {
        small_batch::dense(p, out);
        return;
    }
    if work < PARALLEL_MIN_WORK {
        // Columns, not rows: each core then reads (and keeps in its own L2, call after call) half of
        // `w`, which is what bounds a layer with a handful of rows.
        let mid = small_batch::column_split(p);
        let shared = SharedOut(out.as_mut_ptr());
        // SAFETY: lengths asserted by `dense_into`; the two calls write disjoint columns of `out`,
        // which is borrowed exclusively until both are done. Neither returns false: has_simd().
        threads::join_pair(
            || unsafe {
                small_batch::dense_columns(p, mid..p.n, shared.ptr());
            },
            || unsafe {
                small_batch::dense_columns(p, 0..mid, shared.ptr());
            },
        );
        return;
    }
    // Blocks of 4 rows are what the kernel computes at once; a few chunks per thread balance the load.
    let rows = p.m.div_ceil(threads * BANDS_PER_THREAD).div_ceil(4) * 4;
    threads::pool().install(|| {
        use rayon::prelude::*;
        out.par_chunks_mut(rows * p.n)
            .zip(p.x.par_chunks(rows * p.k))
            .for_each(|(o, x)| {
                let sub = DenseProblem {
                    x,
                    m: o.len() / p.n,
                    ..*p
                };
                small_batch::dense(&sub, o);
            });
    });
}

/// The packed kernel (`packed_x86`; callers check `has_simd`), in column bands over the pool: each
/// band packs only its own columns of `w`, so no band waits for another.
fn packed<T: Float>(p: &DenseProblem<'_, T>, out: &mut [T]) {
    let threads = threads::num_threads();
    let work = p.m.saturating_mul(p.k).saturating_mul(p.n);
    let bands = if threads == 1 || work < PARALLEL_MIN_WORK {
        1
    } else {
        threads * BANDS_PER_THREAD
    };
    // A multiple of 32 columns: whole panels of two vectors for every element type and ISA.
    let band =
        p.n.div_ceil(bands)
            .div_ceil(32)
            .clamp(1, PACKED_MAX_BAND / 32)
            * 32;
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("packed path without SIMD kernels ({band} of {})", out.len());
    #[cfg(target_arch = "x86_64")]
    with_packed_x(p, bands > 1, |xp| {
        let shared = SharedOut(out.as_mut_ptr());
        let run = |start: usize| {
            // SAFETY: lengths asserted by `dense_into`; bands write disjoint columns of `out`,
            // which is borrowed exclusively until all are done.
            unsafe { T::dense_packed_simd(p, xp, start..(start + band).min(p.n), shared.ptr()) };
        };
        if bands == 1 {
            (0..p.n).step_by(band).for_each(run);
            return;
        }
        threads::pool().install(|| {
            use rayon::prelude::*;
            (0..p.n.div_ceil(band))
                .into_par_iter()
                .for_each(|i| run(i * band));
        });
    })
}

/// Runs `f` on `p.x` in the packed kernel's layout (`packed_x86::pack_x`), laid out once for every
/// band in the thread's scratch buffer: a copy of m * k elements against the 2 * m * k * n flops
/// that read it; over the pool when `parallel`, in chunks of whole tiles, each of which lays out its
/// rows exactly as one call over all would.
#[cfg(target_arch = "x86_64")]
fn with_packed_x<T: Float, R>(
    p: &DenseProblem<'_, T>,
    parallel: bool,
    f: impl FnOnce(&[T]) -> R,
) -> R {
    use crate::packed_x86::{self, X_SCRATCH};
    let mr = crate::element::packed_tile_rows();
    packed_x86::with_scratch(&X_SCRATCH, p.m * p.k, |xp: &mut [T]| {
        if !parallel || p.k == 0 {
            packed_x86::pack_x(p.x, p.m, p.k, mr, xp);
        } else {
            let threads = threads::num_threads();
            let rows = p.m.div_ceil(threads * BANDS_PER_THREAD).div_ceil(mr) * mr;
            threads::pool().install(|| {
                use rayon::prelude::*;
                xp.par_chunks_mut(rows * p.k)
                    .zip(p.x.par_chunks(rows * p.k))
                    .for_each(|(o, x)| packed_x86::pack_x(x, x.len() / p.k, p.k, mr, o));
            });
        }
        f(xp)
    })
}

/// `out = a @ b` through the GEMM library, on the kernel's pool when the product is large enough.
pub(crate) fn gemm_into<T: Float>(a: &[T], b: &[T], out: &mut [T], m: usize, k: usize, n: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(T::ZERO);
        return;
    }
    let pool = threads::pool();
    let threads = pool.current_num_threads();
    if threads == 1 || m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_WORK {
        // SAFETY: slice lengths were asserted by the callers to match the dimensions.
        unsafe { T::gemm_raw(m, k, n, a.as_ptr(), b.as_ptr(), out.as_mut_ptr()) };
        return;
    }
    // Row bands: several per thread, so that on a shared machine a thread slowed by a neighbour is
    // balanced by the others stealing; but each band packs all of `b` again, so bands keep >= 256 rows,
    // which holds the repacking under ~10% of the band's compute.
    let band = m.div_ceil(threads * BANDS_PER_THREAD).max(256).div_ceil(8) * 8;
    pool.install(|| {
        use rayon::prelude::*;
        out.par_chunks_mut(band * n)
            .zip(a.par_chunks(band * k))
            .for_each(|(o, a)| {
                let rows = o.len() / n;
                // SAFETY: `a` holds `rows` rows of k, `o` holds `rows` rows of n, `b` is (k, n).
                unsafe { T::gemm_raw(rows, k, n, a.as_ptr(), b.as_ptr(), o.as_mut_ptr()) };
            });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_exercise() {
        let mut out = [0.0f64; 4];
        matmul(
            &[1.0, 2.0, 3.0, 4.0],
            &[5.0, 6.0, 7.0, 8.0],
            &mut out,
            2,
            2,
            2,
        );
        assert_eq!(out, [19.0, 22.0, 43.0, 50.0]);
    }

    #[test]
    fn large_product_matches_the_small_path_and_zero_inner_dimension_gives_zeros() {
        let (m, k, n) = (67, 131, 45);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
        let mut big = vec![0f32; m * n];
        matmul(&a, &b, &mut big, m, k, n);
        // Row by row through the small-batch kernel: integers, so both must be exact.
        for i in 0..m {
            let mut row = vec![0f32; n];
            matmul(&a[i * k..(i + 1) * k], &b, &mut row, 1, k, n);
            assert_eq!(&big[i * n..(i + 1) * n], &row[..]);
        }
        let mut out = vec![f64::NAN; 6];
        matmul(&[], &[], &mut out, 2, 0, 3);
        assert_eq!(out, vec![0.0; 6]);
        matmul::<f64>(&[], &[], &mut [], 0, 4, 0);
    }

    #[test]
    fn packed_gemm_path_is_exact_on_integers_serial_and_banded() {
        // w of 600 x 500 f64 is 2.4 MB: past the unpacked limit, so this is the packed path (or
        // matrixmultiply's on a CPU without AVX2), against matrixmultiply.
        let (m, k, n) = (700, 600, 500);
        let a: Vec<f64> = (0..m * k).map(|i| (i % 7) as f64 - 3.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i % 5) as f64 - 2.0).collect();
        let mut banded = vec![0f64; m * n];
        matmul(&a, &b, &mut banded, m, k, n);
        let mut serial = vec![0f64; m * n];
        // SAFETY: the slices are (m, k), (k, n) and (m, n).
        unsafe { f64::gemm_raw(m, k, n, a.as_ptr(), b.as_ptr(), serial.as_mut_ptr()) };
        assert_eq!(banded, serial);
        for (i, j) in [(0, 0), (350, 250), (699, 499)] {
            let want: f64 = (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum();
            assert_eq!(banded[i * n + j], want);
        }
    }

    #[test]
    fn packed_path_with_ragged_row_blocks_and_stale_scratch_is_exact() {
        // w over the unpacked limit in both types, so the packed path; row counts that leave 4- and
        // 1-row blocks in the last chunk of the parallel packing; every scratch buffer of this thread
        // and the pool's poisoned first, so that a stale element read anywhere would show.
        use crate::packed_x86::{with_scratch, X_SCRATCH};
        let poison = || with_scratch(&X_SCRATCH, 1 << 20, |b: &mut [f64]| b.fill(f64::NAN));
        poison();
        threads::pool().broadcast(|_| poison());
        fn check<T: Float + From<i8> + Into<f64>>() {
            for &(m, k, n) in &[(17, 1030, 300), (37, 1030, 300), (131, 1030, 300)] {
                let x: Vec<T> = (0..m * k).map(|i| T::from((i % 7) as i8 - 3)).collect();
                let w: Vec<T> = (0..k * n).map(|i| T::from((i % 5) as i8 - 2)).collect();
                let bias: Vec<T> = (0..n).map(|j| T::from((j % 3) as i8)).collect();
                let p = DenseProblem {
                    x: &x,
                    w: &w,
                    bias: Some(&bias),
                    m,
                    k,
                    n,
                    relu: true,
                };
                let mut out = vec![T::ZERO; m * n];
                dense_into(&p, &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k)
                            .map(|kk| x[i * k + kk].into() * w[kk * n + j].into())
                            .sum();
                        let want = (s + bias[j].into()).max(0.0);
                        assert_eq!(out[i * n + j].into(), want, "m={m} k={k} n={n} ({i}, {j})");
                    }
                }
            }
        }
        check::<f32>();
        check::<f64>();
    }

    #[test]
    fn parallel_product_is_exact_on_integers() {
        let (m, k, n) = (300, 200, 100);
        let a: Vec<f64> = (0..m * k).map(|i| (i % 7) as f64).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i % 5) as f64).collect();
        let mut out = vec![0f64; m * n];
        matmul(&a, &b, &mut out, m, k, n);
        for i in [0, 150, 299] {
            for j in [0, 50, 99] {
                let want: f64 = (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum();
                assert_eq!(out[i * n + j], want);
            }
        }
    }

    #[test]
    fn columns_split_with_the_partner_give_exactly_the_single_thread_result() {
        // 784 x 128 (the reference MLP's first layer) and a ragged width, a handful of rows: the
        // partner's path whenever the kernel has more than one thread.
        for &(m, k, n) in &[(1, 784, 128), (4, 784, 128), (8, 300, 100), (3, 500, 77)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32) * 0.013 - 0.6)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 11 % 97) as f32) * 0.021 - 1.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 3.0).collect();
            let p = DenseProblem {
                x: &x,
                w: &w,
                bias: Some(&b),
                m,
                k,
                n,
                relu: true,
            };
            let mut serial = vec![f32::NAN; m * n];
            small_batch::dense(&p, &mut serial);
            for _ in 0..50 {
                let mut split = vec![f32::NAN; m * n];
                dense_into(&p, &mut split);
                assert_eq!(split, serial, "m={m} k={k} n={n}");
            }
        }
    }
}
