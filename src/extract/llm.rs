//! Pieces every LLM dialect shares: reading the top-level object, the model and tool lists, and
//! cutting tool entries out of the raw body.

use std::ops::Range;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::json_prescan::{KnownValues, NoneKnown};
use super::json_view::{self, Json, Members};
use super::known_tools::KnownTools;
use super::{DeclaredTool, ExtractError, HttpRequest, Reading, json_fields};
use crate::rewrite::json_edit::{self, EditError, Edits, Member};

pub fn invalid(why: &str) -> ExtractError {
    ExtractError::InvalidRequest(why.to_owned())
}

/// The body's members `reading` names (the rest is validated, not copied).
pub fn fields(
    request: &HttpRequest<'_>,
    reading: &Reading<'_>,
) -> Result<Map<String, Value>, ExtractError> {
    fields_with(request, reading, &mut NoneKnown)
}

/// [`fields`], with the members `known` knows whole from earlier bodies built as `null`.
pub fn fields_with(
    request: &HttpRequest<'_>,
    reading: &Reading<'_>,
    known: &mut dyn KnownValues,
) -> Result<Map<String, Value>, ExtractError> {
    json_fields::<Value>(request, reading, known, &mut String::new())?
        .ok_or_else(|| invalid("body must be a JSON object"))
}

/// Like [`fields`], built as a [`json_view::View`]: strings borrowed from the body as
/// compacted into `scratch`, objects without hashing (see `extract/json_view.rs`). The members
/// `known` knows whole are built as `null`.
pub fn view_fields<'b>(
    request: &HttpRequest<'b>,
    reading: &Reading<'_>,
    known: &mut dyn KnownValues,
    scratch: &'b mut String,
) -> Result<json_view::Object<'b>, ExtractError> {
    json_fields::<json_view::View<'b>>(request, reading, known, scratch)?
        .ok_or_else(|| invalid("body must be a JSON object"))
}

/// `model` as a non-empty string.
pub fn model(body: &impl Members) -> Result<String, ExtractError> {
    match body.member("model").and_then(Json::as_str) {
        Some(m) if !m.is_empty() => Ok(m.to_owned()),
        _ => Err(invalid("`model` must be a non-empty string")),
    }
}

/// An optional array field (`null` counts as absent).
pub fn array<'a, M: Members>(body: &'a M, key: &str) -> Result<&'a [M::Value], ExtractError> {
    match body.member(key) {
        None => Ok(&[]),
        Some(v) if v.is_null() => Ok(&[]),
        Some(v) => v
            .as_array()
            .ok_or_else(|| invalid(&format!("`{key}` must be an array"))),
    }
}

/// A non-empty string field of a tool entry.
pub fn name<'a>(entry: &'a Value, key: &str, what: &str) -> Result<&'a str, ExtractError> {
    entry
        .get(key)
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(&format!("{what}: missing {key}")))
}

/// Adds the tools each entry of the `key` array declares (`declared` reads one entry). An
/// entry that cannot be read refuses the request, naming it: a skipped entry would reach the
/// model unjudged.
pub fn add_declared<M: Members, I: IntoIterator<Item = DeclaredTool>>(
    tools: &mut Tools,
    body: &M,
    key: &str,
    declared: impl Fn(&M::Value) -> Result<I, String>,
) -> Result<(), ExtractError> {
    for (i, entry) in array(body, key)?.iter().enumerate() {
        for tool in declared(entry).map_err(|e| invalid(&format!("{key}[{i}]: {e}")))? {
            tools.add(tool);
        }
    }
    Ok(())
}

/// The tools the `tools` array declares (read as [`add_declared`] reads them): the ones read
/// before from the same bytes when `known` knew the array (see `extract/known_tools.rs`), else
/// read now and remembered for an agent's next turn.
pub fn declared_tools<M: Members, I: IntoIterator<Item = DeclaredTool>>(
    known: &mut KnownTools,
    request: &HttpRequest<'_>,
    body: &M,
    declared: impl Fn(&M::Value) -> Result<I, String>,
) -> Result<Arc<[DeclaredTool]>, ExtractError> {
    if let Some(tools) = known.take_known() {
        return Ok(tools);
    }
    let mut tools = Tools::default();
    add_declared(&mut tools, body, "tools", declared)?;
    let tools: Arc<[DeclaredTool]> = tools.0.into();
    known.remember(request.body, &tools);
    Ok(tools)
}

/// Declared tools, unique by key, in request order.
#[derive(Default)]
pub struct Tools(pub Vec<DeclaredTool>);

impl Tools {
    /// Adds a declaration; a tool declared twice is kept once, unstrippable if either
    /// declaration is (removing one copy would leave the other).
    pub fn add(&mut self, tool: DeclaredTool) {
        // A plain tool's key is its name: no key is built for it (one allocation per tool).
        let built;
        let key = match &tool.server {
            None => tool.name.as_str(),
            Some(_) => {
                built = tool.key();
                built.as_str()
            }
        };
        match self.0.iter_mut().find(|t| t.has_key(key)) {
            Some(known) => known.strippable &= tool.strippable,
            None => self.0.push(tool),
        }
    }
}

pub fn parse(body: &[u8], span: &Range<usize>) -> Result<Value, EditError> {
    body.get(span.clone())
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
        .ok_or(EditError(span.start))
}

/// The member `key` of the object at `span`, if present.
pub fn member(body: &[u8], span: Range<usize>, key: &str) -> Result<Option<Member>, EditError> {
    if body.get(span.start) != Some(&b'{') {
        return Ok(None);
    }
    Ok(json_edit::members(body, span)?
        .into_iter()
        .find(|m| m.key == key))
}

/// Deletes the elements of the array at `span` for which `drop` is true. Returns how many
/// elements there were and how many were dropped.
pub fn drop_elements(
    body: &[u8],
    span: &Range<usize>,
    edits: &mut Edits,
    mut drop: impl FnMut(&Value) -> bool,
) -> Result<(usize, usize), EditError> {
    if body.get(span.start) != Some(&b'[') {
        return Ok((0, 0));
    }
    let items = json_edit::elements(body, span.clone())?;
    let mut remove = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if drop(&parse(body, item)?) {
            remove.push(i);
        }
    }
    edits.delete_items(&items, &remove, json_edit::inner(span));
    Ok((items.len(), remove.len()))
}

/// Deletes the named members of the object at `span`.
pub fn drop_members(
    body: &[u8],
    span: &Range<usize>,
    keys: &[&str],
    edits: &mut Edits,
) -> Result<(), EditError> {
    let members = json_edit::members(body, span.clone())?;
    let remove: Vec<usize> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| keys.contains(&m.key.as_str()))
        .map(|(i, _)| i)
        .collect();
    let spans: Vec<Range<usize>> = members.iter().map(|m| m.span.clone()).collect();
    edits.delete_items(&spans, &remove, json_edit::inner(span));
    Ok(())
}

pub fn is_denied(denied: &[String], key: &str) -> bool {
    denied.iter().any(|d| d == key)
}
