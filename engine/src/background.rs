//! Background threads — saving snapshots, freeing compacted entries, zero-filling and removing
//! log segments — run at the lowest priority: nobody waits for their work, while a driver, log
//! writer or transport thread that waits for a core delays every write behind it. On the 2-core
//! VM at 80,000 writes/s a thread woken from an fdatasync waited up to 16 ms for a core beside
//! four busy ones, and serializing a 150 MB state at normal priority held drivers and log writers
//! for hundreds of milliseconds.

/// Lowers this thread's scheduling priority to the least (nice 19). On Linux a nice value is per
/// thread; elsewhere this does nothing.
pub(crate) fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        // Not being allowed to is no reason to skip the work.
        tracing::debug!(error = %e, "a background thread keeps its priority");
    }
}
