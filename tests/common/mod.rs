//! Helpers shared by the integration tests (each `tests/*.rs` is its own crate and includes
//! this module).

use std::net::TcpListener;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a child process to listen on.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
