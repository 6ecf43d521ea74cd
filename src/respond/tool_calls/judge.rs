//! The leg's side of judging: reads an answer in the shape it arrived in, asks the pipeline
//! about the calls it completes, and hands back the bytes to pass on.

use super::bedrock_converse::ConverseStream;
use super::{
    AnswerError, DeniedToolCall, Flow, Format, JsonAnswer, Refusals, StreamAnswer, ToolCall,
};

/// An answer the leg cannot read for tool calls (a type no reader reads, or a format's
/// stream it has no reader for): it is not passed on, since its calls would go unjudged.
#[derive(Debug)]
pub struct Unread {
    pub format: Format,
    pub content_type: String,
}

/// The answer of an exchange whose tool calls are judged, in the shape it arrived in.
pub enum Judged {
    Json(Option<JsonAnswer>),
    Stream(StreamAnswer),
    /// AWS event-stream framing (Bedrock ConverseStream).
    EventStream(ConverseStream),
}

impl Judged {
    /// The reader for a successful answer of `content_type` (lower-cased) in `format`.
    pub fn new(
        format: Format,
        content_type: &str,
        limit: usize,
        denied: DeniedToolCall,
    ) -> Result<Self, Unread> {
        let unread = || Unread {
            format,
            content_type: content_type.to_owned(),
        };
        if content_type.starts_with("application/json") {
            Ok(Judged::Json(Some(JsonAnswer::new(format, limit))))
        } else if content_type.starts_with("text/event-stream") {
            StreamAnswer::new(format, limit, denied)
                .map(Judged::Stream)
                .ok_or_else(unread)
        } else if content_type.starts_with("application/vnd.amazon.eventstream")
            && format == Format::BedrockConverse
        {
            Ok(Judged::EventStream(ConverseStream::new(limit, denied)))
        } else {
            Err(unread())
        }
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
            Judged::EventStream(answer) => {
                let mut out = Vec::new();
                let mut names = Vec::new();
                for frame in answer.frames(chunk, end_of_stream)? {
                    let flow = answer.push(frame)?;
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
        answer: &mut impl HeldCalls,
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

/// A stream reader holding calls until they are judged.
trait HeldCalls {
    fn pending(&self) -> Vec<ToolCall>;
    fn release(&mut self, refusals: &Refusals) -> Vec<u8>;
}

impl HeldCalls for StreamAnswer {
    fn pending(&self) -> Vec<ToolCall> {
        StreamAnswer::pending(self)
    }
    fn release(&mut self, refusals: &Refusals) -> Vec<u8> {
        StreamAnswer::release(self, refusals)
    }
}

impl HeldCalls for ConverseStream {
    fn pending(&self) -> Vec<ToolCall> {
        ConverseStream::pending(self)
    }
    fn release(&mut self, refusals: &Refusals) -> Vec<u8> {
        ConverseStream::release(self, refusals)
    }
}
