//! Identical questions in flight at once share one Cerbos call: when many agents (or one
//! agent's parallel turns) send the same request together, and the verdict cache is off or
//! does not hold it yet, Cerbos is asked once and every request gets that answer.
//!
//! Sharing is keyed on the whole question ([`Question`]: policy version and scope, the
//! principal as sent, every resource check in order), so a call is
//! only ever shared by requests asking exactly the same thing. Every request waiting gets
//! the call's result, errors included. The call is driven by whichever of its requests is
//! still waiting: when Envoy cancels the request that started it (tonic drops its future),
//! the others carry on; when the last one is dropped, so is the call. At most
//! [`MAX_SHARED_CALLS`] calls are shared at once; past that, requests ask on their own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::question::Question;
use super::{DecideError, Decision};

/// Shared calls at most: one per distinct question in flight.
pub const MAX_SHARED_CALLS: usize = 4096;

type Answer = Result<Arc<Decision>, DecideError>;
type Call = Shared<BoxFuture<'static, Answer>>;

fn ask_once<F>(ask: impl FnOnce() -> F) -> Call
where
    F: Future<Output = Result<Decision, DecideError>> + Send + 'static,
{
    ask().map(|answer| answer.map(Arc::new)).boxed().shared()
}

/// The questions being asked right now.
#[derive(Default)]
pub struct InFlight {
    calls: Mutex<HashMap<Arc<Question>, Call>>,
}

impl InFlight {
    /// The answer to the question `key`: from the call in flight for it, or from `ask()`,
    /// which later identical questions then share.
    pub async fn share<F>(&self, key: Arc<Question>, ask: impl FnOnce() -> F) -> Answer
    where
        F: Future<Output = Result<Decision, DecideError>> + Send + 'static,
    {
        let call = self.join(&key, || ask_once(ask));
        Waiting::new(self, key, call).await
    }

    /// The call in flight for `key`, or a new one from `start`, listed for later identical
    /// questions unless too many are listed (then it is this request's alone).
    fn join(&self, key: &Arc<Question>, start: impl FnOnce() -> Call) -> Call {
        let Ok(mut calls) = self.calls.lock() else {
            return start();
        };
        if let Some(call) = calls.get(key) {
            return call.clone();
        }
        let call = start();
        if calls.len() < MAX_SHARED_CALLS {
            calls.insert(Arc::clone(key), call.clone());
        }
        call
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// One request waiting for a shared call. When it stops waiting, answered or cancelled, the
/// call leaves the table if it is finished (a later question must ask again) or nobody else
/// waits for it (dropping the table's handle then drops the call).
struct Waiting<'a> {
    in_flight: &'a InFlight,
    key: Arc<Question>,
    call: Call,
    answered: bool,
}

impl<'a> Waiting<'a> {
    fn new(in_flight: &'a InFlight, key: Arc<Question>, call: Call) -> Self {
        Waiting {
            in_flight,
            key,
            call,
            answered: false,
        }
    }
}

impl Future for Waiting<'_> {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let answer = std::task::ready!(Pin::new(&mut self.call).poll(cx));
        self.answered = true;
        Poll::Ready(answer)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Ok(mut calls) = self.in_flight.calls.lock() else {
            return;
        };
        let Some(listed) = calls.get(&self.key) else {
            return;
        };
        let leave = if self.answered {
            // (A handle that gave its answer is spent: look at the table's.)
            listed.peek().is_some()
        } else {
            // The table's handle and this one: any more is another waiting request.
            listed.ptr_eq(&self.call) && self.call.strong_count() == Some(2)
        };
        if leave {
            calls.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// A Cerbos stand-in that counts its calls and answers when told to.
    #[derive(Default)]
    struct Gate {
        calls: AtomicUsize,
        open: Notify,
    }

    fn ask(
        gate: &Arc<Gate>,
        answer: Result<Decision, DecideError>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Decision, DecideError>> {
        let gate = Arc::clone(gate);
        move || {
            async move {
                gate.calls.fetch_add(1, Ordering::SeqCst);
                gate.open.notified().await;
                answer
            }
            .boxed()
        }
    }

    fn key(text: &str) -> Arc<Question> {
        Question::of_text(text)
    }

    fn decision(call_id: &str) -> Decision {
        Decision {
            call_ids: vec![call_id.into()],
            ..Decision::default()
        }
    }

    /// A request asking `question` through `in_flight`, answered `answer` when the gate opens
    /// (if its call is the one made).
    fn request(
        in_flight: &Arc<InFlight>,
        gate: &Arc<Gate>,
        question: &str,
        answer: Result<Decision, DecideError>,
    ) -> tokio::task::JoinHandle<Answer> {
        let (in_flight, gate, question) = (Arc::clone(in_flight), Arc::clone(gate), key(question));
        tokio::spawn(async move { in_flight.share(question, ask(&gate, answer)).await })
    }

    /// Lets the spawned requests reach their await.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn identical_questions_share_one_call_and_its_answer() {
        let in_flight = Arc::new(InFlight::default());
        let gate = Arc::new(Gate::default());
        let mut waiting = Vec::new();
        for n in 0..3 {
            waiting.push(request(
                &in_flight,
                &gate,
                "q",
                Ok(decision(&format!("call-{n}"))),
            ));
        }
        let other = request(&in_flight, &gate, "other", Ok(decision("other")));
        settle().await;
        assert_eq!(
            gate.calls.load(Ordering::SeqCst),
            2,
            "one call per question"
        );
        gate.open.notify_waiters();
        let mut ids = Vec::new();
        for w in waiting {
            ids.push(w.await.unwrap().unwrap().call_ids[0].clone());
        }
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[1], ids[2]);
        assert_eq!(other.await.unwrap().unwrap().call_ids, ["other"]);
        assert_eq!(in_flight.len(), 0, "finished calls leave the table");
        // Asked again after the answer: a new call.
        let again = request(&in_flight, &gate, "q", Ok(decision("new")));
        settle().await;
        gate.open.notify_waiters();
        assert_eq!(again.await.unwrap().unwrap().call_ids, ["new"]);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_error_reaches_every_waiting_request() {
        let in_flight = Arc::new(InFlight::default());
        let gate = Arc::new(Gate::default());
        let mut waiting = Vec::new();
        for _ in 0..2 {
            waiting.push(request(
                &in_flight,
                &gate,
                "q",
                Err(DecideError::Timeout(5)),
            ));
        }
        settle().await;
        gate.open.notify_waiters();
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap_err(), DecideError::Timeout(5));
        }
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn cancelling_the_request_that_asked_does_not_strand_the_others() {
        let in_flight = Arc::new(InFlight::default());
        let gate = Arc::new(Gate::default());
        let leader = request(&in_flight, &gate, "q", Ok(decision("c")));
        settle().await;
        let follower = request(&in_flight, &gate, "q", Ok(decision("x")));
        settle().await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        assert_eq!(in_flight.len(), 1, "the follower still waits for the call");
        gate.open.notify_waiters();
        let answer = tokio::time::timeout(Duration::from_secs(10), follower)
            .await
            .expect("the follower got an answer")
            .unwrap()
            .unwrap();
        assert_eq!(answer.call_ids, ["c"]);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
        assert_eq!(in_flight.len(), 0);
    }

    #[tokio::test]
    async fn a_call_nobody_waits_for_is_dropped() {
        let in_flight = Arc::new(InFlight::default());
        let gate = Arc::new(Gate::default());
        let only = request(&in_flight, &gate, "q", Ok(decision("c")));
        settle().await;
        only.abort();
        let _ = only.await;
        assert_eq!(in_flight.len(), 0);
        // The next identical question asks anew instead of joining an abandoned call.
        let next = request(&in_flight, &gate, "q", Ok(decision("d")));
        settle().await;
        gate.open.notify_waiters();
        assert_eq!(next.await.unwrap().unwrap().call_ids, ["d"]);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
    }
}
