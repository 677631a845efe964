//! Per-core accept loops for the plain and TLS client ports.

use super::{conn, Core};
use std::rc::Rc;
use std::time::Duration;

/// Back-off after an accept error (e.g. EMFILE) so a full fd table does not
/// turn into a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

pub async fn accept_loop(core: Rc<Core>, listener: glommio::net::TcpListener, tls: bool) {
    let mut errors_logged = 0u32;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if errors_logged < 10 {
                    log::warn!("core {}: accept failed: {e} (fd limit {})", core.id, core.node.fd_limit);
                    errors_logged += 1;
                }
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if core.node.shutting_down() {
            return;
        }
        if core.is_full() {
            // On the TLS port a plaintext error frame would only be a TLS
            // record error to the client; closing at once says the same.
            conn::spawn_refusal(core.clone(), stream, !tls);
            continue;
        }
        let tls_conn = match (tls, core.node.tls.as_ref()) {
            (true, Some(config)) => match super::tls::TlsSession::new(config.clone()) {
                Ok(c) => Some(Box::new(c)),
                Err(e) => {
                    log::warn!("core {}: TLS session setup failed: {e}", core.id);
                    continue;
                }
            },
            _ => None,
        };
        conn::spawn_fresh(core.clone(), stream, tls_conn);
    }
}
