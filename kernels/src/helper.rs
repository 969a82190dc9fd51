//! A persistent second thread for running one closure beside another.
//!
//! `std::thread::scope` starts a new thread per call: about 90 us (median,
//! spawn and join) on the 2-core development machine, more than a tenth of a
//! batch-1 ARCH-1 inference. [`Helper`] starts its thread once and hands it
//! work through a channel; between calls the thread sleeps in the channel's
//! receive, so it costs nothing while the game runs.
//!
//! Both ends first poll their channel for up to [`SPIN`] before they block in
//! it. Waking a thread that sleeps in a futex takes tens of microseconds, and
//! the scheduler tends to wake it on the waker's core, where the two lanes
//! then share one core until it is migrated. Back-to-back calls (several
//! faces, a benchmark) find the helper still polling on its own core; a
//! single call per frame costs the helper at most `SPIN` of polling after it.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvError, SyncSender, TryRecvError, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

/// How long a lane polls its channel before it sleeps in it.
const SPIN: Duration = Duration::from_micros(200);

/// `rx.recv()`, polling for up to `spin` before blocking.
fn recv_spinning<T>(rx: &Receiver<T>, spin: Duration) -> Result<T, RecvError> {
    let start = Instant::now();
    for i in 0u32.. {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            Err(TryRecvError::Empty) => {}
        }
        // Reading the clock costs more than a poll: every 64 polls.
        if i % 64 == 63 && start.elapsed() >= spin {
            break;
        }
        std::hint::spin_loop();
    }
    rx.recv()
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The helper thread's end: it runs each job it receives and reports back.
struct Worker {
    jobs: SyncSender<Job>,
    done: Receiver<thread::Result<()>>,
}

/// A lazily started helper thread. Cloning gives a new, not yet started
/// helper (a thread belongs to one owner: [`Helper::join`] takes `&mut self`,
/// so one call at a time waits for its own job).
#[derive(Default)]
pub struct Helper {
    /// In a mutex only to make the owner `Sync` (a `Receiver` is not);
    /// `join` reaches it through `&mut self`, without locking.
    worker: Mutex<Option<Worker>>,
}

impl Clone for Helper {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helper")
            .field(
                "started",
                &self.worker.lock().map(|w| w.is_some()).unwrap_or(false),
            )
            .finish()
    }
}

/// Waits for the helper's job on drop, so that it finishes before the
/// borrows it holds end, even while `join` unwinds.
struct WaitForJob<'a> {
    done: &'a Receiver<thread::Result<()>>,
    received: bool,
}

impl WaitForJob<'_> {
    fn wait(&mut self) -> thread::Result<()> {
        // An error means the helper thread is gone, so it cannot be running
        // the job any more.
        let r = recv_spinning(self.done, SPIN).unwrap_or(Ok(()));
        // Only now: should the receive itself unwind, `drop` still waits.
        self.received = true;
        r
    }
}

impl Drop for WaitForJob<'_> {
    fn drop(&mut self) {
        if !self.received {
            // The caller's closure is unwinding: its own panic wins.
            let _ = self.done.recv();
        }
    }
}

impl Helper {
    fn start() -> Option<Worker> {
        let (jobs, incoming) = sync_channel::<Job>(1);
        let (report, done) = sync_channel(1);
        thread::Builder::new()
            .name("inference-lane".into())
            .spawn(move || {
                while let Ok(job) = recv_spinning(&incoming, SPIN) {
                    let r = panic::catch_unwind(AssertUnwindSafe(job));
                    if report.send(r).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Worker { jobs, done })
    }

    /// Runs `here` on the calling thread and `there` on the helper thread
    /// (started on first use) at the same time, and returns when both have
    /// finished. If the helper thread cannot be started, `there` runs on a
    /// scoped thread instead. A panic in either closure is re-raised here
    /// after both have stopped.
    pub fn join<'s>(&mut self, here: impl FnOnce(), there: impl FnOnce() + Send + 's) {
        let slot = self
            .worker
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Self::start();
        }
        let Some(worker) = slot.as_ref() else {
            thread::scope(|s| {
                let h = s.spawn(there);
                here();
                if let Err(e) = h.join() {
                    panic::resume_unwind(e);
                }
            });
            return;
        };
        let job: Box<dyn FnOnce() + Send + 's> = Box::new(there);
        // SAFETY: only the lifetime is changed. The job may borrow data that
        // lives for 's, which outlasts this call; the job is either dropped
        // unrun (send failed, below) or finishes before this function returns
        // or unwinds: `WaitForJob` receives its completion report in every
        // case, and the worker reports only after the job has returned or
        // panicked (`catch_unwind`).
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 's>, Job>(job) };
        match worker.jobs.send(job) {
            Ok(()) => {
                let mut wait = WaitForJob {
                    done: &worker.done,
                    received: false,
                };
                here();
                if let Err(e) = wait.wait() {
                    panic::resume_unwind(e);
                }
            }
            Err(std::sync::mpsc::SendError(job)) => {
                // The worker thread is gone (it only exits when its channel
                // closes): run this job on a scoped thread, start a new
                // worker next time.
                *slot = None;
                thread::scope(|s| {
                    let h = s.spawn(job);
                    here();
                    if let Err(e) = h.join() {
                        panic::resume_unwind(e);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn both_closures_run_with_borrowed_data_many_times() {
        let mut h = Helper::default();
        let mut left = vec![0u32; 64];
        let mut right = vec![0u32; 64];
        for round in 1..=200u32 {
            h.join(
                || left.iter_mut().for_each(|v| *v += round),
                || right.iter_mut().for_each(|v| *v += 2 * round),
            );
        }
        let sum: u32 = (1..=200).sum();
        assert!(left.iter().all(|v| *v == sum));
        assert!(right.iter().all(|v| *v == 2 * sum));
    }

    #[test]
    fn a_panic_on_the_helper_reaches_the_caller_and_the_helper_survives() {
        let mut h = Helper::default();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            h.join(|| {}, || panic!("lane failed"));
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        h.join(
            || {
                n.fetch_add(1, Ordering::SeqCst);
            },
            || {
                // Still the persistent worker, not the scoped fallback.
                assert_eq!(thread::current().name(), Some("inference-lane"));
                n.fetch_add(1, Ordering::SeqCst);
            },
        );
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn polling_receive_gets_values_sent_before_and_after_it_blocks() {
        let (tx, rx) = sync_channel::<u32>(1);
        tx.send(1).unwrap();
        assert_eq!(recv_spinning(&rx, Duration::ZERO), Ok(1));
        // Sent long after the polling time: received all the same.
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send(2).unwrap();
        });
        assert_eq!(recv_spinning(&rx, Duration::from_micros(50)), Ok(2));
        sender.join().unwrap();
        // And a closed channel ends it.
        assert_eq!(recv_spinning(&rx, Duration::from_millis(1)), Err(RecvError));
    }

    #[test]
    fn a_panic_here_still_waits_for_the_helper() {
        let mut h = Helper::default();
        let finished = AtomicUsize::new(0);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            h.join(
                || panic!("caller failed"),
                || {
                    thread::sleep(Duration::from_millis(50));
                    finished.store(1, Ordering::SeqCst);
                },
            );
        }));
        assert!(r.is_err());
        // The helper's job had finished before the panic left `join`.
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }
}
