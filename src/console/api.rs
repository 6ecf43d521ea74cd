//! The console's JSON API under `/api/v1/`: `decisions` (filtered, newest first, paged by
//! cursor), `decisions/{decision_id}` (the request record and any response-phase record),
//! `decisions/stream` (Server-Sent Events of new records) and `overview` (aggregates for the
//! charts). Every handler authorises the viewer first ([`super::auth`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::auth::{Denied, authorize};
use super::filter::Filter;
use super::ring::{Entry, Ring};
use crate::audit::DecisionRecord;
use crate::decide::PolicyEngine;
use crate::reload::Current;

/// A live stream ends after this long; the browser reconnects, which authorises the viewer
/// again (an expired token or a changed policy takes effect).
const STREAM_LIFETIME: Duration = Duration::from_secs(300);

pub struct Console<E> {
    pub current: Arc<Current<E>>,
    pub ring: Arc<Ring>,
}

impl<E> Clone for Console<E> {
    fn clone(&self) -> Self {
        Console {
            current: Arc::clone(&self.current),
            ring: Arc::clone(&self.ring),
        }
    }
}

pub fn router<E: PolicyEngine>(console: Console<E>) -> Router {
    Router::new()
        .route("/api/v1/decisions", get(list::<E>))
        .route("/api/v1/decisions/stream", get(stream::<E>))
        .route("/api/v1/decisions/{decision_id}", get(one::<E>))
        .route("/api/v1/overview", get(overview::<E>))
        .with_state(console)
}

/// Decisions are audit data: no cache may keep them.
pub fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// A record as the API shows it: the decision record plus its position in the ring.
#[derive(Serialize)]
pub struct Item<'a> {
    pub seq: u64,
    #[serde(flatten)]
    pub record: &'a DecisionRecord,
}

impl<'a> From<&'a Entry> for Item<'a> {
    fn from(entry: &'a Entry) -> Self {
        Item {
            seq: entry.seq,
            record: &entry.record,
        }
    }
}

#[derive(Serialize)]
struct Page<'a> {
    decisions: Vec<Item<'a>>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Authorises the viewer, then reads the filter (so a stranger learns nothing, not even
/// which filters are wrong).
async fn admit<E: PolicyEngine>(
    console: &Console<E>,
    headers: &HeaderMap,
    query: Result<Query<Filter>, QueryRejection>,
) -> Result<Filter, Denied> {
    authorize(&console.current.get(), headers).await?;
    query
        .map(|q| q.0)
        .map_err(|e| Denied::BadRequest(e.body_text()))
}

async fn list<E: PolicyEngine>(
    State(console): State<Console<E>>,
    headers: HeaderMap,
    query: Result<Query<Filter>, QueryRejection>,
) -> Result<Response, Denied> {
    let filter = admit(&console, &headers, query).await?;
    let matcher = filter.matcher().map_err(|e| Denied::BadRequest(e.0))?;
    let before = filter.before().map_err(|e| Denied::BadRequest(e.0))?;
    let limit = filter.limit();
    let entries = console.ring.snapshot();
    let mut hits = entries
        .iter()
        .rev()
        .filter(|e| before.is_none_or(|b| e.seq < b))
        .filter(|e| matcher.matches(e));
    let decisions: Vec<Item> = hits
        .by_ref()
        .take(limit)
        .map(|e| Item::from(&**e))
        .collect();
    let next_cursor = match (hits.next(), decisions.last()) {
        (Some(_), Some(last)) => Some(last.seq.to_string()),
        _ => None,
    };
    Ok((
        no_store(),
        Json(Page {
            decisions,
            next_cursor,
        }),
    )
        .into_response())
}

async fn one<E: PolicyEngine>(
    State(console): State<Console<E>>,
    headers: HeaderMap,
    Path(decision_id): Path<String>,
) -> Result<Response, Denied> {
    authorize(&console.current.get(), &headers).await?;
    let entries = console.ring.snapshot();
    let records: Vec<Item> = entries
        .iter()
        .filter(|e| e.record.decision_id == decision_id)
        .map(|e| Item::from(&**e))
        .collect();
    if records.is_empty() {
        let error = format!("no decision {decision_id} among the records kept (console.retain)");
        return Ok((
            StatusCode::NOT_FOUND,
            no_store(),
            Json(serde_json::json!({ "error": error })),
        )
            .into_response());
    }
    Ok((
        no_store(),
        Json(serde_json::json!({ "decision_id": decision_id, "records": records })),
    )
        .into_response())
}

async fn stream<E: PolicyEngine>(
    State(console): State<Console<E>>,
    headers: HeaderMap,
    query: Result<Query<Filter>, QueryRejection>,
) -> Result<Response, Denied> {
    let filter = admit(&console, &headers, query).await?;
    let matcher = filter.matcher().map_err(|e| Denied::BadRequest(e.0))?;
    let ring = Arc::clone(&console.ring);
    let events = futures_util::stream::unfold(
        (console.ring.subscribe(), matcher, ring),
        |(mut live, matcher, ring)| async move {
            loop {
                let event = match live.recv().await {
                    Ok(entry) if matcher.matches(&entry) => Event::default()
                        .event("decision")
                        .id(entry.seq.to_string())
                        .json_data(Item::from(&*entry)),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        ring.skipped(n);
                        Ok(Event::default().event("skipped").data(n.to_string()))
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((event, (live, matcher, ring)));
            }
        },
    )
    .take_until(tokio::time::sleep(STREAM_LIFETIME));
    Ok((
        no_store(),
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response())
}

async fn overview<E: PolicyEngine>(
    State(console): State<Console<E>>,
    headers: HeaderMap,
    query: Result<Query<Filter>, QueryRejection>,
) -> Result<Response, Denied> {
    let filter = admit(&console, &headers, query).await?;
    let matcher = filter.matcher().map_err(|e| Denied::BadRequest(e.0))?;
    let entries = console.ring.snapshot();
    let chosen = entries.iter().filter(|e| matcher.matches(e)).map(|e| &**e);
    let now_ms = super::ring::unix_millis(&crate::audit::now_rfc3339());
    Ok((
        no_store(),
        Json(super::overview::Overview::of(chosen, now_ms)),
    )
        .into_response())
}
