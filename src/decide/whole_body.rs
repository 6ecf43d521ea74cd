//! The gRPC channel to Cerbos, sending each request body as one complete chunk.
//!
//! tonic streams even a unary request's body: hyper cannot know the message is the last one,
//! so it wrote the request as three frames in three system calls (headers, the message, then
//! an empty end-of-stream frame). Each write on loopback also runs the receiver's network
//! stack, so on the decision path that showed as a measurable share of the service's CPU.
//! A body whose end is known goes out as the message frame flagged end-of-stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A [`Channel`] whose request bodies are collected before sending.
#[derive(Clone)]
pub struct WholeBodyChannel(Channel);

impl WholeBodyChannel {
    pub fn new(channel: Channel) -> Self {
        Self(channel)
    }
}

impl Service<http::Request<Body>> for WholeBodyChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The instance polled ready is the one that must be called; a fresh clone stays behind.
        let fresh = self.0.clone();
        let mut ready = std::mem::replace(&mut self.0, fresh);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // A unary request's body is already encoded in memory: collecting it only waits
            // for the encoder, it does not copy the message.
            let whole = body.collect().await?.to_bytes();
            let request = http::Request::from_parts(parts, Body::new(Full::new(whole)));
            ready.call(request).await.map_err(Into::into)
        })
    }
}
