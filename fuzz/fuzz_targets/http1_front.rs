//! The Docker endpoint's HTTP/1 front (hyper's parser, then buildbroker's routing: `/session`,
//! exec create/start, upgrades, everything else forwarded) on any bytes a client could send,
//! through the real connection handler on a socket pair. The upstream engine is a socket that
//! does not exist, so every forwarded request ends in the broker's own error answer. No input
//! may panic the handler or keep it past the input's end for long.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use buildbroker::broker::Broker;
use buildbroker::config::{HostEnv, Policy, PolicyOrigin};
use buildbroker::listen::Incoming;
use buildbroker::proxy::serve_connection;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Front {
    runtime: tokio::runtime::Runtime,
    broker: Arc<Broker>,
}

fn front() -> &'static Front {
    static FRONT: OnceLock<Front> = OnceLock::new();
    FRONT.get_or_init(|| {
        let env = HostEnv::current();
        let policy = Policy::parse(
            "[server]\nupstream = \"unix:///nonexistent/buildbroker-fuzz/docker.sock\"\n\
             [secrets.t]\nsources = [\"env:BUILDBROKER_FUZZ_T\"]\n",
            PolicyOrigin::Embedded,
            &env,
        )
        .expect("the fuzz policy parses");
        Front {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            broker: Arc::new(Broker::new(policy, env).expect("a broker")),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let front = front();
    front.runtime.block_on(async {
        let (server, mut client) = UnixStream::pair().unwrap();
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let conn = tokio::spawn(serve_connection(
            Incoming::Unix(server),
            front.broker.clone(),
            tasks.clone(),
            shutdown.clone(),
        ));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        shutdown.cancel();
        conn.abort();
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    });
});
