//! The resources of a decision record, either built for this record or shared with the
//! request-level cache entry that answered it, serialised once when the entry was made.
//!
//! An agent loop resends the same principal, model and tools every turn: 21 resource records
//! with their attributes are the same each time, and serialising them was ~12 % of a cached
//! check. A request-level cache hit ([`crate::decide::cache`]) hands the record the entry's
//! records and their JSON, so the log writer copies bytes instead. The JSON is made from
//! exactly those records (the same checks, as redacted before they were sent, and the same
//! verdicts), so the line written is the line that building them again would give. The same
//! holds for the record's `allowed_tools` (20 names cloned and escaped every turn otherwise).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::ResourceRecord;
use crate::decide::{Subject, Verdict};

/// Resource records serialised once, shared by every decision they answer.
#[derive(Debug)]
pub struct SharedResources {
    list: Vec<ResourceRecord>,
    json: Box<RawValue>,
    /// The declared tools these verdicts allow, and their JSON.
    allowed_tools: Vec<String>,
    allowed_tools_json: Box<RawValue>,
    /// The decision counters these records add to, each with how many records it counts:
    /// found once (`Pipeline::count` labels and looks them up), then only incremented.
    counters: OnceLock<Vec<(Counter, u64)>>,
}

impl SharedResources {
    /// The records of `verdicts` (cloned: the verdicts still answer the request) and their
    /// JSON.
    pub fn of(verdicts: &[Verdict]) -> Arc<SharedResources> {
        let list: Vec<ResourceRecord> =
            verdicts.iter().cloned().map(ResourceRecord::from).collect();
        let allowed_tools = allowed_tools(verdicts);
        Arc::new(SharedResources {
            json: json_of(&list),
            list,
            allowed_tools_json: json_of(&allowed_tools),
            allowed_tools,
            counters: OnceLock::new(),
        })
    }
}

/// Strings, numbers from JSON, maps with string keys: serialising cannot fail.
fn json_of<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value)
        .unwrap_or_else(|_| RawValue::from_string("[]".to_owned()).expect("valid JSON"))
}

/// The declared tools `verdicts` allow, in their order.
fn allowed_tools(verdicts: &[Verdict]) -> Vec<String> {
    verdicts
        .iter()
        .filter(|v| v.effect.allows())
        .filter_map(|v| match &v.check.subject {
            Subject::Tool(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

impl SharedResources {
    /// The counters these records add to, found by `find` on first use.
    pub fn counters(
        &self,
        find: impl FnOnce(&[ResourceRecord]) -> Vec<(Counter, u64)>,
    ) -> &[(Counter, u64)] {
        self.counters.get_or_init(|| find(&self.list))
    }
}

impl PartialEq for SharedResources {
    fn eq(&self, other: &Self) -> bool {
        self.json.get() == other.json.get()
    }
}

/// A record's resources.
#[derive(Debug, Clone)]
pub enum Resources {
    Owned(Vec<ResourceRecord>),
    Shared(Arc<SharedResources>),
}

impl Resources {
    /// The records of a decision: the shared ones when the cache answered with them (they
    /// describe these verdicts exactly), else built from the verdicts.
    pub fn of(verdicts: Vec<Verdict>, shared: Option<Arc<SharedResources>>) -> Resources {
        match shared {
            Some(shared) => Resources::Shared(shared),
            None => Resources::Owned(verdicts.into_iter().map(ResourceRecord::from).collect()),
        }
    }
}

/// A record's `allowed_tools`: built from its verdicts, or the shared records' (the same
/// verdicts) with their JSON.
#[derive(Debug, Clone)]
pub enum AllowedTools {
    Owned(Vec<String>),
    Shared(Arc<SharedResources>),
}

impl AllowedTools {
    /// The tools `verdicts` allow: the shared records' when the cache answered with them.
    pub fn of(verdicts: &[Verdict], shared: Option<&Arc<SharedResources>>) -> AllowedTools {
        match shared {
            Some(shared) => AllowedTools::Shared(Arc::clone(shared)),
            None => AllowedTools::Owned(allowed_tools(verdicts)),
        }
    }
}

impl Default for AllowedTools {
    fn default() -> Self {
        AllowedTools::Owned(Vec::new())
    }
}

impl From<Vec<String>> for AllowedTools {
    fn from(list: Vec<String>) -> Self {
        AllowedTools::Owned(list)
    }
}

impl Deref for AllowedTools {
    type Target = [String];

    fn deref(&self) -> &[String] {
        match self {
            AllowedTools::Owned(list) => list,
            AllowedTools::Shared(shared) => &shared.allowed_tools,
        }
    }
}

impl Serialize for AllowedTools {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AllowedTools::Owned(list) => list.serialize(serializer),
            AllowedTools::Shared(shared) => shared.allowed_tools_json.serialize(serializer),
        }
    }
}

impl Default for Resources {
    fn default() -> Self {
        Resources::Owned(Vec::new())
    }
}

impl From<Vec<ResourceRecord>> for Resources {
    fn from(list: Vec<ResourceRecord>) -> Self {
        Resources::Owned(list)
    }
}

impl Deref for Resources {
    type Target = Vec<ResourceRecord>;

    fn deref(&self) -> &Vec<ResourceRecord> {
        match self {
            Resources::Owned(list) => list,
            Resources::Shared(shared) => &shared.list,
        }
    }
}

/// Changing shared records makes them this record's own (their JSON no longer describes them).
impl DerefMut for Resources {
    fn deref_mut(&mut self) -> &mut Vec<ResourceRecord> {
        if let Resources::Shared(shared) = self {
            *self = Resources::Owned(shared.list.clone());
        }
        match self {
            Resources::Owned(list) => list,
            Resources::Shared(_) => unreachable!("made owned above"),
        }
    }
}

impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Resources::Owned(list) => list.serialize(serializer),
            Resources::Shared(shared) => shared.json.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::decide::{Effect, ResourceCheck, Subject};

    fn verdicts() -> Vec<Verdict> {
        ["a", "b"]
            .into_iter()
            .map(|id| Verdict {
                check: ResourceCheck {
                    kind: "llm_tool".into(),
                    id: id.into(),
                    action: "expose".into(),
                    attr: json!({"tool_name": id, "n": 1.5})
                        .as_object()
                        .cloned()
                        .unwrap(),
                    subject: Subject::Tool(id.into()),
                }
                .into(),
                effect: if id == "a" {
                    Effect::Allow
                } else {
                    Effect::Deny
                },
                policy: Some("resource.llm_tool.vdefault".into()),
                outputs: vec![("resource.llm_tool.vdefault#r".into(), json!("no"))],
                derived_roles: vec!["owner".into()],
            })
            .collect()
    }

    #[test]
    fn shared_records_serialise_as_the_records_built_again_would() {
        let shared = Resources::of(verdicts(), Some(SharedResources::of(&verdicts())));
        let owned = Resources::of(verdicts(), None);
        assert!(matches!(shared, Resources::Shared(_)));
        assert_eq!(
            serde_json::to_string(&shared).unwrap(),
            serde_json::to_string(&owned).unwrap()
        );
        assert_eq!(shared.len(), 2);
        assert_eq!(shared[1].reason, "no");
    }

    #[test]
    fn shared_allowed_tools_serialise_as_the_list_built_again_would() {
        let shared = SharedResources::of(&verdicts());
        let from_cache = AllowedTools::of(&verdicts(), Some(&shared));
        let built = AllowedTools::of(&verdicts(), None);
        assert!(matches!(from_cache, AllowedTools::Shared(_)));
        assert_eq!(&*from_cache, ["a".to_owned()]);
        assert_eq!(&*from_cache, &*built);
        assert_eq!(
            serde_json::to_string(&from_cache).unwrap(),
            serde_json::to_string(&built).unwrap()
        );
        assert_eq!(serde_json::to_string(&built).unwrap(), r#"["a"]"#);
    }

    #[test]
    fn changed_shared_records_are_serialised_as_changed() {
        let mut resources = Resources::of(verdicts(), Some(SharedResources::of(&verdicts())));
        resources[0].attr = Map::new();
        let json: serde_json::Value = serde_json::to_value(&resources).unwrap();
        assert_eq!(json[0]["attr"], json!({}));
        assert_eq!(json[1]["attr"]["tool_name"], "b");
    }
}
