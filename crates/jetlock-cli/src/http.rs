//! One plain HTTP/1 GET, with the hyper client that axum already brings:
//! `jetlock doctor` reads a server's `/varz`, `jetlock bench` a
//! coordinator's `/metrics`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};

/// `GET uri` (an `http://` URI with a host); the status and at most
/// `max_bytes` of body.
pub async fn get(
    uri: &hyper::Uri,
    max_bytes: usize,
) -> Result<(hyper::StatusCode, Bytes), async_nats::Error> {
    let authority = uri.authority().ok_or("the URL has no host")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, authority.port_u16().unwrap_or(80))).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())?;
    // The sender is dropped when the exchange ends, which ends the
    // connection future too.
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await?
            .to_bytes();
        Ok::<_, async_nats::Error>((status, body))
    };
    let (exchange, _) = tokio::join!(exchange, connection);
    exchange
}
