//! The threads that serve connections: each accepted connection runs, with every task it
//! spawns (its HTTP/2 halves, its connection upstream, the session relayed inside it), on one
//! thread of a small pool, each thread a single-threaded tokio runtime of its own (the SSH
//! agent sockets' connections too). The main runtime keeps the accept loops, signals and
//! `/metrics`.
//!
//! Why not one work-stealing runtime for everything: a relay is a chain of tasks that wake
//! each other for every few frames (a connection's reader wakes the other side's writer). On
//! a multi-threaded runtime the woken task is often parked on another worker, and waking it
//! costs a `futex` call and a context switch. Measured on the docker-container driver's relay
//! (issue 14, 1 GiB context, docs/benchmarks.md): one thread per connection removed every
//! futex call and cut the broker's CPU per MiB by about an eighth. A pool of such threads keeps
//! that for every connection while concurrent builds still use every core.
//!
//! A connection is placed when it is accepted, on the thread with the fewest live tasks (ties
//! go round the pool), and never moves. Tasks, not connections, are counted: on the Docker
//! endpoint the HTTP connection ends when it upgrades, and the session or stream it became
//! lives on as a task of its own. The cost of that model: two heavy connections that land on
//! one thread share its core while another thread may idle, and CPU-bound work on a thread
//! would hold up the other connections there (so decrypting a held ssh key, and RSA and ECDSA
//! signing, run on threads of their own, `secret::on_own_thread`). Its socket is moved to
//! that thread's runtime ([`Movable`], [`ConnectionThreads::serve_socket`]), so its readiness
//! wakes no other thread.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Each thread's stack, as a tokio worker's: [`crate::secret::scrub_stack`] relies on it
/// being far deeper than what it clears.
const STACK: usize = 2 * 1024 * 1024;

/// An accepted socket that can leave the runtime that accepted it for the one that serves it.
pub trait Movable: Sized {
    /// The socket between the two runtimes: registered with neither, still non-blocking.
    type Detached: Send + 'static;
    /// Deregisters the socket from the current runtime.
    fn detach(self) -> std::io::Result<Self::Detached>;
    /// Registers it with the current runtime; called inside the runtime that serves it.
    fn attach(detached: Self::Detached) -> std::io::Result<Self>;
}

impl Movable for tokio::net::UnixStream {
    type Detached = std::os::unix::net::UnixStream;
    fn detach(self) -> std::io::Result<Self::Detached> {
        self.into_std()
    }
    fn attach(detached: Self::Detached) -> std::io::Result<Self> {
        tokio::net::UnixStream::from_std(detached)
    }
}

/// The pool; dropping it stops every thread, dropping what still runs on them.
pub struct ConnectionThreads {
    threads: Vec<Thread>,
    /// Where the next tie-break starts.
    next: AtomicUsize,
    stop: CancellationToken,
}

struct Thread {
    handle: Handle,
    join: Option<std::thread::JoinHandle<()>>,
}

/// How long a stopping thread waits for its blocking work (a stalled `/proc` or NFS read)
/// before it leaves it behind, so that a hung read cannot hold up the daemon's exit.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

impl ConnectionThreads {
    /// Starts `n` threads, named `conn-0`, `conn-1`, ….
    pub fn start(n: NonZeroUsize) -> std::io::Result<ConnectionThreads> {
        let stop = CancellationToken::new();
        let mut pool = ConnectionThreads {
            threads: Vec::with_capacity(n.get()),
            next: AtomicUsize::new(0),
            stop: stop.clone(),
        };
        for i in 0..n.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stop = stop.clone();
            let join = std::thread::Builder::new()
                .name(format!("conn-{i}"))
                .stack_size(STACK)
                .spawn(move || {
                    runtime.block_on(stop.cancelled());
                    // Drops the tasks still on it (after the drain timeout) in the thread
                    // that ran them.
                    runtime.shutdown_timeout(BLOCKING_GRACE);
                })?;
            pool.threads.push(Thread {
                handle,
                join: Some(join),
            });
        }
        Ok(pool)
    }

    /// How many threads the pool has.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Always false: a pool has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Runs one connection on the least busy thread, tracked by `tasks`. `serve` is called on
    /// that thread, so the sockets it registers belong to that thread's runtime.
    fn spawn<F, Fut>(&self, tasks: &TaskTracker, serve: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let thread = self.least_busy();
        tasks.spawn_on(async move { serve().await }, &thread.handle);
    }

    /// Serves one accepted socket on the least busy thread, tracked by `tasks`: the socket
    /// moves to that thread's runtime before `serve` gets it. A socket that cannot move is
    /// closed, logged and counted as an accept error.
    pub fn serve_socket<S, F, Fut>(&self, tasks: &TaskTracker, socket: S, serve: F)
    where
        S: Movable,
        F: FnOnce(S) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let failed = |e: std::io::Error| {
            crate::metrics::error_seen("accept");
            tracing::warn!(error = %e, "cannot move an accepted connection to a connection thread");
        };
        let detached = match socket.detach() {
            Ok(d) => d,
            Err(e) => return failed(e),
        };
        self.spawn(tasks, move || async move {
            let socket = match S::attach(detached) {
                Ok(socket) => socket,
                Err(e) => return failed(e),
            };
            serve(socket).await
        });
    }

    fn least_busy(&self) -> &Thread {
        let n = self.threads.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| &self.threads[(start + k) % n])
            .min_by_key(|t| t.handle.metrics().num_alive_tasks())
            .expect("a pool has at least one thread")
    }

    /// Live tasks per thread, in thread order: the connections there and what they started.
    pub fn tasks_per_thread(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|t| t.handle.metrics().num_alive_tasks())
            .collect()
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &mut self.threads {
            if let Some(join) = t.join.take() {
                let _ = join.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pool(n: usize) -> ConnectionThreads {
        ConnectionThreads::start(NonZeroUsize::new(n).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_and_every_task_it_spawns_run_on_one_thread() {
        let threads = pool(2);
        let tasks = TaskTracker::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..4 {
            let seen = seen.clone();
            threads.spawn(&tasks, move || async move {
                let name = || std::thread::current().name().unwrap_or("").to_string();
                let here = name();
                let inner = tokio::spawn(async move { name() }).await.unwrap();
                let blocking_parent = tokio::task::spawn_blocking(|| ()).await;
                assert!(blocking_parent.is_ok());
                seen.lock().unwrap().push((here, inner));
            });
        }
        tasks.close();
        tasks.wait().await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4);
        for (outer, inner) in seen.iter() {
            assert!(outer.starts_with("conn-"), "ran on {outer:?}");
            assert_eq!(outer, inner, "a spawned task left its connection's thread");
        }
        let used: std::collections::BTreeSet<_> = seen.iter().map(|(o, _)| o.clone()).collect();
        assert_eq!(used.len(), 2, "four connections used only {used:?}");
    }

    #[tokio::test]
    async fn connections_go_to_the_thread_with_the_fewest_tasks() {
        let threads = pool(3);
        let tasks = TaskTracker::new();
        let hold = || {
            let release = CancellationToken::new();
            let r = release.clone();
            threads.spawn(&tasks, move || async move { r.cancelled().await });
            release
        };
        let held: Vec<_> = (0..3).map(|_| hold()).collect();
        assert_eq!(threads.tasks_per_thread(), vec![1, 1, 1]);
        // The second connection ends: its thread is the one with a free place. Going round the
        // pool, the next pick would start at the first thread; fewest-open must win.
        held[1].cancel();
        settle(&threads, vec![1, 0, 1]).await;
        let late = hold();
        assert_eq!(threads.tasks_per_thread(), vec![1, 1, 1]);
        // Three more go one to each thread, never two to one.
        let more: Vec<_> = (0..3).map(|_| hold()).collect();
        assert_eq!(threads.tasks_per_thread(), vec![2, 2, 2]);
        for r in held.iter().chain(&more).chain([&late]) {
            r.cancel();
        }
        tasks.close();
        tasks.wait().await;
        settle(&threads, vec![0, 0, 0]).await;
    }

    /// Waits until the threads hold `expected` tasks (a finished task leaves its thread's
    /// count a moment after its tracker hears of it).
    async fn settle(threads: &ConnectionThreads, expected: Vec<usize>) {
        let start = std::time::Instant::now();
        while threads.tasks_per_thread() != expected {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "tasks per thread: {:?}, expected {expected:?}",
                threads.tasks_per_thread()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn an_upgraded_connection_keeps_its_thread_counted_after_its_first_task_ends() {
        // As on the Docker endpoint: the HTTP connection's future returns once it upgraded,
        // and what it became (here two streams) runs on as tasks it spawned.
        let threads = pool(2);
        let tasks = TaskTracker::new();
        let release = CancellationToken::new();
        let on_thread = |tasks: &TaskTracker| {
            let names = Arc::new(Mutex::new(Vec::new()));
            let (n, r) = (names.clone(), release.clone());
            threads.spawn(tasks, move || async move {
                n.lock()
                    .unwrap()
                    .push(std::thread::current().name().unwrap_or("").to_string());
                r.cancelled().await
            });
            names
        };
        let plain = on_thread(&tasks);
        let (r, streams) = (release.clone(), tasks.clone());
        threads.spawn(&tasks, move || async move {
            for _ in 0..2 {
                let r = r.clone();
                streams.spawn(async move { r.cancelled().await });
            }
        });
        settle(&threads, vec![1, 2]).await;
        // The upgraded connection's thread is the busier one, though its own future is done.
        let next = on_thread(&tasks);
        assert_eq!(threads.tasks_per_thread(), vec![2, 2]);
        release.cancel();
        tasks.close();
        tasks.wait().await;
        assert_eq!(*plain.lock().unwrap(), ["conn-0"]);
        assert_eq!(*next.lock().unwrap(), ["conn-0"]);
    }

    #[tokio::test]
    async fn an_accepted_socket_is_served_by_the_thread_it_was_handed_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let threads = pool(1);
        let tasks = TaskTracker::new();
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let mut client = client.unwrap();
        let accepted = crate::listen::Incoming::Unix(accepted.unwrap().0);
        threads.serve_socket(&tasks, accepted, |incoming| async move {
            let crate::listen::Incoming::Unix(mut s) = incoming else {
                unreachable!()
            };
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            let name = std::thread::current().name().unwrap_or("").to_string();
            s.write_all(format!("{}:{name}", String::from_utf8_lossy(&buf)).as_bytes())
                .await
                .unwrap();
        });
        client.write_all(b"hello").await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "hello:conn-0");
        tasks.close();
        tasks.wait().await;
    }

    #[test]
    fn dropping_the_pool_stops_its_threads_and_what_runs_on_them() {
        let threads = pool(2);
        let tasks = TaskTracker::new();
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Count(Arc<AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        for _ in 0..2 {
            let c = Count(dropped.clone());
            threads.spawn(&tasks, move || async move {
                let _c = c;
                std::future::pending::<()>().await
            });
        }
        // A connection stuck in a blocking read (a stalled /proc or NFS read) must not hold
        // up the daemon's exit.
        threads.spawn(&tasks, || async {
            let _ =
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(60))).await;
        });
        std::thread::sleep(Duration::from_millis(50));
        let stopping = std::time::Instant::now();
        drop(threads);
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "stopping took {:?}",
            stopping.elapsed()
        );
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
        assert!(
            tasks.is_empty(),
            "the tracker still counts dropped connections"
        );
    }
}
