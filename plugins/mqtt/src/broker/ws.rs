//! MQTT over WebSocket (`ws_listen`, `wss_listen`): the HTTP upgrade at path
//! `/mqtt` with subprotocol `mqtt` (or the older `mqttv3.1`), by
//! tokio-tungstenite, then [`WsIo`], which turns the binary messages into
//! the byte stream the session code reads and writes. A packet may span
//! messages and a message may hold several packets: the stream has no
//! message boundaries.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The path devices open.
pub(crate) const PATH: &str = "/mqtt";
/// Subprotocols we speak, preferred first.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Runs the server side of the WebSocket handshake on `io`.
pub(crate) async fn accept<S>(io: S, max_packet: usize) -> Result<WsIo<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A message may hold a whole packet and a bit more; the read buffer is
    // allocated per connection, so it is kept small.
    let limit = max_packet.saturating_add(64 << 10);
    let config = WebSocketConfig::default()
        .read_buffer_size(8 << 10)
        .write_buffer_size(64 << 10)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(io, check_request, Some(config)).await?;
    Ok(WsIo {
        ws,
        rd: Bytes::new(),
    })
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

/// Accepts the upgrade at [`PATH`] and picks our subprotocol among the
/// device's. A device that names none is let in (some do not); one that
/// names only others is refused, since it would not speak MQTT.
// The signature is tungstenite's handshake callback; the refusal is an HTTP
// response, built once per refused upgrade.
#[allow(clippy::result_large_err)]
fn check_request(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != PATH {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "MQTT over WebSocket is at path /mqtt",
        ));
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(resp);
    }
    let Some(pick) = SUBPROTOCOLS
        .iter()
        .find(|ours| offered.iter().any(|o| o.eq_ignore_ascii_case(ours)))
    else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer mqtt",
        ));
    };
    resp.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(pick),
    );
    Ok(resp)
}

/// A WebSocket connection as a byte stream: binary messages in are read
/// back to back, each write is one binary message out. A text message is
/// an error (MQTT over WebSocket is binary only); a close is the end of
/// the stream. Pings are answered by tungstenite.
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last binary message read.
    rd: Bytes,
}

fn io_err(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.rd.is_empty() {
                let n = self.rd.len().min(buf.remaining());
                buf.put_slice(&self.rd.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) | Some(Err(WsError::ConnectionClosed)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Ok(Message::Binary(b))) => self.rd = b,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message (MQTT needs binary ones)",
                    )))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_err)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_err)
    }
}
