//! Per-core listening sockets.
//!
//! Every core binds its own socket to the same address with `SO_REUSEPORT`, so
//! the kernel spreads incoming connections over the cores without a shared
//! accept queue or lock.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

/// Listen backlog per core socket; the effective value is also capped by
/// `net.core.somaxconn` (see `redrain tune check`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds a non-blocking `SO_REUSEPORT` TCP listener and hands it to glommio.
/// Must be called on the executor that will accept from it.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    let socket = bind_reuseport_std(addr)?;
    // SAFETY: the fd is a freshly created, owned, listening TCP socket.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Binds a `SO_REUSEPORT` listener as a plain std socket (used to probe that the
/// address is free before cores start, and by tests).
pub fn bind_reuseport_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Hands a bound std listener to the current glommio executor.
pub fn into_glommio(listener: std::net::TcpListener) -> glommio::net::TcpListener {
    // SAFETY: ownership of the listening fd moves into glommio.
    unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

/// Binds one `SO_REUSEPORT` listener per core on `addr`. When `addr` has port 0,
/// the first bind picks the port and the others reuse it, so all cores share
/// one address (tests rely on this).
pub fn bind_per_core(addr: SocketAddr, cores: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport_std(addr)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..cores {
        all.push(bind_reuseport_std(actual)?);
    }
    Ok(all)
}
