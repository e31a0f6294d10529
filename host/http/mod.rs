//! The HTTP layer, the top of the request flow: `server` is the front door of every listener
//! (connection caps and timeouts, over TLS with `tls`), and puts in each request the
//! `client` it came from; `router` dispatches each request to health, metrics, the front
//! page (`index`), a guest route or the Open Inference Protocol (`oip`, with the model
//! repository calls in `repository`) once `tenancy` has let its tenant in, telling a guest where
//! its route is mounted (`mount`); `credentials`
//! reads bearer tokens and checks the admin token; `body` reads request bodies against the
//! node's memory budget; `response` writes what the host answers itself (JSON errors
//! included) and keeps answers charged until handed to the connection. `admin` answers the
//! admin listener: deploys, rollbacks, uploads; `grpc` serves the Open Inference Protocol
//! over gRPC on its own listener. REST, gRPC and the front page share `protocol`: the
//! failures they answer, and the models as the protocol describes them.

pub mod admin;
pub mod body;
pub mod client;
pub mod credentials;
pub mod grpc;
pub mod index;
pub mod mount;
pub mod oip;
pub mod protocol;
pub mod repository;
pub mod response;
pub mod router;
pub mod server;
pub mod tenancy;
pub mod tls;
