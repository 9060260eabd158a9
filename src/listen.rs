//! The listeners an endpoint serves, unix or tcp, and what turns an accepted connection into a
//! byte stream with a known caller ([`Connected`]): unix peer credentials (SO_PEERCRED), or a
//! mutual-TLS handshake ([`crate::tls::TlsAcceptor`]) whose verified certificate names the
//! client. Any endpoint (the Docker API in [`crate::proxy`], the BuildKit API) takes the same
//! [`Listener`] and calls [`Incoming::establish`] inside the connection's own task, so a slow
//! or stalled handshake never holds the accept loop.
//!
//! This module never hands out a tcp connection on a TLS listener whose handshake did not
//! complete with a verified certificate, and never gives a tcp client a unix uid.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use tokio_util::sync::CancellationToken;

use crate::access::{PeerInfo, check_peer, supplementary_groups};
use crate::broker::Broker;
use crate::connection_threads::Movable;
use crate::peers::ConnectionSlot;
use crate::server::BoundListener;
use crate::tls::{AcceptError, HANDSHAKE_TIMEOUT, IdentityError, TlsAcceptor};

/// A listening socket of an endpoint.
pub enum Listener {
    Unix(BoundListener),
    Tcp(TcpEndpoint),
}

/// A bound tcp listener: mutual TLS with `tls`, or plain (`insecure_tcp`, loopback only).
pub struct TcpEndpoint {
    pub addr: SocketAddr,
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
}

impl TcpEndpoint {
    /// Binds `addr`; every connection will be served through `tls` when it is set.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<TlsAcceptor>>,
    ) -> std::io::Result<TcpEndpoint> {
        let listener = TcpListener::bind(addr).await?;
        Ok(TcpEndpoint {
            addr: listener.local_addr()?,
            listener,
            tls,
        })
    }
}

impl Listener {
    /// Waits for the next connection; the handshake (if any) happens in [`Incoming::establish`].
    pub async fn accept(&self) -> std::io::Result<Incoming> {
        match self {
            Listener::Unix(bound) => {
                let (stream, _) = bound.listener.accept().await?;
                Ok(Incoming::Unix(stream))
            }
            Listener::Tcp(tcp) => {
                let (stream, remote) = tcp.listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Incoming::Tcp {
                    stream,
                    remote,
                    tls: tcp.tls.clone(),
                })
            }
        }
    }

    /// The address as users write it (`unix:///…`, `tcp://…`), for logs and the ready line.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(bound) => format!("unix://{}", bound.path.display()),
            Listener::Tcp(tcp) if tcp.tls.is_some() => format!("tcp://{} (mutual TLS)", tcp.addr),
            Listener::Tcp(tcp) => format!("tcp://{} (plain, insecure_tcp)", tcp.addr),
        }
    }
}

/// An accepted connection whose caller is not known yet.
pub enum Incoming {
    Unix(UnixStream),
    Tcp {
        stream: TcpStream,
        remote: SocketAddr,
        tls: Option<Arc<TlsAcceptor>>,
    },
}

/// An [`Incoming`] between the runtime that accepted it and the one that serves it
/// ([`crate::connection_threads`]).
pub enum Detached {
    Unix(std::os::unix::net::UnixStream),
    Tcp {
        stream: std::net::TcpStream,
        remote: SocketAddr,
        tls: Option<Arc<TlsAcceptor>>,
    },
}

impl Movable for Incoming {
    type Detached = Detached;

    fn detach(self) -> std::io::Result<Detached> {
        Ok(match self {
            Incoming::Unix(stream) => Detached::Unix(stream.into_std()?),
            Incoming::Tcp {
                stream,
                remote,
                tls,
            } => Detached::Tcp {
                stream: stream.into_std()?,
                remote,
                tls,
            },
        })
    }

    fn attach(detached: Detached) -> std::io::Result<Incoming> {
        Ok(match detached {
            Detached::Unix(stream) => Incoming::Unix(UnixStream::from_std(stream)?),
            Detached::Tcp {
                stream,
                remote,
                tls,
            } => Incoming::Tcp {
                stream: TcpStream::from_std(stream)?,
                remote,
                tls,
            },
        })
    }
}

/// A connection with its caller: ready for `[access]` and the endpoint's protocol.
pub struct Connected {
    pub io: ClientIo,
    pub peer: PeerInfo,
    /// The unix peer's supplementary groups (none for a tcp client).
    pub groups: Vec<u32>,
    /// Where a tcp client connected from (for logs only; never an identity).
    pub remote: Option<SocketAddr>,
}

/// Why a connection was dropped before its endpoint saw it.
#[derive(Debug, thiserror::Error)]
pub enum EstablishError {
    #[error("cannot read the unix peer's credentials: {0}")]
    PeerCred(std::io::Error),
    #[error("tcp client {remote}: {error}")]
    Tls {
        remote: SocketAddr,
        error: AcceptError,
    },
}

/// A verified TLS client whose certificate names no usable identity: the stream is up, so the
/// endpoint can answer in its own protocol why it refuses.
pub struct Unnamed {
    pub io: ClientIo,
    pub remote: SocketAddr,
    pub error: IdentityError,
}

impl Incoming {
    /// Reads the unix peer's credentials, or runs the TLS handshake (bounded by
    /// [`HANDSHAKE_TIMEOUT`]) and names the client by its certificate.
    pub async fn establish(self) -> Result<Result<Connected, Unnamed>, EstablishError> {
        match self {
            Incoming::Unix(stream) => {
                let peer = PeerInfo::of(&stream).map_err(EstablishError::PeerCred)?;
                let groups = supplementary_groups(&peer);
                Ok(Ok(Connected {
                    io: ClientIo::Unix(stream),
                    peer,
                    groups,
                    remote: None,
                }))
            }
            Incoming::Tcp {
                stream,
                remote,
                tls: None,
            } => Ok(Ok(Connected {
                io: ClientIo::Tcp(stream),
                peer: PeerInfo::tcp(None),
                groups: Vec::new(),
                remote: Some(remote),
            })),
            Incoming::Tcp {
                stream,
                remote,
                tls: Some(acceptor),
            } => {
                let (tls, identity) = acceptor
                    .handshake(stream, HANDSHAKE_TIMEOUT)
                    .await
                    .map_err(|error| EstablishError::Tls { remote, error })?;
                let io = ClientIo::Tls(Box::new(tls));
                Ok(match identity {
                    Ok(name) => Ok(Connected {
                        io,
                        peer: PeerInfo::tcp(Some(&name)),
                        groups: Vec::new(),
                        remote: Some(remote),
                    }),
                    Err(error) => Err(Unnamed { io, remote, error }),
                })
            }
        }
    }
}

/// A client's byte stream, whatever it arrived on.
pub enum ClientIo {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = match self.get_mut() {
            ClientIo::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = polled {
            crate::metrics::client_bytes_received(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = match self.get_mut() {
            ClientIo::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = polled {
            crate::metrics::client_bytes_sent(n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = match self.get_mut() {
            ClientIo::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = polled {
            crate::metrics::client_bytes_sent(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Unix(s) => s.is_write_vectored(),
            ClientIo::Tcp(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Unix(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A caller that passed `[access]` and holds a connection slot.
pub struct Admitted {
    pub io: ClientIo,
    pub peer: PeerInfo,
    pub remote: Option<SocketAddr>,
    /// Counts the connection against its uid; its token ends the connection when the daemon
    /// drains or a reload revokes the caller.
    pub slot: ConnectionSlot,
}

/// A caller turned away, with the stream to answer it on (in the endpoint's own protocol).
pub enum Refusal {
    /// Not allowed (`[access]`, or a TLS certificate naming no usable identity).
    Forbidden(ClientIo, String),
    /// Over `[limits] connections_per_uid`.
    Busy(ClientIo, String),
    /// Nothing to answer on: the handshake or the peer-credential read failed (logged).
    Gone,
}

/// The admission every endpoint shares: learn who is calling ([`Incoming::establish`]), check
/// them against `[access]`, take a connection slot. Logs each refusal, naming `endpoint`.
pub async fn admit(
    incoming: Incoming,
    broker: &Broker,
    shutdown: &CancellationToken,
    endpoint: &str,
) -> Result<Admitted, Refusal> {
    let Connected {
        io,
        peer,
        groups,
        remote,
    } = match incoming.establish().await {
        Ok(Ok(connected)) => connected,
        Ok(Err(unnamed)) => {
            tracing::warn!(remote = %unnamed.remote, "refused a TLS client ({endpoint}): {}", unnamed.error);
            return Err(Refusal::Forbidden(
                unnamed.io,
                format!("buildbroker: {}", unnamed.error),
            ));
        }
        Err(e) => {
            // A TLS client the verifier refused sees the TLS alert (unknown CA, expired, no
            // certificate); the daemon log says which.
            crate::metrics::error_seen("handshake");
            tracing::warn!("closing a connection ({endpoint}): {e}");
            return Err(Refusal::Gone);
        }
    };
    let client = peer.client.to_string();
    let generation = broker.current();
    if let Err(refused) = check_peer(
        &generation.policy.access,
        broker.daemon_uid(),
        &peer,
        &groups,
    ) {
        tracing::warn!(%client, uid = peer.uid, gid = peer.gid, pid = ?peer.pid, remote = ?remote, "refused connection ({endpoint}): {refused}");
        return Err(Refusal::Forbidden(io, refused.to_string()));
    }
    let limit = generation.policy.limits.connections_per_uid;
    match broker.peers().admit(peer.clone(), groups, limit, shutdown) {
        Ok(slot) => {
            tracing::debug!(%client, uid = peer.uid, pid = ?peer.pid, remote = ?remote, "accepted connection ({endpoint})");
            Ok(Admitted {
                io,
                peer,
                remote,
                slot,
            })
        }
        Err(full) => {
            tracing::warn!(%client, uid = peer.uid, pid = ?peer.pid, "refused connection ({endpoint}): {full}");
            Err(Refusal::Busy(io, full.to_string()))
        }
    }
}
