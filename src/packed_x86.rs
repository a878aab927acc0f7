//! x86-64 kernel of the packed path of a dense layer (see `matmul`), for products too large for the
//! unpacked small-batch kernel: `w` is copied, one block of the inner dimension at a time, into
//! panels two vectors wide, in the order the register kernel of `small_batch_x86` reads them.
//!
//! Why pack: read in place, a tile's band of `w` is a few dozen bytes from each row of a matrix whose
//! rows lie kilobytes apart, so every step of the inner loop touches a new page; packed, the tile
//! streams one contiguous panel, and the whole block stays in L2 while every row block of `x` passes
//! over it. A row block of `x` is packed too (a small copy, reused by every panel).

use core::cell::RefCell;
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

/// Rows of `x` per register tile of the AVX-512 kernel: 14 rows by two vectors are 28 accumulators
/// of the 32 registers (two hold the panel's row, one the broadcast). Each panel row loaded from L2
/// then feeds 28 FMAs instead of 16: 8 rows measured 4-11% slower at n = 1024-2048 (paired runs, 1
/// and 2 threads); LLVM still keeps all 28 in registers.
pub const AVX512_ROWS: usize = 14;
/// Rows per tile of the AVX2 kernel: 4 rows by two vectors, 8 of the 16 registers.
pub const AVX2_ROWS: usize = 4;

thread_local! {
    /// This thread's packed `x` (see `matmul`), kept from call to call.
    pub static X_SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::EMPTY) };
    /// This thread's packed block of `w`, kept from call to call.
    static W_SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::EMPTY) };
}

/// Scratch buffers up to this size are kept for the thread's next call; larger ones are freed.
const SCRATCH_KEEP_BYTES: usize = 64 << 20;
/// Alignment of scratch buffers: a transparent huge page's, so that the kernel can back them with
/// 2 MiB pages.
const HUGE_PAGE: usize = 2 << 20;

/// A grow-only buffer of bytes, aligned to a huge page.
pub struct Scratch {
    ptr: *mut u8,
    bytes: usize,
}

impl Scratch {
    const EMPTY: Scratch = Scratch {
        ptr: core::ptr::null_mut(),
        bytes: 0,
    };

    fn layout(bytes: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(bytes, HUGE_PAGE).expect("scratch size overflows")
    }

    /// At least `bytes` bytes, reallocated (contents lost) if the buffer is smaller.
    fn reserve(&mut self, bytes: usize) -> *mut u8 {
        if self.bytes < bytes {
            self.free();
            let size = bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE;
            // SAFETY: the layout has a non-zero size (bytes > self.bytes >= 0).
            let ptr = unsafe { std::alloc::alloc(Self::layout(size)) };
            if ptr.is_null() {
                std::alloc::handle_alloc_error(Self::layout(size));
            }
            // Advice before the first touch (zeroing would fault every 4 KiB page in first); only
            // advice: where THP is off the buffer keeps 4 KiB pages.
            #[cfg(any(target_os = "linux", target_os = "android"))]
            // SAFETY: the range is the allocation just made.
            unsafe {
                libc::madvise(ptr.cast(), size, libc::MADV_HUGEPAGE)
            };
            // Zeroed, so that the slices handed out are initialised memory.
            // SAFETY: `size` bytes were just allocated at `ptr`.
            unsafe { core::ptr::write_bytes(ptr, 0, size) };
            self.ptr = ptr;
            self.bytes = size;
        }
        self.ptr
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by `reserve` with this size and alignment.
            unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.bytes)) };
        }
        // Field by field: assigning a whole `Scratch` would drop the old one, i.e. free it again.
        self.ptr = core::ptr::null_mut();
        self.bytes = 0;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.free();
    }
}

/// Runs `f` on `len` elements of the thread's scratch buffer `slot`, which keeps its pages from
/// call to call: a fresh multi-megabyte buffer costs a page fault per 4 KiB on first touch (2.5 us
/// each on this VM: 10 ms for the 16 MB of a packed 2048 x 2048 `x`, against 110 ms of compute).
/// The elements hold whatever the last call left; callers overwrite what they read.
pub fn with_scratch<E: Float, R, F: FnOnce(&mut [E]) -> R>(
    slot: &'static std::thread::LocalKey<RefCell<Scratch>>,
    len: usize,
    f: F,
) -> R {
    // One buffer serves both element types: every bit pattern of one must be a value of the other.
    const { assert!(core::mem::size_of::<E>() == 4 || core::mem::size_of::<E>() == 8) };
    let bytes = len
        .checked_mul(core::mem::size_of::<E>())
        .expect("scratch size overflows")
        .max(1);
    let run = |buf: &mut Scratch, f: F| {
        let ptr = buf.reserve(bytes);
        // SAFETY: the buffer holds at least `len` elements' bytes, is aligned for f32 and f64, was
        // zeroed when allocated, and every bit pattern is a valid f32 or f64; `buf` is borrowed
        // exclusively while `f` runs.
        let elems = unsafe { core::slice::from_raw_parts_mut(ptr.cast::<E>(), len) };
        f(elems)
    };
    /// Frees an oversized buffer when `f` is done, returned or unwound.
    struct Trim<'a>(core::cell::RefMut<'a, Scratch>);
    impl Drop for Trim<'_> {
        fn drop(&mut self) {
            if self.0.bytes > SCRATCH_KEEP_BYTES {
                self.0.free();
            }
        }
    }
    let mut f = Some(f);
    let mut call = |buf: &mut Scratch| run(buf, f.take().expect("called once"));
    let kept = slot.try_with(|cell| {
        // Busy only if `f` itself asked for the same slot again.
        let mut trim = Trim(cell.try_borrow_mut().ok()?);
        Some(call(&mut trim.0))
    });
    match kept {
        Ok(Some(out)) => out,
        // Nested, or the thread is exiting: a buffer of its own.
        _ => {
            let mut own = Scratch::EMPTY;
            call(&mut own)
        }
    }
}

/// Inner-dimension steps `pack_x` copies at once: a 64-byte line of f32.
const PACK_STEP: usize = 16;

/// The row blocks both `pack_x` and the kernel walk: `mr` rows at a time while that many are left,
/// then 4, then 1. Yields (first row, rows).
fn row_blocks(m: usize, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = m / mr * mr;
    let fours = full + (m - full) / 4 * 4;
    (0..full)
        .step_by(mr.max(1))
        .map(move |r| (r, mr))
        .chain((full..fours).step_by(4).map(|r| (r, 4)))
        .chain((fours..m).map(|r| (r, 1)))
}

/// Copies `x` (m, k) into `out` (m * k elements) in the layout the packed kernel reads: each row
/// block of R rows (see `row_blocks`) takes R * k elements from offset `r0 * k`, inner index first,
/// `out[r0 * k + kk * R + r] = x[(r0 + r) * k + kk]`. The tile's broadcasts then read one pointer at
/// fixed offsets: read in place, the R rows lie `k` apart, so the loop spent an integer add per row
/// on their addresses (60 instructions per 28 FMAs), and at k = 2048 all 14 rows fell in one set of
/// the 12-way L1.
pub fn pack_x<E: Float>(x: &[E], m: usize, k: usize, mr: usize, out: &mut [E]) {
    assert_eq!(x.len(), m * k, "x length");
    assert_eq!(out.len(), m * k, "packed x length");
    for (r0, rows) in row_blocks(m, mr) {
        let src = &x[r0 * k..(r0 + rows) * k];
        let block = &mut out[r0 * k..(r0 + rows) * k];
        // A cache line of each row at a time, so that what is read and written stays in L1 (read
        // whole rows at a time, k apart, the rows' lines fall into one L1 set at k = 2048).
        for k0 in (0..k).step_by(PACK_STEP) {
            let steps = (k - k0).min(PACK_STEP);
            let dst = &mut block[k0 * rows..(k0 + steps) * rows];
            for r in 0..rows {
                let line = &src[r * k + k0..r * k + k0 + steps];
                for (kk, &v) in line.iter().enumerate() {
                    dst[kk * rows + r] = v;
                }
            }
        }
    }
}

/// Columns `cols` of `out = act(x @ w + bias)` with AVX-512 vectors `V`, in tiles of `AVX512_ROWS`
/// rows by two vectors; `xp` is `p.x` laid out by `pack_x` with `AVX512_ROWS`.
///
/// # Safety
/// The CPU must support AVX-512F; `p` must have the lengths `DenseProblem::check` asserts, `xp` that
/// of `p.x`, `out` must point to (m, n) elements, and `cols` must lie within `0..n`.
pub unsafe fn dense_packed_avx512<V: Vector>(
    p: &DenseProblem<'_, V::Elem>,
    xp: &[V::Elem],
    cols: Range<usize>,
    out: *mut V::Elem,
) {
    // The scratch closure calls the kernel rather than inlining it: a closure is compiled without
    // the kernel's target features, and the intrinsics inlined there would become calls.
    with_scratch(&W_SCRATCH, panels_len::<V>(p, &cols), |panels| {
        // SAFETY: as this function's.
        unsafe { packed_avx512::<V>(p, xp, cols.clone(), out, panels) }
    })
}

#[target_feature(enable = "avx512f")]
unsafe fn packed_avx512<V: Vector>(
    p: &DenseProblem<'_, V::Elem>,
    xp: &[V::Elem],
    cols: Range<usize>,
    out: *mut V::Elem,
    panels: &mut [V::Elem],
) {
    packed::<V, AVX512_ROWS>(p, xp, cols, out, panels)
}

/// As `dense_packed_avx512`, with AVX2+FMA vectors and `AVX2_ROWS` rows per tile.
///
/// # Safety
/// The CPU must support AVX2 and FMA; otherwise as `dense_packed_avx512`.
pub unsafe fn dense_packed_avx2<V: Vector>(
    p: &DenseProblem<'_, V::Elem>,
    xp: &[V::Elem],
    cols: Range<usize>,
    out: *mut V::Elem,
) {
    with_scratch(&W_SCRATCH, panels_len::<V>(p, &cols), |panels| {
        // SAFETY: as this function's.
        unsafe { packed_avx2::<V>(p, xp, cols.clone(), out, panels) }
    })
}

#[target_feature(enable = "avx2,fma")]
unsafe fn packed_avx2<V: Vector>(
    p: &DenseProblem<'_, V::Elem>,
    xp: &[V::Elem],
    cols: Range<usize>,
    out: *mut V::Elem,
    panels: &mut [V::Elem],
) {
    packed::<V, AVX2_ROWS>(p, xp, cols, out, panels)
}

/// Elements of one packed block of `w` for columns `cols`: whole panels two vectors wide, one
/// depth block deep.
fn panels_len<V: Vector>(p: &DenseProblem<'_, V::Elem>, cols: &Range<usize>) -> usize {
    let width = 2 * V::LANES;
    let depth_block = DEPTH_BLOCK_BYTES / core::mem::size_of::<V::Elem>();
    cols.len().div_ceil(width) * width * p.k.min(depth_block)
}

/// Every depth block of `w`'s columns `cols`: packed into `panels`, then passed over by every row
/// block of `xp`.
#[inline(always)]
unsafe fn packed<V: Vector, const MR: usize>(
    p: &DenseProblem<'_, V::Elem>,
    xp: &[V::Elem],
    cols: Range<usize>,
    out: *mut V::Elem,
    panels: &mut [V::Elem],
) {
    if cols.is_empty() || p.m == 0 {
        return;
    }
    // `xp` was laid out for this kernel's MR: `packed_tile_rows` and the dispatch to this kernel
    // read the same cached CPU check.
    assert_eq!(xp.len(), p.m * p.k, "packed x length");
    let width = 2 * V::LANES;
    let depth_block = DEPTH_BLOCK_BYTES / core::mem::size_of::<V::Elem>();
    let mut k0 = 0;
    // At least one pass, so that k = 0 still writes the bias.
    loop {
        let depth = (p.k - k0).min(depth_block);
        let used = cols.len().div_ceil(width) * width * depth;
        pack(p, k0..k0 + depth, cols.clone(), width, &mut panels[..used]);
        let block = Block {
            p,
            xp,
            k0,
            depth,
            cols: cols.clone(),
            panels,
            out,
        };
        for (r0, rows) in row_blocks(p.m, MR) {
            if rows == MR {
                block.rows::<V, MR>(r0);
            } else if rows == 4 {
                block.rows::<V, 4>(r0);
            } else {
                block.rows::<V, 1>(r0);
            }
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
    panels: &mut [E],
) {
    let mut rows = panels.chunks_exact_mut(width);
    for j in cols.clone().step_by(width) {
        let used = (cols.end - j).min(width);
        for kk in depth.clone() {
            let row = kk * p.n + j;
            let dst = rows.next().expect("panels hold every row of every panel");
            dst[..used].copy_from_slice(&p.w[row..row + used]);
            dst[used..].fill(E::ZERO);
        }
    }
}

/// One packed block of the inner dimension, ready for the row blocks of `x` to pass over it.
struct Block<'a, 'p, E> {
    p: &'a DenseProblem<'p, E>,
    xp: &'a [E],
    k0: usize,
    depth: usize,
    cols: Range<usize>,
    panels: &'a [E],
    out: *mut E,
}

impl<E: Float> Block<'_, '_, E> {
    /// Rows `r0..r0 + R`, every panel: the rows' packed slice of `x` (R * depth elements) is reused
    /// by every panel. (Panels outermost over groups of 4-12 row blocks, so that a panel stays in
    /// L1, measured no faster.)
    #[inline(always)]
    unsafe fn rows<V: Vector<Elem = E>, const R: usize>(&self, r0: usize) {
        let (p, width) = (self.p, 2 * V::LANES);
        let last_block = self.k0 + self.depth == p.k;
        for (i, j) in self.cols.clone().step_by(width).enumerate() {
            let used = (self.cols.end - j).min(width);
            let t = Tile {
                x: self.xp.as_ptr().add(r0 * p.k + self.k0 * R),
                x_stride: R,
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
                tile::<V, R, 2, true, false>(&t, 0, used - V::LANES);
            } else {
                tile::<V, R, 1, true, false>(&t, 0, used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::arch::x86_64::{__m256, __m256d, __m512, __m512d};
    use std::arch::is_x86_feature_detected;

    #[test]
    fn pack_x_lays_each_row_block_out_inner_index_first() {
        // 14 + 4 + 1 + 1 rows: every kind of row block.
        let (m, k) = (20, 3);
        let x: Vec<f64> = (0..m * k).map(|i| i as f64).collect();
        let mut xp = vec![f64::NAN; m * k];
        pack_x(&x, m, k, 14, &mut xp);
        let blocks: Vec<(usize, usize)> = row_blocks(m, 14).collect();
        assert_eq!(blocks, vec![(0, 14), (14, 4), (18, 1), (19, 1)]);
        for (r0, rows) in blocks {
            for r in 0..rows {
                for kk in 0..k {
                    assert_eq!(xp[r0 * k + kk * rows + r], x[(r0 + r) * k + kk]);
                }
            }
        }
    }

    #[test]
    fn scratch_is_kept_between_calls_and_a_nested_call_gets_its_own() {
        let first = with_scratch(&W_SCRATCH, 1000, |a: &mut [f32]| {
            a.fill(1.0);
            // The same slot again from inside: a separate buffer, not an alias of `a`.
            with_scratch(&W_SCRATCH, 10, |b: &mut [f32]| b.fill(2.0));
            assert!(a.iter().all(|&v| v == 1.0));
            a.as_ptr() as usize
        });
        let again = with_scratch(&W_SCRATCH, 500, |a: &mut [f32]| a.as_ptr() as usize);
        assert_eq!(first, again);
        assert_eq!(first % HUGE_PAGE, 0);
        // Over the limit: used, then freed rather than kept.
        let big = SCRATCH_KEEP_BYTES / 4 + 1;
        with_scratch(&W_SCRATCH, big, |a: &mut [f32]| a[big - 1] = 3.0);
        W_SCRATCH.with(|cell| assert_eq!(cell.borrow().bytes, 0));
    }

    #[test]
    fn pack_x_in_chunks_of_whole_tiles_equals_one_pack_x() {
        // What `matmul` does over the pool: the last chunk's 4- and 1-row blocks must fall where one
        // call over all rows puts them.
        for mr in [AVX2_ROWS, AVX512_ROWS] {
            for m in 1..80 {
                let k = 3;
                let x: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
                let mut whole = vec![f32::NAN; m * k];
                pack_x(&x, m, k, mr, &mut whole);
                for tiles in 1..6 {
                    let rows = tiles * mr;
                    let mut chunked = vec![f32::NAN; m * k];
                    for (o, xc) in chunked.chunks_mut(rows * k).zip(x.chunks(rows * k)) {
                        pack_x(xc, xc.len() / k, k, mr, o);
                    }
                    assert_eq!(whole, chunked, "m={m} mr={mr} rows={rows}");
                }
            }
        }
    }

    #[test]
    fn a_panic_inside_with_scratch_leaves_the_slot_usable_and_frees_an_oversized_buffer() {
        let before = with_scratch(&W_SCRATCH, 100, |a: &mut [f64]| a.as_ptr() as usize);
        let panicked = std::panic::catch_unwind(|| {
            with_scratch(&W_SCRATCH, 100, |_: &mut [f64]| panic!("boom"))
        });
        assert!(panicked.is_err());
        let after = with_scratch(&W_SCRATCH, 100, |a: &mut [f64]| a.as_ptr() as usize);
        assert_eq!(before, after);
        let big = SCRATCH_KEEP_BYTES / 8 + 1;
        let panicked = std::panic::catch_unwind(|| {
            with_scratch(&W_SCRATCH, big, |_: &mut [f64]| panic!("boom"))
        });
        assert!(panicked.is_err());
        W_SCRATCH.with(|c| assert!(c.borrow().bytes <= SCRATCH_KEEP_BYTES));
    }

    /// Where the kernel offers transparent huge pages on request, the scratch gets them. Ignored by
    /// default: whether a 2 MiB page is free at that moment is the machine's, not the code's, doing.
    #[cfg(target_os = "linux")]
    #[test]
    #[ignore = "needs free 2 MiB pages; cargo test -- --ignored"]
    fn scratch_is_backed_by_huge_pages_where_the_kernel_offers_them() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !(mode.contains("[madvise]") || mode.contains("[always]")) {
            eprintln!("transparent huge pages are off here ({mode:?}): nothing to check");
            return;
        }
        // A thread of its own, so that its scratch is fresh: allocated, advised, then touched.
        std::thread::spawn(|| {
            with_scratch(&X_SCRATCH, 8 << 20, |a: &mut [f32]| {
                a.fill(1.0);
                let start = a.as_ptr() as usize;
                let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
                let mut in_ours = false;
                let mut huge_kb = 0;
                for line in smaps.lines() {
                    if let Some((range, _)) = line.split_once(' ') {
                        if let Some((lo, hi)) = range.split_once('-') {
                            if let (Ok(lo), Ok(hi)) =
                                (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                            {
                                in_ours = lo <= start && start < hi;
                                continue;
                            }
                        }
                    }
                    if in_ours {
                        if let Some(v) = line.strip_prefix("AnonHugePages:") {
                            huge_kb = v.trim().trim_end_matches(" kB").trim().parse().unwrap();
                        }
                    }
                }
                assert!(huge_kb > 0, "no huge pages behind the scratch buffer");
            });
        })
        .join()
        .unwrap();
    }

    /// Every ISA this CPU has, both element types, against the f64 triple loop on small integers
    /// (exact in both): row counts around the row-block sizes, ragged panels, inner dimensions over
    /// one packed block (so later blocks add to the output), column ranges that start mid-matrix.
    #[test]
    fn each_instruction_set_matches_the_triple_loop_on_every_column_range() {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = is_x86_feature_detected!("avx512f");
        for &(m, k, n) in &[
            (13, 7, 45),
            (14, 9, 40),
            (33, 20, 64),
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
                let packed_x = |rows: usize| {
                    let mut xp = vec![f64::NAN; m * k];
                    pack_x(&x, m, k, rows, &mut xp);
                    let xp32: Vec<f32> = xp.iter().map(|&v| v as f32).collect();
                    (xp, xp32)
                };
                // Two calls covering the columns between them, as two bands of `matmul` do.
                let split = (n / 2).min(32);
                let mut runs: Vec<(&str, Vec<f64>)> = Vec::new();
                let mut out64 = vec![f64::NAN; m * n];
                let mut out32 = vec![f32::NAN; m * n];
                // SAFETY (all): each kernel runs only where its features were detected; the
                // slices are (m, k), (k, n) and (m, n).
                if avx2 {
                    let (xp, xp32) = packed_x(AVX2_ROWS);
                    for cols in [0..split, split..n] {
                        unsafe {
                            dense_packed_avx2::<__m256d>(&p, &xp, cols.clone(), out64.as_mut_ptr())
                        };
                        unsafe {
                            dense_packed_avx2::<__m256>(&p32, &xp32, cols, out32.as_mut_ptr())
                        };
                    }
                    runs.push(("avx2 f64", out64.clone()));
                    runs.push(("avx2 f32", out32.iter().map(|&v| v as f64).collect()));
                }
                if avx512 {
                    out64.fill(f64::NAN);
                    out32.fill(f32::NAN);
                    let (xp, xp32) = packed_x(AVX512_ROWS);
                    for cols in [0..split, split..n] {
                        unsafe {
                            dense_packed_avx512::<__m512d>(
                                &p,
                                &xp,
                                cols.clone(),
                                out64.as_mut_ptr(),
                            )
                        };
                        unsafe {
                            dense_packed_avx512::<__m512>(&p32, &xp32, cols, out32.as_mut_ptr())
                        };
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
