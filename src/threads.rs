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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
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

// The partner's job slot moves EMPTY -> POSTED (by the caller) -> RUNNING (by the partner) -> DONE,
// or POSTED -> EMPTY when the caller takes its job back because the partner had not started it.
const EMPTY: u32 = 0;
const POSTED: u32 = 1;
const RUNNING: u32 = 2;
const DONE: u32 = 3;

/// A job on the caller's stack: a type-erased `FnOnce` and the function that runs it.
#[derive(Clone, Copy)]
struct Job {
    data: *mut (),
    run: unsafe fn(*mut ()),
}

/// The standing partner thread and its one-job slot.
struct Partner {
    /// Held by the one caller using the partner; others run both halves themselves.
    claimed: AtomicBool,
    state: AtomicU32,
    /// Written by the caller before POSTED, read by whoever moves it on from POSTED.
    job: UnsafeCell<Option<Job>>,
    panicked: AtomicBool,
    parked: AtomicBool,
    thread: Thread,
}

// SAFETY: `job` is only touched under the state protocol above, by one thread at a time.
unsafe impl Sync for Partner {}
unsafe impl Send for Job {}

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
                        claimed: AtomicBool::new(false),
                        state: AtomicU32::new(EMPTY),
                        job: UnsafeCell::new(None),
                        panicked: AtomicBool::new(false),
                        parked: AtomicBool::new(false),
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
                if self.state.load(Acquire) == POSTED
                    && self
                        .state
                        .compare_exchange(POSTED, RUNNING, Acquire, Relaxed)
                        .is_ok()
                {
                    // SAFETY: RUNNING gives this thread the job; the caller waits for DONE before
                    // its stack frame (where the job lives) goes away.
                    let job = unsafe { (*self.job.get()).take() };
                    if let Some(job) = job {
                        let ok = catch_unwind(AssertUnwindSafe(|| unsafe { (job.run)(job.data) }));
                        self.panicked.store(ok.is_err(), Relaxed);
                    }
                    self.state.store(DONE, Release);
                    idle_since = Instant::now();
                }
                spins = spins.wrapping_add(1);
                // Reading the clock costs more than a spin; look at it now and then.
                if spins.is_multiple_of(64) && idle_since.elapsed() > PARTNER_SPIN {
                    break;
                }
                std::hint::spin_loop();
            }
            // Park, unless a job was posted meanwhile; a caller that posts after seeing `parked`
            // unparks, and one that posted before is seen here (both sides SeqCst).
            self.parked.store(true, SeqCst);
            if self.state.load(SeqCst) != POSTED {
                std::thread::park();
            }
            self.parked.store(false, SeqCst);
        }
    }
}

/// Runs `a` and `b`, `a` on the kernel's partner thread where one is free and `b` on this one; returns
/// when both are done. Worth it for work of a few microseconds and up, each half alike in size;
/// callers use it only while the thread count is above 1. If the partner is busy with another caller
/// or has not picked `a` up by the time `b` is done, `a` runs here: a call never waits on a thread
/// that is not running its work.
pub fn join_pair<A: FnOnce() + Send, B: FnOnce()>(a: A, b: B) {
    let partner = match Partner::get() {
        Some(p)
            if p.claimed
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
    unsafe fn run<A: FnOnce()>(data: *mut ()) {
        // SAFETY: `data` is the `Option<A>` below, handed to exactly one runner.
        if let Some(f) = unsafe { (*(data as *mut Option<A>)).take() } {
            f();
        }
    }
    let mut a = Some(a);
    // SAFETY: the slot is ours (claimed) and EMPTY, so no other thread reads it.
    unsafe {
        *partner.job.get() = Some(Job {
            data: &mut a as *mut Option<A> as *mut (),
            run: run::<A>,
        });
    }
    partner.state.store(POSTED, SeqCst);
    if partner.parked.load(SeqCst) {
        partner.thread.unpark();
    }
    /// Waits for the partner to be done with `a` even if `b` panics: `a` lives in this frame.
    struct Finish(&'static Partner);
    impl Finish {
        /// Takes `a` back if the partner has not started it, else waits for it; then frees the
        /// partner for the next caller. Returns whether the partner's run of `a` panicked.
        fn complete(&self) -> bool {
            let partner = self.0;
            let mut panicked = false;
            if partner
                .state
                .compare_exchange(POSTED, EMPTY, Acquire, Relaxed)
                .is_ok()
            {
                // Taken back: the caller runs it; clear the slot.
                // SAFETY: EMPTY again, and the slot is ours.
                unsafe { *partner.job.get() = None };
            } else {
                let mut spins = 0u32;
                while partner.state.load(Acquire) != DONE {
                    spins = spins.wrapping_add(1);
                    if spins < 1 << 16 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                // Read before the partner is freed: the next caller's job may set it again.
                panicked = partner.panicked.swap(false, Relaxed);
                partner.state.store(EMPTY, Relaxed);
            }
            partner.claimed.store(false, Release);
            panicked
        }
    }
    impl Drop for Finish {
        fn drop(&mut self) {
            self.complete();
        }
    }
    let finish = Finish(partner);
    b();
    let panicked = finish.complete();
    core::mem::forget(finish);
    // Still Some only if taken back from the partner.
    if let Some(f) = a.take() {
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
}
