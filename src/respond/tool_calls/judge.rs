//! The leg's side of judging: reads an answer in the shape it arrived in, asks the pipeline
//! about the calls it completes, and hands back the bytes to pass on.

use super::{
    AnswerError, DeniedToolCall, Flow, Format, JsonAnswer, Refusals, StreamAnswer, ToolCall,
};

/// A format whose answers the leg cannot read for tool calls.
#[derive(Debug)]
pub struct Unread(pub Format);

/// The answer of an exchange whose tool calls are judged, in the shape it arrived in.
pub enum Judged {
    Json(Option<JsonAnswer>),
    Stream(StreamAnswer),
}

impl Judged {
    /// The reader for an answer of `content_type` (lower-cased) in `format`; `None` for a
    /// shape that carries no tool calls a client reads (an error page, say); `Err` for a
    /// format whose answers cannot be read.
    pub fn new(
        format: Format,
        content_type: &str,
        limit: usize,
        denied: DeniedToolCall,
    ) -> Result<Option<Self>, Unread> {
        let json = content_type.starts_with("application/json");
        let sse = content_type.starts_with("text/event-stream");
        if !json && !sse {
            return Ok(None);
        }
        if !format.reads_tool_calls() {
            return Err(Unread(format));
        }
        Ok(Some(if json {
            Judged::Json(Some(JsonAnswer::new(format, limit)))
        } else {
            Judged::Stream(StreamAnswer::new(format, limit, denied).ok_or(Unread(format))?)
        }))
    }

    /// The bytes to pass on for this chunk of the answer (held parts withheld, judged parts
    /// released), and the names of the calls withheld from it (for Envoy's access log).
    pub async fn chunk<E: crate::decide::PolicyEngine>(
        &mut self,
        pipeline: &crate::pipeline::Pipeline<E>,
        handoff: &crate::handoff::Handoff,
        path: &str,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<(Vec<u8>, Vec<String>), AnswerError> {
        match self {
            Judged::Json(answer) => {
                let Some(held) = answer.as_mut() else {
                    return Ok((chunk.to_vec(), Vec::new()));
                };
                held.push(chunk)?;
                if !end_of_stream {
                    return Ok((Vec::new(), Vec::new()));
                }
                let Some(held) = answer.take() else {
                    return Ok((Vec::new(), Vec::new()));
                };
                let (body, parsed) = held.finish()?;
                let Some(parsed) = parsed.filter(|p| !p.calls.is_empty()) else {
                    return Ok((body, Vec::new()));
                };
                let refusals = pipeline
                    .judge_tool_calls(handoff, path, &parsed.calls)
                    .await;
                let withheld = withheld(&parsed.calls, &refusals);
                if withheld.is_empty() {
                    return Ok((body, withheld));
                }
                Ok((
                    parsed.rewrite(&refusals, pipeline.denied_tool_call()),
                    withheld,
                ))
            }
            Judged::Stream(answer) => {
                let mut out = Vec::new();
                let mut names = Vec::new();
                for event in answer.events(chunk, end_of_stream)? {
                    let flow = answer.push(event)?;
                    Self::settle(answer, flow, pipeline, handoff, path, &mut out, &mut names).await;
                }
                if end_of_stream {
                    let flow = answer.finish();
                    Self::settle(answer, flow, pipeline, handoff, path, &mut out, &mut names).await;
                }
                Ok((out, names))
            }
        }
    }

    async fn settle<E: crate::decide::PolicyEngine>(
        answer: &mut StreamAnswer,
        flow: Flow,
        pipeline: &crate::pipeline::Pipeline<E>,
        handoff: &crate::handoff::Handoff,
        path: &str,
        out: &mut Vec<u8>,
        names: &mut Vec<String>,
    ) {
        match flow {
            Flow::Emit(bytes) => out.extend(bytes),
            Flow::Judge => {
                let calls = answer.pending();
                let refusals = pipeline.judge_tool_calls(handoff, path, &calls).await;
                names.extend(withheld(&calls, &refusals));
                out.extend(answer.release(&refusals));
            }
        }
    }
}

/// The names of the refused calls.
fn withheld(calls: &[ToolCall], refusals: &Refusals) -> Vec<String> {
    calls
        .iter()
        .zip(refusals)
        .filter(|(_, r)| r.is_some())
        .map(|(c, _)| c.name.clone())
        .collect()
}
