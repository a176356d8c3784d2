//! The REST port's accept loop: every connection served by hyper (HTTP/1.1, or HTTP/2 with
//! prior knowledge) with the bounds `axum::serve` leaves unset.
//!
//! `axum::serve` gives hyper no timer, so hyper's `header_read_timeout` never applies (hyper
//! 1.x: "requires a Timer"): a client could hold any number of connections, and their tasks,
//! by sending half a request head or by leaving a keep-alive connection idle. Here each
//! HTTP/1.1 connection has a [`tokio`] timer and a header-read timeout, counted from when the
//! connection starts waiting for a request head: a head not complete by then, whether it was
//! begun or not, ends the connection. Request bodies and handlers keep their own bounds (the
//! body size limit and the request timeout of the router).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::Service;

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets the
/// requests in flight finish, closes idle connections (hyper's graceful shutdown) and returns
/// once every connection has ended.
///
/// Each connection gets `TCP_NODELAY` (answers are small and must leave at once) and, for
/// HTTP/1.1, `header_read_timeout`: the longest a client may take to send a whole request head,
/// counted from when the connection waits for one, so it also bounds how long a keep-alive
/// connection stays open between requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The client went away between its connect and our accept: its loss.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors or memory: retrying at once would spin. The pause is
                // a back-off, not a guard of anything.
                tracing::warn!(%error, "the REST port cannot accept a connection; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        // hyper's header-read timer starts with the first HTTP/1.1 head; before that the
        // connection is still told apart from HTTP/2 (hyper-util reads the preface first,
        // untimed). Until its first request a connection gets the same time as a head: one that
        // sends nothing, or part of a preface, is dropped.
        let first_request = Arc::new(Notify::new());
        let service = {
            let (app, first_request) = (app.clone(), Arc::clone(&first_request));
            tower::service_fn(move |request: Request<Incoming>| {
                first_request.notify_one();
                app.clone().call(request)
            })
        };
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                outcome = connection => {
                    if let Err(error) = outcome {
                        tracing::debug!(%peer, %error, "REST connection ended with an error");
                    }
                }
                () = no_request_within(&first_request, header_read_timeout) => {
                    tracing::debug!(%peer, "REST connection sent no request in time; dropped");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Completes when `first_request` is not notified within `limit`; never otherwise.
async fn no_request_within(first_request: &Notify, limit: Duration) {
    if tokio::time::timeout(limit, first_request.notified())
        .await
        .is_ok()
    {
        std::future::pending::<()>().await;
    }
}

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Longest any step of these tests waits (a bound, not a pace).
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A server with `header_read_timeout` on a free loopback port, and the sender that stops it.
    async fn start(
        header_read_timeout: Duration,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, header_read_timeout, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Reads until the server closes the connection; what it sent on the way.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..1_000 {
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
                .await
                .expect("the server closes the connection")
                .unwrap_or(0);
            if n == 0 {
                return String::from_utf8_lossy(&got).into_owned();
            }
            got.extend_from_slice(&buf[..n]);
        }
        panic!("the connection stayed open through 1,000 reads: {got:?}");
    }

    #[tokio::test]
    async fn a_request_head_never_finished_ends_the_connection() {
        let (addr, _stop) = start(Duration::from_millis(200)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream).await;
        assert!(!answer.contains("200 OK"), "{answer:?}");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_part_of_a_preface_is_dropped() {
        let (addr, _stop) = start(Duration::from_millis(200)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_to_close(&mut silent).await, "");
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert_eq!(read_to_close(&mut partial).await, "");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
        let (addr, _stop) = start(Duration::from_millis(200)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        // The answer arrives, then nothing more is asked: the server ends the connection.
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
        assert!(answer.ends_with("ok"), "{answer:?}");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_closes_idle_connections() {
        // Longer than the test may take: only the shutdown closes the idle connection.
        let (addr, stop) = start(Duration::from_secs(600)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        // The server has the connection once it answers on it.
        idle.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(PATIENCE, idle.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
        stop.send(()).unwrap();
        read_to_close(&mut idle).await;
        // Idle connections are closed only after the listener was dropped.
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "connections are refused after shutdown"
        );
    }
}
