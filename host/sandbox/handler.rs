//! One call of a guest's `wasi:http` handler, for either interface: the request handed in,
//! the response head sent on as soon as the guest sets it, and the call driven until the
//! guest's work has ended: for 0.2 when `handle` returns, for 0.3 when the tasks it left
//! running after returning its response (writing the body) are done, the store's event loop
//! turning all the while.

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime::component::Accessor;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3;

use crate::sandbox::GuestState;
use crate::sandbox::failure::{GuestFailure, failure};

/// What the guest answered: its response, or the `wasi:http` error code it set instead.
pub type Answer = Result<http::Response<HyperOutgoingBody>, String>;

/// Calls `proxy`'s handler on `request`, sending what it answers to `answer` when it does.
/// Returns once the guest's work has ended, or with why it failed.
pub async fn call(
    store: &mut Store<GuestState>,
    proxy: &Proxy,
    request: http::Request<Full<Bytes>>,
    answer: oneshot::Sender<Answer>,
) -> Result<(), GuestFailure> {
    match proxy {
        Proxy::P2(proxy) => {
            let mut http = store.data_mut().http();
            let request =
                http.new_incoming_request(Scheme::Http, request).map_err(GuestFailure::BadRequest)?;
            let outparam = http
                .new_response_outparam_from_callback(move |answered| {
                    let _ = answer.send(answered.map_err(|code| format!("{code:?}")));
                })
                .map_err(GuestFailure::BadRequest)?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut *store, request, outparam)
                .await
                .map_err(failure)
        }
        Proxy::P3(service) => {
            let served = store
                .run_concurrent(async move |accessor| serve_p3(accessor, service, request, answer).await);
            served.await.map_err(failure)?
        }
    }
}

/// A 0.3 call, inside the store's event loop.
async fn serve_p3(
    accessor: &Accessor<GuestState>,
    service: &p3::bindings::Service,
    request: http::Request<Full<Bytes>>,
    answer: oneshot::Sender<Answer>,
) -> Result<(), GuestFailure> {
    let (request, request_io) =
        accessor.with(|mut access| p3::Request::from_http(access.data_mut().http().hooks, request));
    let response = match service.handle(accessor, request).await.map_err(failure)? {
        Ok(response) => response,
        Err(code) => {
            let _ = answer.send(Err(format!("{code:?}")));
            return Ok(());
        }
    };
    let response =
        accessor.with(|mut access| response.into_http(&mut access, request_io)).map_err(failure)?;
    let _ = answer.send(Ok(response));
    // The guest goes on in tasks of its own (writing the body) after returning its response:
    // its work ends when they do.
    std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
    Ok(())
}
