//! Listening sockets as every service serves them.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Accepted gRPC connections with `TCP_NODELAY`: without it Nagle's algorithm holds each
/// small response back until the client's delayed ACK (about 40 ms on Linux), which caps a
/// connection at a few dozen round trips a second whatever the server's speed.
/// (`serve_with_incoming_shutdown` over a plain listener stream leaves it off.)
pub fn nodelay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
