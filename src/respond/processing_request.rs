//! The ext_proc gRPC service, decoding only what agent-authz reads of Envoy's
//! `ProcessingRequest`.
//!
//! envoy-types' generated `ProcessingRequest` decodes every body chunk into a fresh `Vec<u8>`:
//! a copy of each buffered request body (up to `server.max_request_bytes`) and of each response
//! chunk, made while the gRPC message buffer still holds it, and made even when the body is
//! passed through untouched (most requests: nothing to strip). The messages below mirror the
//! wire format (same field numbers) for the fields agent-authz uses; a body is `Bytes`, a view
//! of the received message, and the fields not listed (attributes, protocol configuration,
//! flow control, trailers' contents) are skipped without being built.
//!
//! The service itself is what tonic would generate for `envoy.service.ext_proc.v3.
//! ExternalProcessor` with this request type; it answers with envoy-types'
//! `ProcessingResponse`.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingResponse};
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBodyTrait, BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

use super::ext_proc;
use crate::decide::PolicyEngine;
use crate::reload::Current;

/// `envoy.service.ext_proc.v3.ProcessingRequest`, as far as agent-authz reads it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessingRequest {
    #[prost(oneof = "Phase", tags = "2, 3, 4, 5, 6, 7")]
    pub request: Option<Phase>,
    #[prost(message, optional, tag = "8")]
    pub metadata_context: Option<Metadata>,
}

/// `ProcessingRequest.request`: which part of the HTTP exchange this message carries.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Phase {
    #[prost(message, tag = "2")]
    RequestHeaders(HttpHeaders),
    #[prost(message, tag = "3")]
    ResponseHeaders(HttpHeaders),
    #[prost(message, tag = "4")]
    RequestBody(HttpBody),
    #[prost(message, tag = "5")]
    ResponseBody(HttpBody),
    #[prost(message, tag = "6")]
    RequestTrailers(Trailers),
    #[prost(message, tag = "7")]
    ResponseTrailers(Trailers),
}

/// `envoy.service.ext_proc.v3.HttpBody`: a chunk (or, buffered, all) of a body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpBody {
    #[prost(bytes = "bytes", tag = "1")]
    pub body: Bytes,
    #[prost(bool, tag = "2")]
    pub end_of_stream: bool,
}

/// `envoy.service.ext_proc.v3.HttpTrailers`: passed through, never read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Trailers {}

/// The `ExternalProcessor` gRPC service over the running pipeline.
pub struct ExtProcServer<E> {
    current: Arc<Current<E>>,
    max_decoding_message_size: usize,
}

impl<E> ExtProcServer<E> {
    /// `max_decoding_message_size`: the largest `ProcessingRequest` accepted.
    pub fn new(current: Arc<Current<E>>, max_decoding_message_size: usize) -> Self {
        Self {
            current,
            max_decoding_message_size,
        }
    }
}

impl<E> Clone for ExtProcServer<E> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
            max_decoding_message_size: self.max_decoding_message_size,
        }
    }
}

impl<E> NamedService for ExtProcServer<E> {
    const NAME: &'static str = "envoy.service.ext_proc.v3.ExternalProcessor";
}

/// One `Process` stream.
struct Process<E>(Arc<Current<E>>);

impl<E: PolicyEngine> StreamingService<ProcessingRequest> for Process<E> {
    type Response = ProcessingResponse;
    type ResponseStream = ReceiverStream<Result<ProcessingResponse, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<ProcessingRequest>>) -> Self::Future {
        let current = Arc::clone(&self.0);
        Box::pin(async move { Ok(ext_proc::process(&current, request.into_inner())) })
    }
}

impl<E, B> tonic::codegen::Service<http::Request<B>> for ExtProcServer<E>
where
    E: PolicyEngine,
    B: HttpBodyTrait + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != "/envoy.service.ext_proc.v3.ExternalProcessor/Process" {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let process = Process(Arc::clone(&self.current));
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc =
                Grpc::new(ProstCodec::<ProcessingResponse, ProcessingRequest>::default())
                    .apply_max_message_size_config(Some(limit), None);
            Ok(grpc.streaming(process, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::ext_proc::v3 as full;
    use prost::Message;

    use super::*;

    /// Envoy's full message, encoded, reads back the same through the lean types.
    #[test]
    fn decodes_what_envoy_encodes() {
        let message = full::ProcessingRequest {
            request: Some(full::processing_request::Request::RequestBody(
                full::HttpBody {
                    body: b"{\"model\":\"m\"}".to_vec(),
                    end_of_stream: true,
                    ..Default::default()
                },
            )),
            metadata_context: Some(Metadata::default()),
            observability_mode: true,
            ..Default::default()
        };
        let lean = ProcessingRequest::decode(message.encode_to_vec().as_slice()).unwrap();
        let Some(Phase::RequestBody(body)) = lean.request else {
            panic!("not a request body: {lean:?}")
        };
        assert_eq!(&body.body[..], b"{\"model\":\"m\"}");
        assert!(body.end_of_stream);
        assert!(lean.metadata_context.is_some());
    }
}
