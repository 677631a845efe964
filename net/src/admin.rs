//! A deliberately small HTTP/1.1 server for the admin port (`/metrics`,
//! `/healthz`). One request per connection, `Connection: close`, request head
//! bounded to [`REQUEST_HEAD_BYTES_MAX`]; it only needs to serve Prometheus
//! scrapers and health probes on loopback.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

/// Largest request head accepted before answering 431.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// A client that does not finish its request head within this time is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more are closed immediately.
pub const CONNECTIONS_MAX: usize = 64;

/// What a handler returns for a path.
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Handler from request path (without query) to response.
pub type AdminHandler = Rc<dyn Fn(&str) -> AdminResponse>;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Parses the request line; returns (method, path without query).
pub fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

async fn serve_one(mut stream: glommio::net::TcpStream, handler: AdminHandler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let response = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break match parse_request_line(&head) {
                None => AdminResponse { status: 400, content_type: "text/plain", body: "bad request\n".into() },
                Some(("GET", path)) | Some(("HEAD", path)) => handler(path),
                Some(_) => AdminResponse { status: 405, content_type: "text/plain", body: "only GET\n".into() },
            };
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            break AdminResponse { status: 431, content_type: "text/plain", body: "request head too large\n".into() };
        }
    };
    let head_out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head_out.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.flush().await?;
    Ok(())
}

/// Accepts admin connections until the listener fails or the task is dropped.
pub async fn serve(listener: TcpListener, handler: AdminHandler) {
    let active = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("admin accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if active.get() >= CONNECTIONS_MAX {
            drop(stream);
            continue;
        }
        active.set(active.get() + 1);
        let handler = handler.clone();
        let active = active.clone();
        glommio::spawn_local(async move {
            if let Err(e) = serve_one(stream, handler).await {
                log::debug!("admin connection: {e}");
            }
            active.set(active.get() - 1);
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_request_line;

    #[test]
    fn request_line_is_parsed_and_query_dropped() {
        assert_eq!(parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(parse_request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"garbage"), None);
    }
}
