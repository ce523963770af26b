//! Thread scheduling: work that can wait (reading and rendering big pages) yields the CPU to
//! work that must not (dispatching tasks, agents' frames), on machines with few cores.

use std::cell::Cell;

/// The nice value of threads doing background work: they run whenever the CPU is free, and
/// step aside for normal threads when it is not.
pub const BACKGROUND_NICE: i32 = 10;

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`], once per thread; a thread
/// cannot raise it again, so call it only on threads that do nothing but background work.
pub fn lower_this_thread() {
    LOWERED.with(|lowered| {
        if lowered.replace(true) {
            return;
        }
        // On Linux a thread id names one thread for setpriority: the rest of the process keeps its own.
        let tid = rustix::thread::gettid();
        let lower = rustix::process::getpriority_process(Some(tid)).and_then(|now| {
            if now < BACKGROUND_NICE {
                rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE)
            } else {
                Ok(())
            }
        });
        if let Err(e) = lower {
            tracing::debug!(error = %e, "cannot lower a background thread's priority");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let nice = |tid: rustix::process::Pid| rustix::process::getpriority_process(Some(tid)).unwrap();
        let main = rustix::thread::gettid();
        let before = nice(main);
        let lowered = std::thread::spawn(move || {
            lower_this_thread();
            lower_this_thread();
            nice(rustix::thread::gettid())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, BACKGROUND_NICE.max(before));
        assert_eq!(nice(main), before, "the other threads keep theirs");
    }
}
