//! Outbound connections with a chosen loopback source address.
//!
//! One source address gives at most one ephemeral port range (about 28k ports by
//! default) towards one destination. Binding each socket to one of 127.0.0.1..N
//! before connecting multiplies that, so one machine can hold more than 64k client
//! connections to a loopback node. `IP_BIND_ADDRESS_NO_PORT` defers the port
//! choice to connect(), so the kernel picks ports per 4-tuple instead of per
//! source address.
//!
//! The connect itself is non-blocking. Under tokio-uring it is awaited through
//! tokio's reactor (the tokio-uring runtime runs one), then the connected socket
//! is switched back to blocking mode and handed to tokio-uring, whose operations
//! complete in the ring. Under glommio (see `backend`) the same socket is polled
//! for writability between short timer sleeps and handed to glommio's `TcpStream`.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The source address of connection `index` when spreading over `source_ips`
/// loopback addresses (`None` when not spreading).
pub fn source_ip(index: u64, source_ips: u32) -> Option<Ipv4Addr> {
    if source_ips == 0 {
        return None;
    }
    let host = 1 + (index % u64::from(source_ips)) as u8;
    Some(Ipv4Addr::new(127, 0, 0, host))
}

fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a socket for `target`, binds it to `source` if given and starts a
/// non-blocking connect. Returns the socket and whether the connect is still
/// in progress (wait for writability, then [`finish_connect`]).
pub fn start_connect(target: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<(Socket, bool)> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_nodelay(true)?;
    if let Some(ip) = source {
        set_bind_address_no_port(&socket)?;
        socket.bind(&SockAddr::from(SocketAddr::new(ip.into(), 0)))?;
    }
    match socket.connect(&SockAddr::from(target)) {
        Ok(()) => Ok((socket, false)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((socket, true)),
        Err(e) => Err(e),
    }
}

/// Whether a connecting socket is writable now (its connect finished, either way).
pub fn writable_now(socket: &Socket) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll reads and writes one pollfd through a valid pointer, no wait.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}

/// Checks that the connect succeeded and switches the socket back to blocking
/// mode (the io_uring runtimes want that; glommio's own connect leaves it so).
pub fn finish_connect(socket: Socket) -> io::Result<Socket> {
    // A refused connect shows up here when it was not reported through SO_ERROR.
    socket.peer_addr()?;
    socket.set_nonblocking(false)?;
    Ok(socket)
}

/// Connects to `target`, from `source` if given. Must run inside a tokio-uring runtime.
pub async fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<tokio_uring::net::TcpStream> {
    let (socket, in_progress) = start_connect(target, source)?;
    let socket = if in_progress {
        // SAFETY: the socket owns its fd, which stays open and unchanged until
        // `into_inner` hands the socket back below.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::WRITABLE) }?;
        let _ready = fd.writable().await?;
        let socket = fd.into_inner();
        if let Some(e) = socket.take_error()? {
            return Err(e);
        }
        socket
    } else {
        socket
    };
    let std_stream: std::net::TcpStream = finish_connect(socket)?.into();
    Ok(tokio_uring::net::TcpStream::from_std(std_stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_rotate_over_the_source_addresses() {
        assert_eq!(source_ip(0, 0), None);
        assert_eq!(source_ip(0, 3), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_ip(4, 3), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(249, 250), Some(Ipv4Addr::new(127, 0, 0, 250)));
    }

    #[test]
    fn connects_from_a_chosen_loopback_address_and_refusal_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        tokio_uring::builder().entries(8).start(async move {
            let _s = connect(addr, Some(Ipv4Addr::new(127, 0, 0, 3))).await.unwrap();
            let (_peer, from) = listener.accept().unwrap();
            assert_eq!(from.ip().to_string(), "127.0.0.3");
            drop(listener);
            assert!(connect(addr, None).await.is_err());
        });
    }
}
