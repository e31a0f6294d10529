//! `wasi:http` 0.3 handlers (feature `p3`): an async [`Handler`] exported with
//! [`export_p3!`](crate::export_p3) as the component's `wasi:http/handler@0.3.0`, answering
//! with a whole [`Response`](crate::Response) or a body it streams as it goes ([`Reply::stream`]).
//!
//! ```ignore
//! use edge_infer_guest::p3::{BodyWriter, Handler, Reply, Request};
//! use edge_infer_guest::Error;
//!
//! struct Count;
//! edge_infer_guest::export_p3!(Count);
//!
//! impl Handler for Count {
//!     async fn handle(_request: Request) -> Result<Reply, Error> {
//!         Ok(Reply::stream(200, "text/plain", |mut body: BodyWriter| async move {
//!             for n in 1..=3 {
//!                 body.write(format!("{n}\n")).await?;
//!             }
//!             Ok(())
//!         }))
//!     }
//! }
//! ```
//!
//! The host gives every request a fresh instance, as for 0.2 guests, with the same limits,
//! deadline and `wasi:nn`. A stream that ends in an `Err` (or a trap) reaches the client as
//! an unfinished body, never as a whole one.

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use wasip3::http::types::{ErrorCode, Fields, Request as WasiRequest, Response as WasiResponse};
use wasip3::wit_bindgen::StreamWriter;
use wasip3::{wit_future, wit_stream};

use crate::{Error, Response, method_name};

/// A guest's 0.3 request handler. A fresh instance serves each request, so it keeps no state.
pub trait Handler {
    /// Answers one request; an `Err` is answered with its status and `{"error": message}`.
    fn handle(request: Request) -> impl Future<Output = Result<Reply, Error>>;
}

/// Exports a [`p3::Handler`](Handler) as the component's `wasi:http/handler@0.3.0`.
#[macro_export]
macro_rules! export_p3 {
    ($handler:ident) => {
        impl $crate::p3::__private::Guest for $handler {
            async fn handle(
                request: $crate::p3::__private::Request,
            ) -> Result<$crate::p3::__private::Response, $crate::p3::__private::ErrorCode> {
                $crate::p3::serve::<$handler>(request).await
            }
        }
        $crate::p3::__private::wasip3::http::service::export!($handler);
    };
}

/// What [`export_p3!`](crate::export_p3) expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wasip3;
    pub use wasip3::exports::http::handler::Guest;
    pub use wasip3::http::types::{ErrorCode, Request, Response};
}

/// Answers one request with `H`: what [`export_p3!`](crate::export_p3) does for every request.
pub async fn serve<H: Handler>(request: WasiRequest) -> Result<WasiResponse, ErrorCode> {
    let reply = H::handle(Request::new(request)).await.unwrap_or_else(|error| error.into_response().into());
    Ok(reply.send())
}

/// An HTTP request: method, path and headers at once, the body when asked for.
pub struct Request {
    incoming: Option<WasiRequest>,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    fn new(incoming: WasiRequest) -> Request {
        let method = method_name!(incoming.get_method(), wasip3::http::types::Method);
        let path = incoming.get_path_with_query().unwrap_or_else(|| "/".to_string());
        let headers = incoming.get_headers().copy_all();
        Request { incoming: Some(incoming), method, path, headers }
    }

    /// The method, upper case: `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path with its query, as the route hands it: the whole path, or the path below the
    /// route's mount with its `strip_mount`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The first value of header `name` (case-insensitive), if it is present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::first_header(&self.headers, name)
    }

    /// The whole body, read once; asking again is a 400.
    pub async fn body(&mut self) -> Result<Vec<u8>, Error> {
        let incoming = self.incoming.take().ok_or_else(|| Error::bad_request("request body already read"))?;
        let (_read, done) = wit_future::new(|| Ok(()));
        let (contents, _trailers) = WasiRequest::consume_body(incoming, done);
        Ok(contents.collect().await)
    }

    /// The body parsed as JSON; malformed JSON is a 400 saying what is wrong.
    pub async fn json<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        serde_json::from_slice(&self.body().await?)
            .map_err(|e| Error::bad_request(format!("malformed JSON: {e}")))
    }

    /// `Ok` if the method is `method`, else a 405 with `hint` as its message.
    pub fn expect_method(&self, method: &str, hint: &str) -> Result<(), Error> {
        if self.method == method { Ok(()) } else { Err(Error::new(405, hint)) }
    }
}

/// Writes a streamed body: see [`Reply::stream`].
pub struct BodyWriter {
    stream: StreamWriter<u8>,
}

impl BodyWriter {
    /// Sends `bytes` to the client; an `Err` means it has gone away.
    pub async fn write(&mut self, bytes: impl Into<Vec<u8>>) -> Result<(), Error> {
        let unsent = self.stream.write_all(bytes.into()).await;
        if unsent.is_empty() { Ok(()) } else { Err(Error::new(499, "the client went away")) }
    }
}

/// The body of a streamed reply: what writes it.
type Writer = Box<dyn FnOnce(BodyWriter) -> Pin<Box<dyn Future<Output = Result<(), Error>>>>>;

/// What a 0.3 handler answers: a whole [`Response`], or a head and a body written after it.
pub enum Reply {
    Whole(Response),
    Streamed { head: Response, write: Writer },
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply::Whole(response)
    }
}

impl Reply {
    /// A reply whose head (`status`, `content_type`) goes out at once and whose body `write`
    /// writes after, as it goes. If `write` returns an `Err`, the client gets the body as
    /// unfinished (the connection closed, or the HTTP/2 stream reset).
    pub fn stream<F, Body>(status: u16, content_type: &str, write: F) -> Reply
    where
        F: FnOnce(BodyWriter) -> Body + 'static,
        Body: Future<Output = Result<(), Error>> + 'static,
    {
        let head = Response::new(status, content_type, Vec::new());
        Reply::Streamed {
            head,
            write: Box::new(move |body| Box::pin(write(body)) as Pin<Box<dyn Future<Output = _>>>),
        }
    }

    /// The same reply with one more header.
    pub fn with_header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Whole(response) => Reply::Whole(response.with_header(name, value)),
            Reply::Streamed { head, write } => Reply::Streamed { head: head.with_header(name, value), write },
        }
    }

    /// The response handed to the host, its body written by a task that goes on after.
    fn send(self) -> WasiResponse {
        let (head, write): (Response, Writer) = match self {
            Reply::Whole(mut response) => {
                let body = std::mem::take(&mut response.body);
                let length = body.len();
                (
                    response.with_header("content-length", &length.to_string()),
                    Box::new(move |mut writer: BodyWriter| {
                        Box::pin(async move { writer.write(body).await }) as Pin<Box<dyn Future<Output = _>>>
                    }),
                )
            }
            Reply::Streamed { head, write } => (head, write),
        };
        let mut entries = vec![("content-type".to_string(), head.content_type.clone().into_bytes())];
        entries.extend(head.headers.iter().map(|(name, value)| (name.clone(), value.clone().into_bytes())));
        let Ok(headers) = Fields::from_list(&entries) else {
            let message = "the guest set a header HTTP does not allow";
            return Reply::from(Error::new(500, message).into_response()).send();
        };
        let (stream, contents) = wit_stream::new();
        let (ended, trailers) = wit_future::new(|| Ok(None));
        let (response, _delivered) = WasiResponse::new(headers, Some(contents), trailers);
        // A status outside 100..=999 is refused; the host then answers 500.
        let _ = response.set_status_code(head.status);
        wasip3::spawn_local(async move {
            if let Err(error) = write(BodyWriter { stream }).await {
                // The body stream is closed by now: the host reads this as a failed body.
                let _ = ended.write(Err(ErrorCode::InternalError(Some(error.message)))).await;
            }
        });
        response
    }
}
