//! Where the daemon's calls inside a session run: in the session's own task, beside the h2
//! connection that carries them, instead of one spawned task per call.
//!
//! hyper's HTTP/2 server hands each stream's work (the router's future, then the pump of its
//! response body) to an executor. The usual one spawns a task per stream, so each call
//! crosses tasks twice: the connection task reads the request and wakes the call's task (often
//! on the other worker), which answers and wakes the connection task back to write it. A call
//! buildbroker answers from memory (`env:`, a cache hit, a `file:` on tmpfs) needs neither hop
//! (issue 14: GetSecret against buildx's own provider, which pays them).
//!
//! Here the executor ([`Calls`]) polls each call once where hyper hands it over, which answers
//! most GetSecret calls before hyper asks h2 for the next frame; a call that has to wait (its
//! request body is still on the way, a relayed call waits for the build client, a source reads
//! a disk or asks AWS) is kept in a set that [`Driven`] polls right after the connection, in
//! the same task. A call woken by the connection (its request's DATA arrived) finishes in the
//! same turn, and the connection writes its answer before the task yields.
//!
//! What still runs elsewhere: the build client's half (hyper's client spawns its connection and
//! request-body pumps), and sources' own work (the blocking pool, child processes, AWS).
//! A panic in a call is caught and ends only that call: its stream is reset when the call is
//! dropped, and the session and its other calls go on, as with a spawned task.
//!
//! [`Driven`] polls the connection and the calls with a waker of its own: a wake from inside
//! its poll (a call queues its answer, h2 wakes the connection to write it) runs one more round
//! there instead of re-queueing the task, which made tokio wake a parked sibling worker once
//! per GetSecret. A buffer that deferred its flush to gather other tasks' frames asks to run
//! after them instead ([`wake_after_others`]).
//!
//! Measured (docs/benchmarks.md, "The daemon's calls in the session's task" and "A wake from
//! inside the session's poll"): end to end, fewer syscalls and futex wakes per MiB relayed;
//! with the stand-in daemon in a process of its own, 1.1–1.6 fewer context switches per
//! GetSecret (level with the provider's) and 13–22 % less of the serving process's CPU.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;

type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many rounds of "connection, then calls" one poll may run before it yields to the other
/// tasks on the worker (each round needs a call that finished or arrived).
const ROUNDS: usize = 4;

/// hyper's executor for the daemon's half of a session (see the module comment).
#[derive(Clone, Default)]
pub(crate) struct Calls {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Calls that did not finish on their first poll, for [`Driven`] to take over. Only the
    /// session's task pushes and drains it (hyper calls `execute` from the connection's poll).
    waiting: Mutex<Vec<Call>>,
    /// Calls handed over since [`Driven`] last polled the connection: the first of them runs
    /// here; the others of a burst get tasks of their own, so that one slow call does not hold
    /// up the rest of its burst. (In the daemon they stay on the session's connection thread
    /// and interleave there; on a multi-threaded runtime they may run on other workers.)
    this_round: AtomicUsize,
}

impl<F> hyper::rt::Executor<F> for Calls
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        if self.shared.this_round.fetch_add(1, Ordering::Relaxed) > 0 {
            tokio::spawn(fut);
            return;
        }
        let mut call: Call = Box::pin(AssertUnwindSafe(fut).catch_unwind().map(|done| {
            if done.is_err() {
                tracing::error!("a call inside a session panicked; its stream is reset");
            }
        }));
        // The no-op waker is never needed: a call that is not done is polled again by the
        // set, with the session task's waker, before the session task next waits.
        let mut cx = Context::from_waker(Waker::noop());
        if call.as_mut().poll(&mut cx).is_pending() {
            self.shared
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(call);
        }
    }
}

/// A connection future together with the calls its executor ([`Calls`]) keeps: polling it
/// polls the connection, then every call that is ready, in rounds while either makes progress.
/// It finishes when the connection does; calls still running then are dropped, which resets
/// their streams (the connection that carried them is gone).
pub(crate) struct Driven<C> {
    conn: Pin<Box<C>>,
    calls: Calls,
    running: FuturesUnordered<Call>,
    /// What the connection and the calls are polled with: see [`Rounds`].
    rounds: Arc<Rounds>,
    waker: Waker,
}

/// [`Rounds::state`]: the session's task is not inside [`Driven::poll`].
const IDLE: u8 = 0;
/// Inside [`Driven::poll`], not woken since the current round began.
const POLLING: u8 = 1;
/// Inside [`Driven::poll`], and woken since the current round began: run one more.
const WOKEN: u8 = 2;

/// The waker [`Driven`] gives the connection and the calls. A wake while the session's task is
/// polling them comes from the task itself: a call queued its answer and h2 wakes the
/// connection to write it, or the connection read a call's request body and wakes the call.
/// Handed to tokio, that wake would re-queue the task as one that yielded, which also wakes a
/// parked worker to take it: a futex wake and a context switch per GetSecret, measured with
/// the stand-in daemon in a process of its own (docs/benchmarks.md). So it only asks for one
/// more round of the same poll; a wake from anywhere else, or after the poll, wakes the task.
struct Rounds {
    state: AtomicU8,
    task: AtomicWaker,
}

thread_local! {
    /// Set by [`wake_after_others`] during a poll; read and cleared by [`Driven::poll`], on
    /// the same thread, before that poll returns.
    static YIELD: Cell<bool> = const { Cell::new(false) };
    /// Set while [`Driven::poll`] polls its connection (see [`in_rounds`]).
    static IN_ROUNDS: Cell<bool> = const { Cell::new(false) };
}

/// Whether the caller runs inside [`Driven`]'s poll of its connection, where a wake of the
/// context's waker asks for one more round of the same poll (the calls, then the connection
/// again) instead of another poll of the task: for a write buffer that holds a small answer
/// back until the call that queued it has added its last frames (`buffered_io`).
pub(crate) fn in_rounds() -> bool {
    IN_ROUNDS.get()
}

/// Marks [`in_rounds`] for as long as it lives (a panic in the connection's poll included).
pub(crate) struct InRounds;

impl InRounds {
    pub(crate) fn enter() -> Self {
        IN_ROUNDS.set(true);
        InRounds
    }
}

impl Drop for InRounds {
    fn drop(&mut self) {
        IN_ROUNDS.set(false);
    }
}

/// Wakes `cx`'s task to run again *after* the worker's other ready tasks, not at once: for a
/// write buffer that deferred a flush so that more frames join it (`buffered_io`,
/// `control::message_stream`). Those frames come from other tasks (the relay's other half,
/// the exec stream's pump), so inside [`Driven`] this wake ends the poll and goes through the
/// scheduler, where another wake from inside the poll only asks for one more round.
pub(crate) fn wake_after_others(cx: &Context<'_>) {
    YIELD.set(true);
    cx.waker().wake_by_ref();
}

impl Wake for Rounds {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

impl<C: Future> Driven<C> {
    pub(crate) fn new(conn: C, calls: Calls) -> Self {
        let rounds = Arc::new(Rounds {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        Driven {
            conn: Box::pin(conn),
            calls,
            running: FuturesUnordered::new(),
            waker: Waker::from(rounds.clone()),
            rounds,
        }
    }

    /// The connection, for `graceful_shutdown`.
    pub(crate) fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }
}

impl<C: Future> Future for Driven<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        let shared = &*this.calls.shared;
        let rounds = &*this.rounds;
        rounds.task.register(cx.waker());
        rounds.state.store(POLLING, Ordering::Release);
        YIELD.set(false);
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..ROUNDS {
            shared.this_round.store(0, Ordering::Relaxed);
            let polled = {
                let _in_rounds = InRounds::enter();
                this.conn.as_mut().poll(&mut inner)
            };
            if let Poll::Ready(out) = polled {
                rounds.state.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            let arrived = std::mem::take(
                &mut *shared
                    .waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            let mut progress = !arrived.is_empty();
            this.running.extend(arrived);
            // A call that finished has queued its last frames: the next round's connection
            // poll writes them now.
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(&mut inner) {
                progress = true;
            }
            if YIELD.replace(false) {
                break;
            }
            // Woken during this round: whoever it was is ready now, so another round.
            let woken = rounds.state.swap(POLLING, Ordering::AcqRel) == WOKEN;
            if !progress
                && !woken
                && rounds
                    .state
                    .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Poll::Pending;
            }
        }
        // Out of rounds, or a buffer waits for other tasks' frames: let the worker's other
        // tasks run, and come back.
        rounds.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use hyper::rt::Executor;
    use tokio::sync::{mpsc, oneshot};

    use super::{Calls, Driven};

    type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

    /// A connection stand-in: hands the executor each batch of calls it receives (one batch
    /// per poll, as h2 hands over the streams of one read), acknowledges each batch, and
    /// finishes on an empty batch.
    async fn conn(
        calls: Calls,
        mut batches: mpsc::UnboundedReceiver<Vec<Job>>,
        acks: mpsc::UnboundedSender<()>,
    ) -> &'static str {
        while let Some(batch) = batches.recv().await {
            if batch.is_empty() {
                break;
            }
            for job in batch {
                calls.execute(job);
            }
            let _ = acks.send(());
            // Ends this poll: the next batch is the next round's, however soon it is sent.
            tokio::task::yield_now().await;
        }
        "closed"
    }

    struct Session {
        batches: mpsc::UnboundedSender<Vec<Job>>,
        acks: mpsc::UnboundedReceiver<()>,
        driver: tokio::task::JoinHandle<&'static str>,
    }

    impl Session {
        fn start() -> Session {
            let calls = Calls::default();
            let (batches, rx) = mpsc::unbounded_channel();
            let (ack_tx, acks) = mpsc::unbounded_channel();
            let driver = tokio::spawn(Driven::new(conn(calls.clone(), rx, ack_tx), calls));
            Session {
                batches,
                acks,
                driver,
            }
        }

        async fn hand_over(&mut self, batch: Vec<Job>) {
            self.batches.send(batch).unwrap();
            tokio::time::timeout(Duration::from_secs(5), self.acks.recv())
                .await
                .expect("the connection stand-in was never polled")
                .unwrap();
        }

        async fn close(self) {
            self.batches.send(Vec::new()).unwrap();
            assert_eq!(self.driver.await.expect("the session task died"), "closed");
        }
    }

    /// A call that waits for its gate, then records the task it finished in.
    fn gated(ran_in: &Arc<Mutex<Vec<Option<tokio::task::Id>>>>) -> (oneshot::Sender<()>, Job) {
        let (open, gate) = oneshot::channel::<()>();
        let ran_in = ran_in.clone();
        let job = Box::pin(async move {
            let _ = gate.await;
            ran_in.lock().unwrap().push(tokio::task::try_id());
        });
        (open, job)
    }

    async fn wait_for(ran_in: &Arc<Mutex<Vec<Option<tokio::task::Id>>>>, n: usize) {
        for _ in 0..500 {
            if ran_in.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "only {} of {n} calls finished",
            ran_in.lock().unwrap().len()
        );
    }

    #[tokio::test]
    async fn a_call_ready_on_its_first_poll_runs_before_execute_returns() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let calls = Calls::default();
        calls.execute(async move { flag.store(true, Ordering::SeqCst) });
        assert!(done.load(Ordering::SeqCst), "not run inline");
        assert!(calls.shared.waiting.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_calls_one_at_a_time_run_in_the_session_task() {
        let mut session = Session::start();
        let ran_in = Arc::new(Mutex::new(Vec::new()));
        let mut gates = Vec::new();
        for _ in 0..3 {
            let (open, job) = gated(&ran_in);
            session.hand_over(vec![job]).await;
            gates.push(open);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            ran_in.lock().unwrap().is_empty(),
            "calls ran before their gates"
        );
        // Nothing but the set wakes the session task now.
        for open in gates {
            open.send(()).unwrap();
        }
        wait_for(&ran_in, 3).await;
        let id = session.driver.id();
        assert_eq!(
            *ran_in.lock().unwrap(),
            vec![Some(id); 3],
            "a call ran outside the session task"
        );
        session.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_keeps_its_first_call_and_spawns_the_rest() {
        let mut session = Session::start();
        let ran_in = Arc::new(Mutex::new(Vec::new()));
        let (gates, jobs): (Vec<_>, Vec<_>) = (0..3).map(|_| gated(&ran_in)).unzip();
        session.hand_over(jobs).await;
        for open in gates {
            open.send(()).unwrap();
        }
        wait_for(&ran_in, 3).await;
        let id = session.driver.id();
        let ran_in = ran_in.lock().unwrap().clone();
        assert_eq!(
            ran_in.iter().filter(|t| **t == Some(id)).count(),
            1,
            "{ran_in:?}"
        );
        session.close().await;
    }

    #[tokio::test]
    async fn a_wake_before_the_set_takes_a_call_over_is_not_lost() {
        let mut session = Session::start();
        let (tx, mut rx) = oneshot::channel::<u32>();
        let (done_tx, done_rx) = oneshot::channel::<u32>();
        let (mut tx, mut done_tx) = (Some(tx), Some(done_tx));
        let mut first = true;
        let job: Job = Box::pin(std::future::poll_fn(move |cx| {
            let r = Pin::new(&mut rx).poll(cx);
            if std::mem::take(&mut first) {
                // The value arrives while only the no-op waker is registered.
                tx.take().unwrap().send(7).unwrap();
                return std::task::Poll::Pending;
            }
            r.map(|v| {
                let _ = done_tx.take().unwrap().send(v.unwrap());
            })
        }));
        session.hand_over(vec![job]).await;
        let got = tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .expect("the wake was lost")
            .unwrap();
        assert_eq!(got, 7);
        session.close().await;
    }

    #[tokio::test]
    async fn a_panicking_call_ends_alone() {
        let mut session = Session::start();
        // One call panics on its first poll, one later in the set.
        session
            .hand_over(vec![Box::pin(async { panic!("hostile call, first poll") })])
            .await;
        let (open, gate) = oneshot::channel::<()>();
        session
            .hand_over(vec![Box::pin(async move {
                let _ = gate.await;
                panic!("hostile call, in the set");
            })])
            .await;
        open.send(()).unwrap();
        let ran_in = Arc::new(Mutex::new(Vec::new()));
        let (open, job) = gated(&ran_in);
        session.hand_over(vec![job]).await;
        open.send(()).unwrap();
        wait_for(&ran_in, 1).await;
        assert_eq!(*ran_in.lock().unwrap(), vec![Some(session.driver.id())]);
        session.close().await;
    }

    /// Polls of the session task as tokio makes them, around a [`Driven`].
    fn counted<C: Future + Unpin>(
        mut driven: Driven<C>,
        polls: Arc<AtomicUsize>,
    ) -> impl Future<Output = C::Output> {
        std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut driven).poll(cx)
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wake_from_inside_the_poll_runs_another_round_not_another_poll() {
        // The connection stand-in hands over a call that wakes the connection, as h2 does
        // when a call queues its answer, and is done on its next poll.
        let calls = Calls::default();
        let executor = calls.clone();
        let conn_polls = Arc::new(AtomicUsize::new(0));
        let seen = conn_polls.clone();
        let conn = std::future::poll_fn(move |cx| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                let waker = cx.waker().clone();
                executor.execute(async move { waker.wake() });
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready("answered")
        });
        let polls = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(counted(Driven::new(conn, calls), polls.clone()));
        assert_eq!(task.await.unwrap(), "answered");
        assert_eq!(conn_polls.load(Ordering::SeqCst), 2);
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the wake went through the scheduler"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_from_elsewhere_and_endless_self_wakes_still_reach_the_task() {
        // A connection that wakes itself on every poll: the rounds run out, the task yields
        // (another poll by tokio) and comes back until it is done.
        let calls = Calls::default();
        let mut left = 3 * super::ROUNDS;
        let conn = std::future::poll_fn(move |cx| {
            if left == 0 {
                return std::task::Poll::Ready("done");
            }
            left -= 1;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        });
        let polls = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(counted(Driven::new(conn, calls), polls.clone()));
        let out = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert_eq!(out.expect("a self-wake was lost").unwrap(), "done");
        assert!(polls.load(Ordering::SeqCst) >= 3, "never yielded");

        // A buffer that deferred its flush asks to run after the worker's other tasks: that
        // wake ends the poll and goes through the scheduler.
        let calls = Calls::default();
        let mut first = true;
        let conn = std::future::poll_fn(move |cx| {
            if std::mem::take(&mut first) {
                super::wake_after_others(cx);
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready("flushed")
        });
        let polls = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(counted(Driven::new(conn, calls), polls.clone()));
        let out = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert_eq!(out.expect("the yield was lost").unwrap(), "flushed");
        assert_eq!(polls.load(Ordering::SeqCst), 2, "the yield was absorbed");

        // A wake from another task, after the poll returned, wakes the session task.
        let calls = Calls::default();
        let (tx, mut rx) = oneshot::channel::<&'static str>();
        let conn = std::future::poll_fn(move |cx| Pin::new(&mut rx).poll(cx).map(Result::unwrap));
        let polls = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(counted(Driven::new(conn, calls), polls.clone()));
        // After its first poll has returned (pending on the channel).
        while polls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send("woken").unwrap();
        let out = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert_eq!(out.expect("the wake was lost").unwrap(), "woken");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
