//! A plain bridge to the engine's embedded BuildKit, for comparisons (scripts/bench-remote.sh):
//! each connection on a unix socket becomes `POST /grpc` upgraded to h2c on the engine (the
//! same dial the BuildKit endpoint uses), then bytes are spliced both ways, with no Control API
//! relay, no session interception and no access check. Not for production: anyone who can
//! reach its socket gets the engine's BuildKit.
//!
//!     cargo run --release --example grpc_bridge -- /tmp/bridge.sock unix:///var/run/docker.sock

use buildbroker::buildkit_endpoint::dial;
use buildbroker::config::{BuildkitUpstream, Endpoint};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(engine)) = (args.next(), args.next()) else {
        return Err("usage: grpc_bridge SOCKET unix:///path/to/docker.sock".into());
    };
    let upstream = BuildkitUpstream::DockerGrpc(Endpoint::parse(&engine)?);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    eprintln!("grpc_bridge ready on {socket}, upstream {upstream}");
    loop {
        let (mut client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            match dial(&upstream).await {
                Ok(mut engine) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                }
                Err(e) => eprintln!("grpc_bridge: {e}"),
            }
        });
    }
}
