//! Keep-alive honesty for answers given before the request body was read.
//!
//! Some answers are decided from the request head alone: 401/403 from the API-key check, 404
//! and 405 from routing, 415 from a wrong content type, 408 from the request timeout. When the
//! body has not arrived by then, hyper cannot drain it cheaply and closes the connection after
//! the answer, without saying so. A keep-alive client (Python `requests`, `httpx`) then sends
//! its next request on a socket the server is closing and gets `RemoteDisconnected` instead of
//! an answer: a race it loses whenever the body travels in a TCP segment after the head.
//!
//! [`close_if_body_unread`] closes that gap the way RFC 9112 §9.6 asks: when the handler
//! answered without reading the request body to its end, the answer carries
//! `Connection: close`, so the client opens a new connection for its next request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// Middleware: the answer carries `Connection: close` when the request had a body that the
/// handler (or a layer under this one) did not read to its end. Requests without a body and
/// requests whose body was read keep their connection.
pub async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if http_body::Body::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let body = Body::new(ReadToEnd {
        inner: body,
        ended: ended.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !ended.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records whether it was read to its end.
struct ReadToEnd {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A loopback server with one route that reads its body and one that answers 401 from the
    /// head alone, behind the middleware. Returns its address; the server task ends with the
    /// test's runtime.
    async fn serve() -> std::net::SocketAddr {
        let app = Router::new()
            .route(
                "/read",
                post(|body: Bytes| async move { format!("{}", body.len()) }),
            )
            .route("/refuse", post(|| async { StatusCode::UNAUTHORIZED }))
            .layer(axum::middleware::from_fn(close_if_body_unread));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Reads one HTTP/1.1 answer (head and a `content-length` body) from the stream.
    async fn read_answer(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // Each read takes at least one byte of an answer of a few hundred bytes.
        for _ in 0..1_000 {
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if got.len() >= head_end + 4 + length {
                    return text;
                }
            }
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
                .await
                .expect("the server answers")
                .unwrap();
            assert!(n > 0, "connection closed before a whole answer: {text:?}");
            got.extend_from_slice(&buf[..n]);
        }
        panic!("no whole answer in 1,000 reads: {got:?}");
    }

    #[tokio::test]
    async fn an_answer_given_before_the_body_arrived_closes_the_connection() {
        let addr = serve().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        // The head alone; the body would follow in a later segment.
        stream
            .write_all(b"POST /refuse HTTP/1.1\r\nhost: a\r\ncontent-length: 15\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "the client must learn that this connection ends: {answer}"
        );
        // And it does end: nothing more is read from it.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    /// Sends `request` on `stream` and reads its answer, which must start with `status` and
    /// leave the connection open.
    async fn exchange_kept(stream: &mut TcpStream, request: &[u8], status: &str) -> String {
        stream.write_all(request).await.unwrap();
        let answer = read_answer(stream).await;
        assert!(answer.starts_with(status), "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        answer
    }

    #[tokio::test]
    async fn answers_that_read_the_body_or_had_none_keep_the_connection() {
        let addr = serve().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let read = b"POST /read HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello";
        for _ in 0..3 {
            let answer = exchange_kept(&mut stream, read, "HTTP/1.1 200").await;
            assert!(answer.ends_with("\r\n\r\n5"), "{answer}");
        }
        // A refusal of a request without a body keeps the connection too.
        let refuse = b"POST /refuse HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n";
        for _ in 0..2 {
            exchange_kept(&mut stream, refuse, "HTTP/1.1 401").await;
        }
    }
}
