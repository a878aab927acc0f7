//! The kernel's threads: its own rayon pool and its size (`set_num_threads` / `get_num_threads`),
//! and a partner thread for work too short for the pool (`join_pair`).
//!
//! A private pool rather than rayon's global one, so that the thread count can be changed at any
//! time and the kernel never competes with whatever else in the process uses the global pool.
//!
//! The pool hands work over in microseconds, which is the whole run time of a small-batch MLP layer.
//! `join_pair` hands half of such work to one standing thread that, after each job, spins for a short
//! while (as OpenBLAS's threads do) before parking, so that back-to-back calls find it awake: a
//! handoff is then a cache line passed between cores, a fraction of a microsecond. It is used only
//! while the thread count is above 1, so a process set to one thread (the serving's workers) never
//! wakes it and no core is burnt spinning.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rayon::{ThreadPool, ThreadPoolBuilder};

static POOL: OnceLock<RwLock<Arc<ThreadPool>>> = OnceLock::new();
/// The pool's size, readable without the lock (checked on every small call by `join_pair`'s callers).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The default: one thread per core the OS lets this process use.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build(threads: usize) -> Result<Arc<ThreadPool>, String> {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("otpserve-kernel-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| format!("could not start {threads} kernel threads: {e}"))
}

fn cell() -> &'static RwLock<Arc<ThreadPool>> {
    POOL.get_or_init(|| {
        let pool = build(default_threads())
            .or_else(|_| build(1))
            .expect("a one-thread rayon pool can always be built");
        THREADS.store(pool.current_num_threads(), Relaxed);
        RwLock::new(pool)
    })
}

/// The pool that large computations run on (a cheap `Arc` clone).
pub fn pool() -> Arc<ThreadPool> {
    match cell().read() {
        Ok(guard) => Arc::clone(&guard),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    }
}

pub fn num_threads() -> usize {
    match THREADS.load(Relaxed) {
        0 => {
            cell();
            THREADS.load(Relaxed)
        }
        n => n,
    }
}

/// Replace the pool with one of `threads` threads; computations already running finish on the old one.
pub fn set_num_threads(threads: usize) -> Result<(), String> {
    if threads == 0 {
        return Err("the thread count must be at least 1, got 0".to_string());
    }
    let new = build(threads)?;
    match cell().write() {
        Ok(mut guard) => *guard = new,
        Err(poisoned) => *poisoned.into_inner() = new,
    }
    THREADS.store(threads, Relaxed);
    Ok(())
}

/// How long the partner spins for the next job before parking. Calls from a loop come microseconds
/// apart, far inside it; an idle process pays at most this much of one core after its last call.
const PARTNER_SPIN: Duration = Duration::from_micros(100);

// The job slot's state: a ticket (one per posted job, so that nothing has to be reset between jobs)
// shifted left by 2, and in the low bits where that job is. POSTED by the caller; RUNNING once the
// partner has taken it; or TAKEN_BACK by the caller, which then runs it itself.
const POSTED: u64 = 1;
const RUNNING: u64 = 2;
const TAKEN_BACK: u64 = 3;
const PHASE: u64 = 3;

/// Bytes of a job's closure the slot holds in place; a larger closure is reached through a pointer
/// to the caller's frame.
const INLINE_JOB: usize = 96;

/// A cache line of its own, so that one thread's writes never take from another the line it is
/// spinning on.
#[repr(align(64))]
struct Line<T>(T);

/// The slot the caller posts a job to and the partner takes it from, in one place (two cache lines),
/// so that the partner gets the job with the line that tells it there is one: the handoff is then one
/// line passed between cores (each further line the partner has to fetch from the caller's cache,
/// one after the other, added a tenth of a microsecond or more).
#[repr(C, align(64))]
struct Slot {
    state: AtomicU64,
    run: UnsafeCell<unsafe fn(*mut u8)>,
    data: UnsafeCell<core::mem::MaybeUninit<[u64; INLINE_JOB / 8]>>,
}

/// The standing partner thread. Each line has one writer at a time: `claimed` the callers (the
/// partner never touches it), `slot` the caller then the partner, `done` the partner.
struct Partner {
    /// Held by the one caller using the partner; others run both halves themselves. Also holds the
    /// last ticket handed out (only the holder reads or writes it).
    claimed: Line<(AtomicBool, AtomicU64)>,
    slot: Slot,
    /// The ticket of the last job the partner finished, shifted left by 1; the low bit set if it
    /// panicked.
    done: Line<AtomicU64>,
    parked: Line<AtomicBool>,
    thread: Thread,
}

// SAFETY: the slot's cells are only touched under the state protocol above, by one thread at a time.
unsafe impl Sync for Partner {}

static PARTNER: OnceLock<Option<&'static Partner>> = OnceLock::new();

impl Partner {
    /// The partner, started on first use; None if no thread could be started.
    fn get() -> Option<&'static Partner> {
        *PARTNER.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<&'static Partner>();
            std::thread::Builder::new()
                .name("otpserve-kernel-partner".to_string())
                .spawn(move || {
                    // The partner lives as long as the process, as the pool's threads do.
                    let partner: &'static Partner = Box::leak(Box::new(Partner {
                        claimed: Line((AtomicBool::new(false), AtomicU64::new(0))),
                        slot: Slot {
                            state: AtomicU64::new(0),
                            run: UnsafeCell::new(nothing),
                            data: UnsafeCell::new(core::mem::MaybeUninit::uninit()),
                        },
                        done: Line(AtomicU64::new(0)),
                        parked: Line(AtomicBool::new(false)),
                        thread: std::thread::current(),
                    }));
                    if tx.send(partner).is_ok() {
                        partner.serve();
                    }
                })
                .ok()?;
            rx.recv().ok()
        })
    }

    fn serve(&self) {
        loop {
            let mut idle_since = Instant::now();
            let mut spins = 0u32;
            loop {
                let state = self.slot.state.load(Acquire);
                if state & PHASE == POSTED
                    && self
                        .slot
                        .state
                        .compare_exchange(state, state - POSTED + RUNNING, Acquire, Relaxed)
                        .is_ok()
                {
                    // SAFETY: RUNNING gives this thread the job, which the caller wrote before
                    // POSTED; the caller waits for `done` before its frame (which the job may
                    // borrow from) goes away.
                    let ok = catch_unwind(AssertUnwindSafe(|| unsafe {
                        (*self.slot.run.get())(self.slot.data.get() as *mut u8)
                    }));
                    let ticket = state >> 2;
                    self.done
                        .0
                        .store(ticket << 1 | u64::from(ok.is_err()), Release);
                    idle_since = Instant::now();
                }
                spins = spins.wrapping_add(1);
                // Reading the clock costs more than a spin; look at it now and then.
                if spins.is_multiple_of(64) && idle_since.elapsed() > PARTNER_SPIN {
                    break;
                }
                std::hint::spin_loop();
            }
            // Park, unless a job was posted meanwhile. A caller that posts while this parks may not
            // see `parked` in time to wake it: it then takes its job back once its own half is done,
            // and the next caller, which sees `parked`, wakes the partner.
            self.parked.0.store(true, SeqCst);
            if self.slot.state.load(SeqCst) & PHASE != POSTED {
                std::thread::park();
            }
            self.parked.0.store(false, SeqCst);
        }
    }
}

/// The slot's initial job: never run (no ticket is posted with it).
unsafe fn nothing(_: *mut u8) {}

/// Runs `a` and `b`, `a` on the kernel's partner thread where one is free and `b` on this one; returns
/// when both are done. Worth it for work of a few microseconds and up, each half alike in size;
/// callers use it only while the thread count is above 1. If the partner is busy with another caller
/// or has not picked `a` up by the time `b` is done, `a` runs here: a call never waits on a thread
/// that is not running its work.
pub fn join_pair<A: FnOnce() + Send, B: FnOnce()>(a: A, b: B) {
    let partner = match Partner::get() {
        Some(p)
            if p.claimed
                .0
                 .0
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok() =>
        {
            p
        }
        _ => {
            a();
            b();
            return;
        }
    };
    let ticket = partner.claimed.0 .1.load(Relaxed).wrapping_add(1) & (u64::MAX >> 3);
    partner.claimed.0 .1.store(ticket, Relaxed);

    /// Runs a closure the slot holds in place, moving it out.
    unsafe fn run_inline<A: FnOnce()>(data: *mut u8) {
        // SAFETY: `data` holds an `A`, written by `join_pair` and read exactly once.
        unsafe { core::ptr::read(data as *mut A)() }
    }
    /// Runs a closure held in the caller's frame, through the pointer the slot holds.
    unsafe fn run_pointed<A: FnOnce()>(data: *mut u8) {
        // SAFETY: `data` holds a pointer to the caller's `Option<A>`, taken exactly once.
        if let Some(f) = unsafe { (*(*(data as *mut *mut Option<A>))).take() } {
            f();
        }
    }
    let inline = core::mem::size_of::<A>() <= INLINE_JOB && core::mem::align_of::<A>() <= 8;
    let mut pointed: Option<A> = None;
    // SAFETY: the slot is ours (claimed) and holds no job (the last ticket is finished or taken
    // back), so no other thread reads it.
    unsafe {
        let data = partner.slot.data.get() as *mut u8;
        if inline {
            core::ptr::write(data as *mut A, a);
            *partner.slot.run.get() = run_inline::<A>;
        } else {
            pointed = Some(a);
            core::ptr::write(data as *mut *mut Option<A>, &mut pointed);
            *partner.slot.run.get() = run_pointed::<A>;
        }
    }
    partner.slot.state.store(ticket << 2 | POSTED, Release);
    if partner.parked.0.load(Acquire) {
        partner.thread.unpark();
    }

    /// Until both halves are done, even if `b` panics: `a` may borrow from this frame.
    struct Finish<A> {
        partner: &'static Partner,
        ticket: u64,
        inline: bool,
        marker: core::marker::PhantomData<A>,
    }
    impl<A> Finish<A> {
        /// Takes `a` back if the partner has not started it (returning it, when held in place, for
        /// the caller to run or drop), else waits for the partner to finish it; then frees the
        /// partner for the next caller. Also returns whether the partner's run of `a` panicked.
        fn complete(&self) -> (Option<A>, bool) {
            let partner = self.partner;
            let posted = self.ticket << 2 | POSTED;
            let mut taken = None;
            let mut panicked = false;
            if partner.slot.state.load(Relaxed) == posted
                && partner
                    .slot
                    .state
                    .compare_exchange(posted, posted - POSTED + TAKEN_BACK, Acquire, Relaxed)
                    .is_ok()
            {
                if self.inline {
                    // SAFETY: taken back, so the partner never read it; ours to move out.
                    taken = Some(unsafe { core::ptr::read(partner.slot.data.get() as *mut A) });
                }
            } else {
                let mut spins = 0u32;
                loop {
                    let done = partner.done.0.load(Acquire);
                    if done >> 1 == self.ticket {
                        panicked = done & 1 == 1;
                        break;
                    }
                    spins = spins.wrapping_add(1);
                    if spins < 1 << 16 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
            partner.claimed.0 .0.store(false, Release);
            (taken, panicked)
        }
    }
    impl<A> Drop for Finish<A> {
        fn drop(&mut self) {
            // Unwinding from `b`: a job taken back is dropped, not run.
            drop(self.complete());
        }
    }
    let finish = Finish::<A> {
        partner,
        ticket,
        inline,
        marker: core::marker::PhantomData,
    };
    b();
    let (taken, panicked) = finish.complete();
    core::mem::forget(finish);
    if let Some(f) = taken {
        f();
    } else if let Some(f) = pointed.take() {
        // Taken back while held in this frame.
        f();
    } else if panicked {
        resume_unwind(Box::new(
            "otpserve kernel: the partner thread's half of the work panicked",
        ));
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_can_be_changed_and_zero_is_refused() {
        set_num_threads(3).unwrap();
        assert_eq!(num_threads(), 3);
        assert!(set_num_threads(0).is_err());
        assert_eq!(num_threads(), 3);
        set_num_threads(default_threads()).unwrap();
    }

    #[test]
    fn join_pair_runs_both_halves_from_many_threads_at_once() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for i in 0..2000 {
                        join_pair(
                            || {
                                total.fetch_add(i, Relaxed);
                            },
                            || {
                                total.fetch_add(1, Relaxed);
                            },
                        );
                        if i % 500 == 0 {
                            // Let the partner park, so the next call has to wake it.
                            std::thread::sleep(PARTNER_SPIN * 3);
                        }
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 4 * (2000 * 1999 / 2 + 2000));
    }

    #[test]
    fn a_panic_in_the_partners_half_reaches_the_caller() {
        for _ in 0..20 {
            let caught = catch_unwind(|| join_pair(|| panic!("boom"), || {}));
            assert!(caught.is_err());
        }
        // The partner still works afterwards.
        let mut done = false;
        join_pair(|| {}, || done = true);
        assert!(done);
    }

    #[test]
    fn a_closure_too_big_to_hold_in_place_runs_from_the_callers_frame() {
        let total = AtomicU64::new(0);
        for i in 0..200u64 {
            // 256 bytes captured by value: more than the slot holds.
            let big = [i; 32];
            assert!(core::mem::size_of_val(&big) > INLINE_JOB);
            join_pair(
                || {
                    total.fetch_add(big.iter().sum::<u64>(), Relaxed);
                },
                || {},
            );
        }
        assert_eq!(total.load(Relaxed), 32 * (200 * 199 / 2));
    }

    #[test]
    fn a_panic_in_the_callers_half_still_runs_or_drops_the_partners_half_once() {
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Relaxed);
            }
        }
        let drops = AtomicUsize::new(0);
        for _ in 0..200 {
            let counted = Counted(&drops);
            let caught = catch_unwind(AssertUnwindSafe(|| {
                join_pair(move || drop(counted), || panic!("the caller's half"))
            }));
            assert!(caught.is_err());
        }
        // Each half-job's value went exactly once: run by the partner, or dropped when taken back.
        assert_eq!(drops.load(Relaxed), 200);
        let mut done = false;
        join_pair(|| {}, || done = true);
        assert!(done);
    }
}
