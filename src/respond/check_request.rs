//! The ext_authz gRPC service, decoding only what agent-authz reads of Envoy's `CheckRequest`.
//!
//! envoy-types' generated `CheckRequest` decodes every field, and its `raw_body` into a fresh
//! `Vec<u8>`: a second copy of every request body, made while the first (the gRPC message
//! buffer) is still alive. Under 64 concurrent 1 MiB bodies that copy alone was 64 MiB of
//! peak memory, and on large bodies the copy was a fifth of the CPU. The messages below mirror
//! the wire format (same field numbers) for the fields agent-authz uses; `raw_body` is
//! `Bytes`, a view of the received message, and the fields not listed here are skipped
//! without being built.
//!
//! The service itself is what tonic would generate for `envoy.service.auth.v3.Authorization`
//! with this request type; it answers with envoy-types' `CheckResponse`.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, Metadata};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{Body as HttpBody, BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::ext_authz::{decode, encode};
use crate::decide::PolicyEngine;
use crate::reload::Current;

/// `envoy.service.auth.v3.CheckRequest`, as far as agent-authz reads it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`: the caller, the request, Envoy's metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    #[prost(map = "string, string", tag = "10")]
    pub context_extensions: HashMap<String, String>,
    #[prost(message, optional, tag = "11")]
    pub metadata_context: Option<Metadata>,
}

/// `AttributeContext.Peer`: only the principal (the mTLS identity Envoy verified).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(string, tag = "4")]
    pub principal: String,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    /// `headers`, a proto map: on the wire, one key/value entry message per header. Read as
    /// the entries they are, in wire order ([`super::ext_authz::decode`] builds the map, sized
    /// once): prost's map decoding grew the map, rehashing every header again as it did.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<HeaderEntry>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "11")]
    pub body: String,
    #[prost(bytes = "bytes", tag = "12")]
    pub raw_body: Bytes,
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// One entry of the `headers` map, as a proto map puts it on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The `Authorization` gRPC service over the running pipeline.
pub struct ExtAuthzServer<E> {
    current: Arc<Current<E>>,
    max_decoding_message_size: usize,
}

impl<E> ExtAuthzServer<E> {
    /// `max_decoding_message_size`: the largest `CheckRequest` accepted (body plus headers).
    pub fn new(current: Arc<Current<E>>, max_decoding_message_size: usize) -> Self {
        Self {
            current,
            max_decoding_message_size,
        }
    }
}

impl<E> Clone for ExtAuthzServer<E> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
            max_decoding_message_size: self.max_decoding_message_size,
        }
    }
}

impl<E> NamedService for ExtAuthzServer<E> {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

/// One `Check` call.
struct Check<E>(Arc<Current<E>>);

impl<E: PolicyEngine> UnaryService<CheckRequest> for Check<E> {
    type Response = CheckResponse;
    type Future = BoxFuture<tonic::Response<CheckResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        let current = Arc::clone(&self.0);
        Box::pin(async move {
            let input = decode(request.into_inner());
            let outcome = current.get().check(input).await;
            Ok(tonic::Response::new(encode(outcome)))
        })
    }
}

impl<E, B> tonic::codegen::Service<http::Request<B>> for ExtAuthzServer<E>
where
    E: PolicyEngine,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != "/envoy.service.auth.v3.Authorization/Check" {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        let check = Check(Arc::clone(&self.current));
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = Grpc::new(CheckCodec).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(check, request).await)
        })
    }
}

/// Prost's codec with a larger receive buffer. tonic starts each request's buffer at 8 KiB,
/// grows it to fit each HTTP/2 frame, and once the gRPC header has arrived reserves the
/// message length *on top of* what it already holds: a 16 KiB chat body was copied twice while
/// the buffer grew (measured: ~4 % of a hot-cache check's instructions). 64 KiB holds Envoy's
/// first 16 KiB frame plus the reservation for messages up to ~48 KiB; larger ones grow once.
struct CheckCodec;

/// Initial receive buffer per `Check` (freed when the check is answered).
const RECEIVE_BUFFER: usize = 64 * 1024;

impl Codec for CheckCodec {
    type Encode = CheckResponse;
    type Decode = CheckRequest;
    type Encoder = ProstEncoder<CheckResponse>;
    type Decoder = ProstDecoder<CheckRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        // The second setting (when an encoder yields) does not apply to decoding.
        ProstDecoder::new(BufferSettings::new(RECEIVE_BUFFER, RECEIVE_BUFFER))
    }
}
