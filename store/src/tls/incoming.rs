//! Accepting TLS connections: TCP accept, then the handshake in its own task, so one slow or
//! malicious client cannot hold up the others.
//!
//! Bounds: at most `MAX_PENDING_HANDSHAKES` handshakes run at once (further TCP connections wait in
//! the kernel's backlog), each may take at most `HANDSHAKE_TIMEOUT`, and at most `READY_QUEUE`
//! finished connections wait for the server to take them. The accept task owns the sender of the
//! ready queue and ends when the server drops the receiving stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::ServerTls;

const MAX_PENDING_HANDSHAKES: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const READY_QUEUE: usize = 64;

/// Established TLS connections from one listener.
pub type TlsIncoming = ReceiverStream<std::io::Result<TlsStream<TcpStream>>>;

/// Accepts connections on `listener` and yields those whose handshake succeeded. Refused handshakes
/// (no or untrusted client certificate, wrong protocol) are logged at debug level and dropped.
pub fn incoming(listener: TcpListener, tls: Arc<ServerTls>) -> TlsIncoming {
    let (ready_tx, ready_rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        loop {
            let Ok(permit) = pending.clone().acquire_owned().await else { return };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready_tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and similar: report it to the server, back off briefly.
                    if ready_tx.send(Err(err)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let ready_tx = ready_tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready_tx.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(ready_rx)
}
