//! The decision console: who was refused what, and why, on the admin listener.
//!
//! `GET /console` serves a small embedded page ([`page`]); `/api/v1/` serves the decisions
//! ([`api`]) from an in-memory ring of the latest records ([`ring`]), fed by the decision
//! log's writer thread after redaction, so the console shows exactly what the log holds and a
//! viewer never slows a check. Every API request is authorised by Cerbos ([`auth`]).

pub mod api;
pub mod auth;
pub mod filter;
pub mod overview;
pub mod page;
pub mod ring;

use std::sync::Arc;

use axum::Router;

use crate::decide::PolicyEngine;
use crate::reload::Current;

/// The console's routes, to merge into the admin router.
pub fn router<E: PolicyEngine>(current: Arc<Current<E>>, ring: Arc<Ring>) -> Router {
    api::router(api::Console { current, ring }).merge(page::router())
}

pub use ring::Ring;

#[cfg(test)]
mod tests;
