//! The one type that owns secret bytes.
//!
//! `SecretBytes` has no `Debug`, no `Display`, no `Clone` and no `Serialize`: a secret can only be
//! read through [`SecretBytes::expose`], whose call sites are the places that hand the value to
//! the wire. Its buffer is zeroized when it is dropped. It must never be formatted, logged, put in
//! an error, or written to disk.
//!
//! Its bytes live in pages of their own ([`pages`]): zeroed when the value is dropped, left
//! out of core files and forked children, and locked in RAM where the limit allows.

mod pages;

pub use pages::{PageStats, SecretBuf, stats as page_stats};
use zeroize::Zeroize;

/// The largest value buildx sends (its own cap, 500 KiB); larger values are refused with a clear
/// error rather than truncated.
pub const MAX_SECRET_BYTES: usize = 512_000;

/// Secret bytes in secret pages, zeroized on drop.
pub struct SecretBytes(SecretBuf);

impl SecretBytes {
    /// Moves `bytes` into secret pages and zeroizes the `Vec` it came in.
    pub fn new(mut bytes: Vec<u8>) -> Self {
        let mut buf = SecretBuf::with_capacity(bytes.len());
        buf.extend_from_slice(&bytes);
        bytes.zeroize();
        Self(buf)
    }

    /// An empty value with room for `capacity` bytes, for sources that write into it in place.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(SecretBuf::with_capacity(capacity))
    }

    /// The buffer itself, for sources filling a value made by [`SecretBytes::with_capacity`].
    pub(crate) fn buffer_mut(&mut self) -> &mut SecretBuf {
        &mut self.0
    }

    /// The value, for the code that puts it on the wire. Do not format or log it.
    pub fn expose(&self) -> &[u8] {
        self.0.as_slice()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands the bytes to the network stack without a copy: the returned `Bytes` owns this
    /// value, and when hyper/h2 drop it (after writing, or when the stream is reset) the buffer
    /// is zeroized like any other `SecretBytes`.
    pub fn into_wire_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(WireOwner(self))
    }
}

impl SecretBytes {
    /// Removes exactly one trailing newline (`\n` or `\r\n`), as `echo`, `op read` and a
    /// typed line add one.
    pub(crate) fn strip_one_newline(&mut self) {
        let buf = &mut self.0;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
    }
}

/// A secret read in place: one block of a fixed size, filled by successive reads, so no
/// reallocation ever moves it. Input larger than planned is noticed, not grown into.
pub(crate) struct SecretFill {
    value: SecretBytes,
    capacity: usize,
}

impl SecretFill {
    pub(crate) fn new(capacity: usize) -> Self {
        SecretFill {
            value: SecretBytes::with_capacity(capacity),
            capacity,
        }
    }

    /// Where the next read goes; `None` once `capacity` bytes are in (more input than planned).
    pub(crate) fn spare(&mut self) -> Option<&mut [u8]> {
        let room = self.capacity - self.value.len();
        (room > 0).then(|| &mut self.value.buffer_mut().spare_mut()[..room])
    }

    /// Records that a read put `n` bytes into [`SecretFill::spare`].
    pub(crate) fn advance(&mut self, n: usize) {
        self.value.buffer_mut().advance(n);
    }

    /// How many bytes are in so far.
    #[cfg(test)]
    pub(crate) fn filled(&self) -> usize {
        self.value.len()
    }

    /// The bytes read so far.
    pub(crate) fn finish(self) -> SecretBytes {
        self.value
    }
}

/// How much stack [`scrub_stack`] clears: more than a key load or a signature uses below
/// its caller (the core-image test found a debug build's copies up to ~60 KiB down; release
/// frames are smaller), far less than a connection thread's 2 MiB stack (the main thread
/// has 8 MiB).
const SCRUB_STACK_BYTES: usize = 128 * 1024;

/// Zeroes the stack below the caller. Call it right after a function that handled key
/// material returned: its frames (by-value copies of seeds, expanded keys, decoded key files)
/// stay in the thread's stack memory until something deeper overwrites them, and a thread's
/// stack is never freed, so the zeroing allocator cannot reach them. The core-image test
/// found a held ssh key's private scalar a dozen times there after one key load.
#[inline(never)]
pub(crate) fn scrub_stack() {
    let mut area = [0u8; SCRUB_STACK_BYTES];
    // The compiler must assume black_box reads the area, so it has to write the zeroes.
    std::hint::black_box(&mut area);
}

/// Runs `work`, which handles key material, and then zeroes the stack its frames used
/// ([`scrub_stack`]); for work on a thread that lives on (an ed25519 signature on a
/// connection's thread). The work runs in a frame of its own, below this one, whatever the
/// compiler inlines into it.
pub(crate) fn scrubbed<T>(work: impl FnOnce() -> T) -> T {
    let out = run_unscrubbed(work);
    scrub_stack();
    out
}

/// The name of the threads [`on_own_thread`] starts (the panic hook keys on it).
const KEY_WORK_THREAD: &str = "key-work";

/// A key-work thread's stack, as a connection thread's.
const KEY_WORK_STACK: usize = 2 * 1024 * 1024;

/// Runs `work` (parsing, decrypting or signing with a private key) on a thread of its own
/// that exits when it is done, and waits for it without blocking the caller's runtime. A
/// thread leaves key material in two places no allocator reaches: its stack, and its
/// registers (a `memcpy` of a key goes through vector registers, and an idle thread keeps
/// them; the core-image test found a held key's scalar in a parked blocking-pool thread's
/// XMM registers, in the core's register notes). An exiting thread's registers go with it;
/// its stack may be cached for a later thread, so `work`'s frames are scrubbed before it
/// exits, after a panic too. At most one such thread per core runs at once (the rest wait
/// their turn, asynchronously), so a burst of requests cannot crowd out the connection
/// threads. Costs a thread start, tens of microseconds. `None` if no thread could be started
/// or `work` panicked (the panic is reported without its message).
pub(crate) async fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    static TURNS: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::LazyLock::new(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            std::sync::Arc::new(tokio::sync::Semaphore::new(cores))
        });
    quiet_key_work_panics();
    let turn = TURNS.clone().acquire_owned().await.ok()?;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(KEY_WORK_THREAD.into())
        // Set, not left to `RUST_MIN_STACK`: `scrub_stack` needs far more than it clears.
        .stack_size(KEY_WORK_STACK)
        .spawn(move || {
            let out =
                scrubbed(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).ok());
            drop(turn);
            let _ = done.send(out);
        })
        .ok()?;
    result.await.ok().flatten()
}

/// A panic on a key-work thread is reported by where it happened, without its message, which
/// could quote what a parser was reading; every other thread's goes to the hook there was.
fn quiet_key_work_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(KEY_WORK_THREAD) {
                use std::io::Write as _;
                let at = info.location().map(|l| l.to_string()).unwrap_or_default();
                // Not `eprintln!`, which panics when standard error is a closed pipe: a panic
                // in a panic hook aborts the daemon.
                let _ = writeln!(
                    std::io::stderr(),
                    "thread '{KEY_WORK_THREAD}' panicked at {at} (message withheld: it may quote key material)"
                );
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `work` in a frame below its caller's, so [`scrub_stack`] after it reaches every copy.
#[inline(never)]
fn run_unscrubbed<T>(work: impl FnOnce() -> T) -> T {
    work()
}

/// Lets `Bytes` own a `SecretBytes` (and so zeroize it on drop). Private: nothing else may
/// view secret bytes through `AsRef`.
struct WireOwner(SecretBytes);

impl AsRef<[u8]> for WireOwner {
    fn as_ref(&self) -> &[u8] {
        self.0.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key work runs on a thread of its own that is gone once the answer is in, so its
    /// registers and stack go with it; a panic there is `None`, not the caller's panic.
    #[tokio::test]
    async fn key_work_runs_on_a_thread_that_exits_after_it() {
        let caller = std::thread::current().id();
        let (name, id, task) = on_own_thread(|| {
            let me = std::thread::current();
            // "PID/task/TID"
            let task = std::path::Path::new("/proc")
                .join(std::fs::read_link("/proc/thread-self").unwrap());
            assert!(task.exists(), "{task:?}");
            (me.name().map(str::to_owned), me.id(), task)
        })
        .await
        .expect("the work ran");
        assert_eq!(name.as_deref(), Some("key-work"));
        assert_ne!(id, caller);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while task.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the key-work thread did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            on_own_thread(|| -> u8 { panic!("in key work") })
                .await
                .is_none()
        );
    }

    /// A panic on a key-work thread is reported by where it happened and without its message
    /// (which could quote key material); a panic on any other thread keeps its message. Checked
    /// in a child process of this test binary, so the real standard error is what is searched.
    #[test]
    fn a_key_work_panic_is_reported_without_its_message() {
        const CHILD: &str = "BUILDBROKER_TEST_KEY_WORK_PANIC_CHILD";
        const NAME: &str = "secret::tests::a_key_work_panic_is_reported_without_its_message";
        if std::env::var_os(CHILD).is_some() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let quoted = format!("{}-{}", "quoted key material", 0x5ec2e7);
            let got = runtime.block_on(on_own_thread(move || -> u8 { panic!("{quoted}") }));
            assert!(got.is_none(), "the panic is the caller's None");
            let elsewhere = std::thread::spawn(|| panic!("an ordinary panic, message kept"));
            assert!(elsewhere.join().is_err());
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the child test failed: {stderr}");
        assert!(
            !stderr.contains("quoted key material"),
            "a key-work panic's message reached standard error: {stderr}"
        );
        assert!(
            stderr.contains("thread 'key-work' panicked at src/secret.rs:")
                && stderr.contains("message withheld"),
            "the key-work panic is reported, with where it happened: {stderr}"
        );
        assert!(
            stderr.contains("an ordinary panic, message kept"),
            "other threads' panics keep their message: {stderr}"
        );
    }

    /// No more key-work threads run at once than there are cores; the others wait their turn.
    #[tokio::test]
    async fn key_work_runs_at_most_one_thread_per_core_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NOW: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let works = (0..cores * 3).map(|_| {
            on_own_thread(|| {
                let now = NOW.fetch_add(1, Ordering::SeqCst) + 1;
                MOST.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(30));
                NOW.fetch_sub(1, Ordering::SeqCst);
            })
        });
        let done = futures_util::future::join_all(works).await;
        assert!(done.iter().all(Option::is_some));
        let most = MOST.load(Ordering::SeqCst);
        assert!(
            most <= cores,
            "{most} key-work threads at once on {cores} cores"
        );
    }

    #[test]
    fn wire_bytes_share_the_buffer_and_release_it() {
        let s = SecretBytes::new(b"on the wire".to_vec());
        let ptr = s.expose().as_ptr();
        let wire = s.into_wire_bytes();
        assert_eq!(&wire[..], b"on the wire");
        assert_eq!(wire.as_ptr(), ptr, "no copy was made");
    }

    #[test]
    fn fill_reads_in_place_and_notices_overflow() {
        let mut fill = SecretFill::new(4);
        let ptr = fill.spare().unwrap().as_ptr();
        fill.spare().unwrap()[..3].copy_from_slice(b"abc");
        fill.advance(3);
        assert_eq!(fill.spare().unwrap().len(), 1);
        fill.advance(1);
        assert!(
            fill.spare().is_none(),
            "full: the caller reports too much input"
        );
        let mut short = SecretFill::new(8);
        short.spare().unwrap()[..2].copy_from_slice(b"hi");
        short.advance(2);
        let value = short.finish();
        assert_eq!(value.expose(), b"hi");
        assert_ne!(value.expose().as_ptr(), ptr);
    }

    #[test]
    fn one_trailing_newline_is_stripped() {
        for (input, want) in [
            (&b"v\n\n"[..], &b"v\n"[..]),
            (b"v\r\n", b"v"),
            (b"v", b"v"),
            (b"\n", b""),
        ] {
            let mut s = SecretBytes::new(input.to_vec());
            s.strip_one_newline();
            assert_eq!(s.expose(), want);
        }
    }

    #[test]
    fn length_reports_bytes() {
        let s = SecretBytes::new(vec![1, 2, 3]);
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert_eq!(s.expose(), &[1, 2, 3]);
    }
}
