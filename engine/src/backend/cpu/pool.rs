//! A persistent thread pool for the CPU kernels.
//!
//! `threads − 1` workers live as long as the backend; the calling thread is worker 0. An op
//! publishes one job (a closure called once per worker with that worker's index) by bumping
//! an epoch counter; idle workers spin on it for a short while (decode issues hundreds of
//! ops per token, microseconds apart) and then park, so an idle engine costs no CPU. The
//! caller runs the job too. Work is split into items claimed from a shared atomic counter
//! ([`Ctx::next`]), or in shares ([`Ctx::next_of`]: each worker walks a contiguous share of
//! the items in order — one long stream of weight rows per core — then helps with what is
//! left of the others'); either way a worker that is descheduled (a busy machine) or still
//! parked simply claims fewer items. When the caller has run out of items it *closes*
//! the job: a worker that has not entered it by then skips it, so the caller waits only for
//! workers that are actually running an item, never for one that has not woken up.
//!
//! Each worker index owns a scratch arena that grows to the largest size asked for and is
//! then reused, so steady-state decoding allocates nothing.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(2);

/// A job: called once per worker with its context. Lifetime-erased; `run` waits for every
/// worker to finish before the closure it points at goes out of scope.
type JobPtr = *const (dyn Fn(&mut Ctx) + Sync + 'static);

/// Per-worker scratch memory, 64-byte aligned.
#[derive(Default)]
pub struct Scratch {
    words: Vec<[f32; 16]>,
}

impl Scratch {
    /// `n` f32 values (contents unspecified), growing the arena if needed.
    pub fn f32s(&mut self, n: usize) -> &mut [f32] {
        let blocks = n.div_ceil(16);
        if self.words.len() < blocks {
            self.words.resize(blocks, [0.0; 16]);
        }
        &mut bytemuck::cast_slice_mut::<[f32; 16], f32>(&mut self.words)[..n]
    }
}

/// In `Shared::entry`: the job is closed to workers that have not entered yet.
const CLOSED: u64 = 1 << 31;

struct Shared {
    n: usize,
    epoch: AtomicUsize,
    job: UnsafeCell<Option<JobPtr>>,
    /// `(epoch << 32) | CLOSED? | workers entered` of the current job.
    entry: AtomicU64,
    /// Workers (other than the caller) that finished the current job.
    done: AtomicUsize,
    /// Work-item counter shared by the workers of the current job.
    counter: AtomicUsize,
    /// Items claimed of each worker's share ([`Ctx::next_of`]).
    claimed: Box<[Claimed]>,
    sleeping: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    scratch: Vec<UnsafeCell<Scratch>>,
}

// SAFETY: `job` is written only by the thread holding `ThreadPool::lock` while no worker
// reads it (before the epoch bump / after the job is closed and its entrants are done); `scratch[i]` is touched
// only by the thread running worker index `i` of the current job.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A count of claimed items of one share, on a cache line of its own: each worker mostly
/// counts in its own share, and no line bounces between the cores.
#[derive(Default)]
#[repr(align(128))]
struct Claimed(AtomicUsize);

/// What a worker sees while running a job.
pub struct Ctx<'a> {
    /// This worker's index, `0..threads`.
    pub index: usize,
    pub threads: usize,
    pub scratch: &'a mut Scratch,
    counter: &'a AtomicUsize,
    claimed: &'a [Claimed],
    /// Shares this worker has finished claiming from ([`Ctx::next_of`]).
    round: usize,
}

impl<'a> Ctx<'a> {
    fn new(
        index: usize,
        threads: usize,
        scratch: &'a mut Scratch,
        counter: &'a AtomicUsize,
        claimed: &'a [Claimed],
    ) -> Self {
        Ctx {
            index,
            threads,
            scratch,
            counter,
            claimed,
            round: 0,
        }
    }

    /// The next unclaimed work item of this job (items start at 0 for every job).
    pub fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// The next unclaimed of the job's `n` work items, in shares: worker `w` first takes the
    /// items of its own share, `w·n/threads..(w+1)·n/threads`, in order, then the rest of
    /// each following worker's share, from where that worker is. `None` once this worker
    /// finds nothing left. Every worker of a job must pass the same `n`, and a job uses
    /// either this or [`Ctx::next`].
    ///
    /// Consecutive items of a share are consecutive memory where items are panels of weight
    /// rows, so each core reads one long stream that the hardware prefetcher follows, where
    /// a shared counter deals the panels out alternately and every panel starts a new stream.
    pub fn next_of(&mut self, n: usize) -> Option<usize> {
        let threads = self.claimed.len();
        while self.round < threads {
            let w = (self.index + self.round) % threads;
            let (lo, hi) = (w * n / threads, (w + 1) * n / threads);
            let i = lo + self.claimed[w].0.fetch_add(1, Ordering::Relaxed);
            if i < hi {
                return Some(i);
            }
            self.round += 1;
        }
        None
    }

    /// A handle on the job's work-item counter that does not borrow the context (so the
    /// scratch arena can be borrowed alongside).
    pub fn items(&self) -> Items<'a> {
        Items(self.counter)
    }
}

/// The work-item counter of a job.
#[derive(Clone, Copy)]
pub struct Items<'a>(&'a AtomicUsize);

impl Items<'_> {
    /// The next unclaimed work item.
    pub fn next(self) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Spins politely; yields the core after a while (the machine may be oversubscribed).
#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 4096 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// One job at a time.
    lock: Mutex<()>,
}

thread_local! {
    /// Set on pool workers: a job that calls back into a pool runs inline.
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl ThreadPool {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let n = threads.max(1);
        let shared = Arc::new(Shared {
            n,
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            entry: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            counter: AtomicUsize::new(0),
            claimed: (0..n).map(|_| Claimed::default()).collect(),
            sleeping: (0..n).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            scratch: (0..n)
                .map(|_| UnsafeCell::new(Scratch::default()))
                .collect(),
        });
        let mut handles = Vec::with_capacity(n - 1);
        for i in 1..n {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("pocketvlm-cpu-{i}"))
                .spawn(move || worker(s, i));
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.shutdown.store(true, Ordering::SeqCst);
                    shared.epoch.fetch_add(1, Ordering::SeqCst);
                    for h in handles {
                        h.thread().unpark();
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        let _ = shared
            .threads
            .set(handles.iter().map(|h| h.thread().clone()).collect());
        Ok(ThreadPool {
            shared,
            handles,
            lock: Mutex::new(()),
        })
    }

    pub fn threads(&self) -> usize {
        self.shared.n
    }

    /// Calls `f` once for every worker index (in parallel) and returns when all are done.
    /// A panic in any worker is re-raised here once the others have finished.
    pub fn run<F: Fn(&mut Ctx) + Sync>(&self, f: F) {
        let s = &*self.shared;
        if s.n == 1 || IN_WORKER.get() {
            return self.run_inline(&f);
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let erased: &(dyn Fn(&mut Ctx) + Sync) = &f;
        // SAFETY: the pointer is only dereferenced by workers that entered this job, and
        // this function does not return before all of them have finished with it.
        let ptr: JobPtr =
            unsafe { std::mem::transmute(erased as *const (dyn Fn(&mut Ctx) + Sync)) };
        // SAFETY: no worker reads `job` now (the previous job is closed and finished, the
        // next epoch is not published yet).
        unsafe { *s.job.get() = Some(ptr) };
        s.counter.store(0, Ordering::Relaxed);
        for c in &s.claimed {
            c.0.store(0, Ordering::Relaxed);
        }
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        let epoch = s.epoch.load(Ordering::Relaxed).wrapping_add(1);
        s.entry
            .store(((epoch as u64) & 0xFFFF_FFFF) << 32, Ordering::SeqCst);
        s.epoch.store(epoch, Ordering::SeqCst);
        if let Some(threads) = s.threads.get() {
            for (i, t) in threads.iter().enumerate() {
                if s.sleeping[i + 1].load(Ordering::SeqCst) {
                    t.unpark();
                }
            }
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: index 0 is this thread's for the duration of the job.
            let scratch = unsafe { &mut *s.scratch[0].get() };
            let mut ctx = Ctx::new(0, s.n, scratch, &s.counter, &s.claimed);
            f(&mut ctx);
        }));
        // Close the job and wait for the workers that entered it.
        let entered = (s.entry.fetch_or(CLOSED, Ordering::AcqRel) & (CLOSED - 1)) as usize;
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < entered {
            backoff(&mut spins);
        }
        unsafe { *s.job.get() = None };
        if let Err(p) = result {
            resume_unwind(p);
        }
        if s.panicked.load(Ordering::Acquire) {
            panic!("a CPU worker thread panicked");
        }
    }

    /// The job on this thread alone, as one worker (`threads == 1`): a single-threaded
    /// pool, or a job started from inside another job.
    fn run_inline(&self, f: &(dyn Fn(&mut Ctx) + Sync)) {
        let s = &*self.shared;
        let mut local = Scratch::default();
        let counter = AtomicUsize::new(0);
        let claimed = [Claimed::default()];
        let scratch = if s.n == 1 && !IN_WORKER.get() {
            // SAFETY: a single-threaded pool is used by one caller at a time (the lock).
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let scratch = unsafe { &mut *s.scratch[0].get() };
            let mut ctx = Ctx::new(0, 1, scratch, &counter, &claimed);
            return f(&mut ctx);
        } else {
            &mut local
        };
        let mut ctx = Ctx::new(0, 1, scratch, &counter, &claimed);
        f(&mut ctx);
    }
}

fn worker(s: Arc<Shared>, index: usize) {
    IN_WORKER.set(true);
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin first, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) || start.elapsed() < SPIN_BEFORE_PARK {
                std::hint::spin_loop();
                continue;
            }
            s.sleeping[index].store(true, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen {
                std::thread::park();
            }
            s.sleeping[index].store(false, Ordering::SeqCst);
        }
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Enter the job unless it is closed (or already a later one).
        let tag = ((seen as u64) & 0xFFFF_FFFF) << 32;
        let mut cur = s.entry.load(Ordering::Acquire);
        let entered = loop {
            if cur & !(CLOSED | (CLOSED - 1)) != tag || cur & CLOSED != 0 {
                break false;
            }
            match s
                .entry
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if !entered {
            continue;
        }
        // SAFETY: the caller published `job` before the epoch and keeps the closure alive
        // until every worker that entered has counted itself done.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            let r = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: index `index` belongs to this thread during the job.
                let scratch = unsafe { &mut *s.scratch[index].get() };
                let mut ctx = Ctx::new(index, s.n, scratch, &s.counter, &s.claimed);
                unsafe { (*job)(&mut ctx) };
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for h in &self.handles {
            h.thread().unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Physical cores available to this process: logical CPUs in our affinity mask, counted
/// once per core (Linux sysfs topology); elsewhere the available parallelism.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(target_os = "linux")]
    {
        if let Some(n) = linux_physical_cores() {
            return n.clamp(1, logical);
        }
    }
    logical
}

#[cfg(target_os = "linux")]
fn linux_physical_cores() -> Option<usize> {
    use std::collections::BTreeSet;
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let mut cores = BTreeSet::new();
    for cpu in parse_cpu_list(online.trim())? {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let pkg = std::fs::read_to_string(format!("{base}/physical_package_id")).ok()?;
        let core = std::fs::read_to_string(format!("{base}/core_id")).ok()?;
        cores.insert((pkg.trim().to_string(), core.trim().to_string()));
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Parses a sysfs CPU list such as `0-3,8,10-11`.
#[cfg(target_os = "linux")]
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = vec![];
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_runs_and_indices_are_distinct() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.run(|ctx| {
                    hits[ctx.index].fetch_add(1, Ordering::Relaxed);
                });
                // The caller always runs; a worker runs at most once per job.
                assert_eq!(hits[0].load(Ordering::Relaxed), 1);
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) <= 1));
            }
        }
    }

    #[test]
    fn work_items_are_claimed_once() {
        let pool = ThreadPool::new(3).unwrap();
        let seen: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        pool.run(|ctx| {
            loop {
                let i = ctx.next();
                if i >= seen.len() {
                    break;
                }
                seen[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn items_in_shares_are_claimed_once_and_shares_in_order() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            for n in [0, 1, 2, 7, 1000] {
                let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let in_order = AtomicBool::new(true);
                pool.run(|ctx| {
                    let share = ctx.index * n / ctx.threads..(ctx.index + 1) * n / ctx.threads;
                    let mut last = None;
                    while let Some(i) = ctx.next_of(n) {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                        // A worker's own share comes first, in order.
                        if share.contains(&i) && last.is_some_and(|l| !share.contains(&l) || l >= i)
                        {
                            in_order.store(false, Ordering::Relaxed);
                        }
                        last = Some(i);
                    }
                });
                assert!(
                    seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                    "{threads} threads, {n} items"
                );
                assert!(in_order.load(Ordering::Relaxed));
            }
        }
    }

    #[test]
    fn panics_reach_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        // The caller's own panic.
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(|_| panic!("boom"))));
        assert!(r.is_err());
        // A worker's panic (a worker runs only if it wakes before the items run out, so
        // give it slow items and retry).
        let mut seen = false;
        for _ in 0..100 {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run(|ctx| {
                    while ctx.next() < 20 {
                        if ctx.index == 1 {
                            panic!("worker boom");
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            }));
            if r.is_err() {
                seen = true;
                break;
            }
        }
        assert!(seen, "the worker never ran an item");
        let n = AtomicUsize::new(0);
        pool.run(|ctx| {
            while ctx.next() < 10 {
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert_eq!(n.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn parses_cpu_lists() {
        #[cfg(target_os = "linux")]
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(physical_cores() >= 1);
    }
}
