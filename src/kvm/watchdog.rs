//! A watchdog that kicks the vCPU thread out of `KVM_RUN`, so that a guest
//! spinning in a loop without any exit cannot hang the host.
//!
//! The allowance is CPU time of the vCPU thread (the guest's time in
//! `KVM_RUN` is that thread's CPU time), so a run is not cut off because
//! the host gave the thread no CPU: on a loaded machine, or while the
//! process was stopped, a wall-clock limit ended runs before their first
//! instruction and the differential harness saw divergences that were
//! none. A wall-clock backstop (`WALL_FACTOR` times the allowance plus
//! `WALL_SLACK`) still ends a run that never gets the CPU.
//!
//! One helper thread per engine sleeps until the allowance could be used
//! up, checks the vCPU thread's CPU clock, and once it is (or the backstop
//! passed) sets `fired` and sends a no-op real-time signal to the vCPU
//! thread every few milliseconds until the run loop disarms it. `KVM_RUN`
//! returns `EINTR` on a signal; the run loop also checks `fired` before
//! each entry, so a kick that lands between two entries is not lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the watchdog repeats its kick while the vCPU has not stopped.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// The wall-clock backstop: this many times the CPU allowance ...
const WALL_FACTOR: u32 = 50;
/// ... plus this.
const WALL_SLACK: Duration = Duration::from_secs(10);

/// An armed limit.
#[derive(Clone, Copy)]
struct Deadline {
    /// CPU clock of the vCPU thread (`None`: it could not be read, the
    /// allowance is wall-clock time).
    clock: Option<libc::clockid_t>,
    /// That clock when armed.
    start_cpu: Duration,
    /// CPU time allowed.
    limit: Duration,
    /// When armed.
    start: Instant,
}

impl Deadline {
    /// CPU time still allowed (wall-clock time without a CPU clock), or
    /// `None` once the limit or the backstop is reached.
    fn remaining(&self) -> Option<Duration> {
        let wall = self.start.elapsed();
        if wall >= self.limit * WALL_FACTOR + WALL_SLACK {
            return None;
        }
        let used = match self.clock {
            Some(c) => cpu_time(c).map_or(wall, |t| t.saturating_sub(self.start_cpu)),
            None => wall,
        };
        self.limit.checked_sub(used).filter(|d| !d.is_zero())
    }
}

/// The current value of CPU clock `c`.
fn cpu_time(c: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; a clock id of a thread that
    // exited makes clock_gettime fail, which is handled.
    let r = unsafe { libc::clock_gettime(c, &mut ts) };
    (r == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The CPU clock of the calling thread, readable from other threads.
fn own_cpu_clock() -> Option<libc::clockid_t> {
    let mut c: libc::clockid_t = 0;
    // SAFETY: pthread_self has no preconditions; `c` is a valid
    // out-pointer.
    let r = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut c) };
    (r == 0).then_some(c)
}

struct State {
    deadline: Option<Deadline>,
    target: libc::pthread_t,
    quit: bool,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    fired: AtomicBool,
}

pub(super) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The signal that interrupts `KVM_RUN` (its handler does nothing).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a zeroed struct, an empty mask and a handler
        // that does nothing is async-signal-safe; no SA_RESTART so that the
        // KVM_RUN ioctl returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

impl Watchdog {
    pub(super) fn new() -> Self {
        install_handler();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                deadline: None,
                // SAFETY: pthread_self has no preconditions.
                target: unsafe { libc::pthread_self() },
                quit: false,
            }),
            cond: Condvar::new(),
            fired: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("umbra-kvm-watchdog".into())
            .spawn(move || watch(&s))
            .ok();
        Watchdog { shared, thread }
    }

    /// Start timing: once the calling thread has used `limit` of CPU time
    /// (or the wall-clock backstop passed) it gets kicked.
    pub(super) fn arm(&self, limit: Duration) {
        self.shared.fired.store(false, Ordering::SeqCst);
        let clock = own_cpu_clock();
        let start_cpu = clock.and_then(cpu_time).unwrap_or_default();
        let mut st = lock(&self.shared.state);
        // SAFETY: pthread_self has no preconditions.
        st.target = unsafe { libc::pthread_self() };
        st.deadline = Some(Deadline {
            clock: clock.filter(|&c| cpu_time(c).is_some()),
            start_cpu,
            limit,
            start: Instant::now(),
        });
        self.shared.cond.notify_all();
    }

    pub(super) fn disarm(&self) {
        let mut st = lock(&self.shared.state);
        st.deadline = None;
        self.shared.cond.notify_all();
    }

    /// Whether the limit was reached since `arm`.
    pub(super) fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.shared.state);
            st.quit = true;
            st.deadline = None;
            self.shared.cond.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn watch(s: &Shared) {
    let mut st = lock(&s.state);
    loop {
        if st.quit {
            return;
        }
        match st.deadline {
            None => {
                st = s.cond.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            Some(d) => {
                if let Some(left) = d.remaining() {
                    // The thread cannot use more CPU time than wall time
                    // passes: sleep at least that long before looking
                    // again.
                    st = s
                        .cond
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                } else {
                    s.fired.store(true, Ordering::SeqCst);
                    // SAFETY: the target thread is the vCPU thread that armed
                    // us and that disarms us before it can exit the run loop;
                    // the signal has a no-op handler installed.
                    unsafe {
                        libc::pthread_kill(st.target, kick_signal());
                    }
                    st = s
                        .cond
                        .wait_timeout(st, KICK_INTERVAL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cpu_time_of_the_armed_thread_counts() {
        let w = Watchdog::new();
        w.arm(Duration::from_millis(20));
        // Ten times the allowance asleep: no CPU used, no kick (the
        // backstop is seconds away).
        std::thread::sleep(Duration::from_millis(200));
        assert!(!w.fired(), "a thread that got no CPU was cut off");
        // Spinning uses it up.
        let t0 = Instant::now();
        while !w.fired() && t0.elapsed() < Duration::from_secs(20) {
            std::hint::spin_loop();
        }
        assert!(w.fired(), "a spinning thread was never kicked");
        w.disarm();
    }

    #[test]
    fn rearming_starts_a_new_allowance() {
        let w = Watchdog::new();
        w.arm(Duration::from_millis(5));
        let t0 = Instant::now();
        while !w.fired() && t0.elapsed() < Duration::from_secs(20) {
            std::hint::spin_loop();
        }
        assert!(w.fired());
        w.arm(Duration::from_secs(5));
        assert!(!w.fired(), "arm clears the last verdict");
        w.disarm();
    }
}
