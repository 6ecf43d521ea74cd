//! What the ext_proc leg asks the pipeline about an answer or a body it is applying a decision
//! to: which listed tools and models the principal may see, whether the tool calls a model
//! emitted may run, and the record that denied tools were stripped. Each writes a record with
//! the request's decision id, so the request and what became of its answer read as one.

use super::*;

impl<E: PolicyEngine> Pipeline<E> {
    /// Which of the tools a `tools/list` answer names the principal may not see. Judged with
    /// the visibility action and empty arguments; one Cerbos call per answer; logged as the
    /// `response` phase of the request's decision.
    pub async fn hidden_tools(
        &self,
        handoff: &Handoff,
        path: &str,
        tools: &[String],
    ) -> Result<Vec<String>, DecideError> {
        let Some(list) = &handoff.tools_list else {
            return Ok(Vec::new());
        };
        let checks = self
            .vocabulary
            .tool_visibility_checks(&list.server, &list.kind, tools);
        self.hide(handoff, path, checks, Format::Mcp, "tools/list")
            .await
    }

    /// Which of the models a model listing names the principal may not invoke.
    pub async fn hidden_models(
        &self,
        handoff: &Handoff,
        path: &str,
        models: &[String],
    ) -> Result<Vec<String>, DecideError> {
        let Some(route) = &handoff.models_list else {
            return Ok(Vec::new());
        };
        let checks = self
            .vocabulary
            .model_checks(route, Format::OpenaiModels, models);
        self.hide(
            handoff,
            path,
            checks,
            Format::OpenaiModels,
            "the model list",
        )
        .await
    }

    /// Judges the tool calls of one model answer in one Cerbos request (phase `response` of
    /// the request's decision). For each call, in order: `None` when it may be released, or
    /// why not. Arguments that cannot be read are refused without asking; when Cerbos cannot
    /// answer, every call is refused (withheld, never released unjudged).
    pub async fn judge_tool_calls(
        &self,
        handoff: &Handoff,
        path: &str,
        calls: &[ToolCall],
    ) -> Vec<Option<String>> {
        let started = Instant::now();
        let principal = SharedPrincipal::new(Principal::from(handoff.principal.clone()));
        let model = handoff.judge_tool_calls.clone().unwrap_or_default();
        let format = handoff.format.unwrap_or(Format::OpenaiChat);
        let mut refusals: Vec<Option<String>> = Vec::with_capacity(calls.len());
        let mut checks = Vec::new();
        let mut unread = Vec::new();
        for call in calls {
            let arguments = call
                .arguments
                .as_ref()
                .map_or_else(|_| Map::new(), Clone::clone);
            let mut check = self
                .vocabulary
                .model_tool_call_check(&model, format, &call.name, &call.kind, arguments);
            if let Some(arguments) = check.attr.get_mut("arguments") {
                self.redaction.arguments(arguments);
            }
            match &call.arguments {
                Ok(_) => checks.push(check),
                Err(why) => unread.push(crate::decide::Verdict {
                    check: check.into(),
                    effect: crate::decide::Effect::Deny,
                    policy: None,
                    outputs: vec![("agent-authz".to_owned(), Value::String(why.clone()))],
                    derived_roles: Vec::new(),
                }),
            }
        }
        let asked = if checks.is_empty() {
            Ok(Decision::default())
        } else {
            self.ask(&principal, checks, &handoff.request_id).await
        };
        let mut record = leg_record(handoff, "response", path, Some(format));
        record.principal = Some(PrincipalRecord::from(principal));
        record.method = "POST".to_owned();
        record.model = Some(model);
        let mut verdicts = Vec::new();
        match asked {
            Ok(decision) => {
                record.cerbos_call_ids = decision.call_ids;
                let mut asked = decision.verdicts.into_iter();
                let mut unread = unread.into_iter();
                for call in calls {
                    let verdict = if call.arguments.is_ok() {
                        asked.next()
                    } else {
                        unread.next()
                    };
                    let Some(verdict) = verdict else {
                        refusals.push(Some("no decision for it".to_owned()));
                        continue;
                    };
                    refusals.push((!verdict.effect.allows()).then(|| verdict.reason()));
                    verdicts.push(verdict);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "tool calls withheld: the policy service did not answer");
                record.effect = "deny";
                refusals = vec![
                    Some(
                        "the policy service could not be reached, so it was withheld".to_owned()
                    );
                    calls.len()
                ];
            }
        }
        let refused: Vec<String> = calls
            .iter()
            .zip(&refusals)
            .filter(|(_, r)| r.is_some())
            .map(|(c, _)| c.name.clone())
            .collect();
        record.reason = match (record.effect, refused.is_empty()) {
            ("deny", _) => "tool calls withheld: the policy service did not answer".to_owned(),
            (_, true) => "every tool call in the answer is allowed".to_owned(),
            (_, false) => format!(
                "tool calls withheld from the answer: {}",
                refused.join(", ")
            ),
        };
        if !refused.is_empty() {
            record.effect = "deny";
        }
        record.resources = Resources::of(verdicts, None);
        record.denied_tools = refused.clone();
        record.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.audit.write(record);
        self.metrics.count_removed("tool_call", refused.len());
        refusals
    }

    pub fn denied_tool_call(&self) -> DeniedToolCall {
        self.denied_tool_call
    }

    /// Records that the ext_proc leg removed the denied tools ext_authz named (phase `strip`,
    /// same decision id): the request record says what must be stripped, this one that it
    /// was, and by whom.
    pub fn confirm_strip(&self, handoff: &Handoff, path: &str) {
        let principal = Principal::from(handoff.principal.clone());
        let mut record = leg_record(handoff, "strip", path, handoff.format);
        record.reason = format!(
            "denied tools stripped by ext_proc: {}",
            handoff.strip_tools.join(", ")
        );
        record.principal = Some(PrincipalRecord::from(principal));
        record.method = "POST".to_owned();
        record.denied_tools = handoff.strip_tools.clone();
        self.audit.write(record);
    }

    /// Asks about every listed item at once and logs what is hidden from the answer.
    async fn hide(
        &self,
        handoff: &Handoff,
        path: &str,
        checks: Vec<crate::decide::ResourceCheck>,
        format: Format,
        listing: &str,
    ) -> Result<Vec<String>, DecideError> {
        let started = Instant::now();
        let principal = SharedPrincipal::new(Principal::from(handoff.principal.clone()));
        let decision = self.ask(&principal, checks, &handoff.request_id).await?;
        let hidden: Vec<String> = decision
            .verdicts
            .iter()
            .filter(|v| !v.effect.allows())
            .map(|v| v.check.id.clone())
            .collect();
        let mut record = leg_record(handoff, "response", path, Some(format));
        record.reason = if hidden.is_empty() {
            format!("everything in {listing} is visible")
        } else {
            format!("hidden from {listing}: {}", hidden.join(", "))
        };
        record.principal = Some(PrincipalRecord::from(principal));
        record.method = if format == Format::Mcp { "POST" } else { "GET" }.to_owned();
        record.resources = Resources::of(decision.verdicts, decision.shared_records);
        record.hidden = hidden.clone();
        record.cerbos_call_ids = decision.call_ids;
        record.cerbos_ms = decision.engine_ms;
        record.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.audit.write(record);
        self.metrics.count_removed("hide", hidden.len());
        Ok(hidden)
    }

    /// The decision records written so far (tests use an in-memory log).
    #[cfg(test)]
    pub fn audit_lines(&self) -> Vec<Value> {
        self.audit.lines()
    }

    pub fn max_list_response_bytes(&self) -> usize {
        self.max_list_response_bytes
    }
}

/// A record of the ext_proc leg applying the decision `handoff` carries (same decision id).
fn leg_record(
    handoff: &Handoff,
    phase: &'static str,
    path: &str,
    format: Option<Format>,
) -> DecisionRecord {
    DecisionRecord {
        time: now_rfc3339(),
        phase,
        decision_id: handoff.decision_id.clone(),
        request_id: handoff.request_id.clone(),
        trace_id: None,
        effect: "allow",
        dry_run: false,
        status: 200,
        reason: String::new(),
        refusal: None,
        principal: None,
        method: String::new(),
        path: path.to_owned(),
        route: None,
        format: format.map(Format::as_str),
        model: None,
        resources: Resources::default(),
        allowed_tools: AllowedTools::default(),
        denied_tools: Vec::new(),
        hidden: Vec::new(),
        cerbos_call_ids: Vec::new(),
        cerbos_ms: None,
        latency_ms: 0.0,
    }
}
