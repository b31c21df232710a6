//! One-shot results a caller can block on or await: the handles the node API returns.
//!
//! A [`Pending`] is completed exactly once by the node's threads through its [`Completer`]. The
//! caller may block with [`Pending::wait`] or `.await` it (a plain `Future`: no runtime needed).
//! If every completer is dropped without completing, the handle resolves to `Stopped`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Error;

#[derive(Debug)]
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

#[derive(Debug)]
struct SlotState<T> {
    result: Option<Result<T, Error>>,
    /// The task that last polled the handle: only one can (polling takes it by `&mut`), and a
    /// future wakes the waker of its latest poll. One slot, not a list: a list cost an
    /// allocation per request polled.
    waker: Option<Waker>,
}

/// A result that will arrive later.
#[must_use = "a pending result does nothing unless waited for"]
#[derive(Debug)]
pub struct Pending<T> {
    slot: Arc<Slot<T>>,
}

/// The side that completes a [`Pending`].
#[derive(Debug)]
pub(crate) struct Completer<T> {
    slot: Option<Arc<Slot<T>>>,
}

/// A pending result and the completer that will fill it.
pub(crate) fn pending<T>() -> (Pending<T>, Completer<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            result: None,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        Pending { slot: slot.clone() },
        Completer { slot: Some(slot) },
    )
}

impl<T> Completer<T> {
    /// Whether the caller has dropped its handle, so that nobody would see the result.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.slot
            .as_ref()
            .is_none_or(|slot| Arc::strong_count(slot) == 1)
    }

    pub(crate) fn complete(mut self, result: Result<T, Error>) {
        if let Some(slot) = self.slot.take() {
            let waker = {
                let mut state = slot.state.lock();
                state.result.get_or_insert(result);
                state.waker.take()
            };
            slot.ready.notify_all();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if self.slot.is_some() {
            let slot = self.slot.take();
            Completer { slot }.complete(Err(Error::stopped("the node dropped the request")));
        }
    }
}

impl<T: Clone> Pending<T> {
    /// Blocks until the result is known or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> Result<T, Error> {
        self.wait_for(timeout).unwrap_or(Err(Error::Timeout))
    }

    /// Blocks until the result is known or `timeout` passes; `None` if it is still pending
    /// (unlike [`Pending::wait`], which reports that as `Timeout`).
    pub fn wait_for(&self, timeout: Duration) -> Option<Result<T, Error>> {
        // A timeout too long for the clock (`Duration::MAX`) waits for good.
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.slot.state.lock();
        while state.result.is_none() {
            match deadline {
                Some(deadline) => {
                    if self.slot.ready.wait_until(&mut state, deadline).timed_out() {
                        break;
                    }
                }
                None => self.slot.ready.wait(&mut state),
            }
        }
        state.result.clone()
    }

    /// The result, if it is known already.
    pub fn try_get(&self) -> Option<Result<T, Error>> {
        self.slot.state.lock().result.clone()
    }
}

impl<T: Clone> Future for Pending<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.state.lock();
        match &state.result {
            Some(result) => Poll::Ready(result.clone()),
            None => {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_the_completed_value() {
        let (p, c) = pending::<u32>();
        std::thread::spawn(move || c.complete(Ok(7)));
        assert_eq!(p.wait(Duration::from_secs(5)), Ok(7));
        assert_eq!(p.try_get(), Some(Ok(7)));
    }

    #[test]
    fn wait_times_out() {
        let (p, _c) = pending::<u32>();
        assert_eq!(p.wait(Duration::from_millis(10)), Err(Error::Timeout));
    }

    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn completion_wakes_the_task_that_polled_last() {
        let (mut p, c) = pending::<u32>();
        let counters: Vec<_> = (0..2).map(|_| Arc::new(CountingWaker(0.into()))).collect();
        let wakers: Vec<Waker> = counters.iter().map(|c| Waker::from(c.clone())).collect();
        for waker in [&wakers[0], &wakers[0], &wakers[1]] {
            let polled = Pin::new(&mut p).poll(&mut Context::from_waker(waker));
            assert!(polled.is_pending());
        }
        c.complete(Ok(3));
        let woken: Vec<usize> = counters
            .iter()
            .map(|c| c.0.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(woken, [0, 1], "only the latest poll's waker is woken, once");
        let polled = Pin::new(&mut p).poll(&mut Context::from_waker(&wakers[0]));
        assert_eq!(polled, Poll::Ready(Ok(3)));
    }

    #[test]
    fn a_dropped_completer_means_stopped() {
        let (p, c) = pending::<u32>();
        drop(c);
        assert!(matches!(
            p.wait(Duration::from_secs(1)),
            Err(Error::Stopped { .. })
        ));
    }
}
