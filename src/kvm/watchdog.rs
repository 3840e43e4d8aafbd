//! A wall-clock watchdog that kicks the vCPU thread out of `KVM_RUN`, so
//! that a guest spinning in a loop without any exit cannot hang the host.
//!
//! One helper thread per engine sleeps until the armed deadline, then sets
//! `fired` and sends a no-op real-time signal to the vCPU thread every few
//! milliseconds until the run loop disarms it. `KVM_RUN` returns `EINTR` on
//! a signal; the run loop also checks `fired` before each entry, so a kick
//! that lands between two entries is not lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the watchdog repeats its kick while the vCPU has not stopped.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

struct State {
    deadline: Option<Instant>,
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

    /// Start timing: after `limit` the calling thread gets kicked.
    pub(super) fn arm(&self, limit: Duration) {
        self.shared.fired.store(false, Ordering::SeqCst);
        let mut st = lock(&self.shared.state);
        // SAFETY: pthread_self has no preconditions.
        st.target = unsafe { libc::pthread_self() };
        st.deadline = Some(Instant::now() + limit);
        self.shared.cond.notify_all();
    }

    pub(super) fn disarm(&self) {
        let mut st = lock(&self.shared.state);
        st.deadline = None;
        self.shared.cond.notify_all();
    }

    /// Whether the deadline passed since `arm`.
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
                let now = Instant::now();
                if now < d {
                    st = s
                        .cond
                        .wait_timeout(st, d - now)
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
