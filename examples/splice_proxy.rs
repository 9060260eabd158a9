//! The benchmark floor (issue 14): a plain byte splice between two unix sockets, with no
//! HTTP/2 termination, so `scripts/bench-e2e.sh` can measure what *any* proxy costs on this
//! machine. Not part of the daemon: it has no policy, no access check, and it must never be
//! pointed at anything but the test bed.
//!
//! Usage: `splice_proxy LISTEN_SOCKET UPSTREAM_SOCKET` — every accepted connection is joined
//! to a fresh upstream connection with `tokio::io::copy_bidirectional_with_sizes` and large
//! buffers (the HTTP/1.1 request, the 101 upgrade and the session's h2 bytes all pass as they
//! are).

use std::path::PathBuf;

use tokio::net::{UnixListener, UnixStream};

/// Large enough that one read drains what the kernel has queued on a busy unix socket.
const BUF: usize = 256 * 1024;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: splice_proxy LISTEN_SOCKET UPSTREAM_SOCKET");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let _ = std::fs::remove_file(&listen);
        let listener = UnixListener::bind(&listen)?;
        eprintln!("splice_proxy ready: {}", listen.display());
        loop {
            let (mut down, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                match UnixStream::connect(&upstream).await {
                    Ok(mut up) => {
                        let _ =
                            tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF)
                                .await;
                    }
                    Err(e) => eprintln!("splice_proxy: upstream {}: {e}", upstream.display()),
                }
            });
        }
    })
}
