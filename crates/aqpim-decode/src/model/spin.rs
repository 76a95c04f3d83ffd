//! A fork-join pool for the single-token decode step, whose workers spin
//! between jobs instead of sleeping.
//!
//! One decode step of a small model is a few hundred parallel loops of tens
//! of microseconds each (a matrix-vector product, one layer's attention),
//! separated by short serial stretches (norms, RoPE, residual adds). Rayon
//! parks an idle worker and wakes it through the kernel, and on a virtual
//! machine that hand-off costs as much as a small loop. Here the workers
//! busy-wait on a job counter for a short while after each job (they park
//! only after [`SPIN`] without work), so the next loop starts on every
//! thread within a microsecond. This is the scheme llama.cpp's thread pool
//! uses for the same reason.
//!
//! [`for_each`] runs `f(0..n)` across the pool sized by the current rayon
//! pool (so `--threads` bounds both). Calls from inside a job, or while
//! another thread is using the same pool, run serially on the caller.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// The job being run: a type-erased `&(dyn Fn(usize) + Sync)`.
type Job = *const (dyn Fn(usize) + Sync + 'static);

struct Shared {
    /// Incremented for every job; workers wait for it to change.
    epoch: AtomicUsize,
    /// Next task index to hand out.
    next: AtomicUsize,
    /// Tasks in the current job.
    tasks: AtomicUsize,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    /// Set while a caller owns the pool.
    busy: AtomicBool,
    /// Set if a task of the current job panicked.
    panicked: AtomicBool,
    /// Set when the pool shuts down.
    stop: AtomicBool,
    /// The current job, written by the caller before `epoch` moves and read by
    /// workers after they see it move.
    job: Mutex<Option<SendJob>>,
    /// Parked workers wait here (the mutex guards the park decision).
    park: Mutex<usize>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendJob(Job);

// SAFETY: the pointee is `Sync`, and the caller of `run` keeps it alive until
// every worker has finished with it (see `SpinPool::run`).
unsafe impl Send for SendJob {}

thread_local! {
    /// Whether this thread is running a task of some spin pool.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// A pool of `threads - 1` spinning workers plus the calling thread.
struct SpinPool {
    shared: Arc<Shared>,
    threads: usize,
}

impl SpinPool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            tasks: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            job: Mutex::new(None),
            park: Mutex::new(0),
            wake: Condvar::new(),
        });
        for i in 1..threads {
            let s = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("aqpim-spin-{i}"))
                .spawn(move || worker(&s, 0))
                .expect("spawning a decode worker thread");
        }
        SpinPool { shared, threads }
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if n <= 1
            || self.threads == 1
            || IN_TASK.with(Cell::get)
            || s.busy.swap(true, Ordering::Acquire)
        {
            (0..n).for_each(f);
            return;
        }
        // SAFETY: only the lifetime is erased. Workers dereference the pointer
        // only between seeing the new epoch and decrementing `pending`, and
        // this function does not return (or unwind) before `pending` is zero.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(SendJob(job));
        s.next.store(0, Ordering::Relaxed);
        s.tasks.store(n, Ordering::Relaxed);
        s.pending.store(self.threads - 1, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let parked = s.park.lock().unwrap_or_else(|e| e.into_inner());
            if *parked > 0 {
                s.wake.notify_all();
            }
        }
        let mine = panic::catch_unwind(AssertUnwindSafe(|| run_tasks(s, f)));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let theirs = s.panicked.load(Ordering::Relaxed);
        s.busy.store(false, Ordering::Release);
        if let Err(p) = mine {
            panic::resume_unwind(p);
        }
        assert!(!theirs, "a decode worker task panicked");
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _guard = self.shared.park.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

/// Takes task indices until none are left.
fn run_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync)) {
    let n = s.tasks.load(Ordering::Relaxed);
    IN_TASK.with(|c| c.set(true));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_TASK.with(|c| c.set(false));
        }
    }
    let _reset = Reset;
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

/// A worker's loop; `seen` is the epoch at the pool's creation (a job
/// published before the thread got going is still picked up).
fn worker(s: &Shared, mut seen: usize) {
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            let e = s.epoch.load(Ordering::SeqCst);
            if e != seen {
                seen = e;
                break;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(64) && idle_since.elapsed() > SPIN {
                let mut parked = s.park.lock().unwrap_or_else(|e| e.into_inner());
                *parked += 1;
                while s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                    parked = s.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
                }
                *parked -= 1;
                idle_since = Instant::now();
            }
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(SendJob(job)) = job {
            // SAFETY: the caller keeps the job alive until `pending` reaches
            // zero, which happens only after the decrement below.
            let f = unsafe { &*job };
            if panic::catch_unwind(AssertUnwindSafe(|| run_tasks(s, f))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// The pool for `threads` threads (one per thread count, created on first
/// use and kept for the life of the process; its workers park when idle).
fn pool(threads: usize) -> &'static SpinPool {
    static POOLS: OnceLock<Mutex<Vec<&'static SpinPool>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.iter().find(|p| p.threads == threads) {
        return p;
    }
    let p: &'static SpinPool = Box::leak(Box::new(SpinPool::new(threads)));
    pools.push(p);
    p
}

/// Runs `f(i)` for every `i in 0..n`, spread over as many threads as the
/// current rayon pool has (each index exactly once, in no particular order
/// across threads). Returns when all are done; a panic in any task is
/// re-raised here.
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = rayon::current_num_threads().clamp(1, n.max(1));
    if threads == 1 {
        (0..n).for_each(f);
        return;
    }
    pool(rayon::current_num_threads()).run(n, f);
}

/// A raw pointer that may cross threads (for handing out disjoint chunks).
struct SyncPtr<T>(*mut T);

impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SyncPtr<T> {}

// SAFETY: used only to hand disjoint chunks of one `&mut [T]` to tasks.
unsafe impl<T: Send> Send for SyncPtr<T> {}
// SAFETY: as above; each task touches only its own chunk.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

/// Runs `f(c, chunk)` for every `chunk`-long piece of `data` (the last one
/// may be shorter), `c` its index, spread over the pool like [`for_each`].
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let chunk = chunk.max(1);
    let len = data.len();
    let base = SyncPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), &|c| {
        let start = c * chunk;
        let n = chunk.min(len - start);
        let p = base;
        // SAFETY: `start + n <= len`, and distinct `c` give disjoint ranges of
        // `data`, which stays mutably borrowed for the whole call.
        let piece = unsafe { std::slice::from_raw_parts_mut(p.0.add(start), n) };
        f(c, piece);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Runs `f` inside a rayon pool of `threads` threads (which sizes the
    /// spin pool that `for_each` uses).
    fn on_threads(threads: usize, f: impl FnOnce() + Send) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f);
    }

    #[test]
    fn every_index_runs_once() {
        for threads in [1, 2, 3] {
            on_threads(threads, || {
                for n in [0usize, 1, 2, 7, 100, 1000] {
                    let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                    for_each(n, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n {n}");
                }
            });
        }
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        on_threads(2, || {
            for (len, chunk) in [(0, 4), (1, 4), (10, 3), (64, 8), (1000, 7)] {
                let mut v = vec![0usize; len];
                for_each_chunk_mut(&mut v, chunk, &|c, piece| {
                    for (j, x) in piece.iter_mut().enumerate() {
                        *x += c * chunk + j + 1;
                    }
                });
                assert!(
                    v.iter().enumerate().all(|(i, &x)| x == i + 1),
                    "{len} {chunk}"
                );
            }
        });
    }

    #[test]
    fn nested_calls_and_parked_workers_still_finish() {
        on_threads(2, || {
            let total = AtomicU64::new(0);
            for round in 0..3 {
                for_each(4, &|i| {
                    for_each(5, &|j| {
                        total.fetch_add((i * 5 + j) as u64, Ordering::Relaxed);
                    });
                });
                if round == 1 {
                    // Let the worker park, then wake it with the next job.
                    thread::sleep(SPIN * 4);
                }
            }
            assert_eq!(total.load(Ordering::Relaxed), 3 * (0..20).sum::<u64>());
        });
    }

    #[test]
    fn a_panicking_task_is_reraised_and_the_pool_recovers() {
        on_threads(2, || {
            let r = panic::catch_unwind(|| {
                for_each(64, &|i| {
                    if i == 40 {
                        panic!("task 40");
                    }
                })
            });
            assert!(r.is_err());
            let count = AtomicU64::new(0);
            for_each(64, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), 64);
        });
    }

    #[test]
    fn concurrent_callers_share_a_pool_safely() {
        on_threads(2, || {
            let total = AtomicU64::new(0);
            rayon::scope(|sc| {
                for _ in 0..4 {
                    sc.spawn(|_| {
                        for _ in 0..50 {
                            for_each(10, &|i| {
                                total.fetch_add(i as u64, Ordering::Relaxed);
                            });
                        }
                    });
                }
            });
            assert_eq!(total.load(Ordering::Relaxed), 4 * 50 * 45);
        });
    }
}
