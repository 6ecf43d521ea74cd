//! Stage 1: who is asking. Reads headers and Envoy metadata only, never the body, so a missing
//! or invalid identity is refused before any body is parsed.
//!
//! Identity comes from one configured source: a bearer JWT we verify ourselves, or the payload
//! Envoy's `jwt_authn` filter already verified (read from `metadata_context`, which a client
//! cannot write). Headers a client could forge are never read as identity.

pub mod jwks;
pub mod jwt;
pub mod session;

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::config::{IdentityConfig, IdentitySource, MeshPeerConfig, PrincipalConfig};
use crate::headers::Headers;
use jwks::KeyStores;
use jwt::JwtVerifier;

/// The Cerbos principal for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub id: String,
    pub roles: Vec<String>,
    pub attr: Map<String, Value>,
    /// The verified token, kept only to pass to Cerbos as `auxData.jwt` when configured.
    pub token: Option<BearerToken>,
}

/// A principal as the stages share it: one per remembered token (see [`jwt::Verified`]), so
/// a repeated token is neither re-mapped nor copied, and its JSON is written once for every
/// decision record and ext_proc handoff that names it.
#[derive(Debug)]
pub struct SharedPrincipal {
    principal: Principal,
    json: OnceLock<Box<RawValue>>,
}

/// The principal's JSON: what the decision record and the handoff carry (never the token).
#[derive(Serialize)]
struct PrincipalJson<'a> {
    id: &'a str,
    roles: &'a [String],
    attr: &'a Map<String, Value>,
}

impl SharedPrincipal {
    pub fn new(principal: Principal) -> Arc<Self> {
        Arc::new(Self {
            principal,
            json: OnceLock::new(),
        })
    }

    /// `{"id", "roles", "attr"}`, serialised on first use.
    pub fn json(&self) -> &RawValue {
        self.json.get_or_init(|| {
            let p = &self.principal;
            let view = PrincipalJson {
                id: &p.id,
                roles: &p.roles,
                attr: &p.attr,
            };
            // Strings, string arrays and a JSON map cannot fail to serialise.
            serde_json::value::to_raw_value(&view).expect("a principal serialises")
        })
    }
}

impl Deref for SharedPrincipal {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

/// A raw bearer token. Its `Debug` never shows the value, so it cannot reach a log by accident.
#[derive(Clone, PartialEq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
impl BearerToken {
    /// A token for tests of what is done differently when one travels to Cerbos.
    pub fn for_tests(token: &str) -> Self {
        Self(token.to_owned())
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(&'static str),
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token lacks a usable {0} claim")]
    MissingClaim(String),
    #[error("no verified JWT payload from Envoy's jwt_authn filter")]
    MissingEnvoyPayload,
    #[error("signing keys are not loaded yet")]
    KeysUnavailable,
    #[error("signing keys are being refreshed (the token names a key not yet known); retry")]
    KeysRefreshing,
}

/// Turns request headers and metadata into a [`Principal`].
pub struct Authenticator {
    source: Source,
    mapping: PrincipalConfig,
    mesh_peers: Vec<MeshPeerConfig>,
}

enum Source {
    Jwt(JwtVerifier),
    EnvoyJwtAuthn {
        namespace: String,
        payload_key: String,
    },
}

impl Authenticator {
    /// `jwks_failures` counts failed JWKS refreshes.
    pub async fn start(
        config: &IdentityConfig,
        jwks_failures: Counter,
    ) -> anyhow::Result<Authenticator> {
        Self::start_with(config, &KeyStores::new(jwks_failures)).await
    }

    /// Like [`Authenticator::start`], taking signing keys from `key_stores`, which outlive a
    /// configuration reload (see [`KeyStores`]).
    pub async fn start_with(
        config: &IdentityConfig,
        key_stores: &KeyStores,
    ) -> anyhow::Result<Authenticator> {
        let source = match (config.source, &config.jwt) {
            (IdentitySource::Jwt, Some(jwt)) => {
                let keys = key_stores.get(&jwt.jwks).await?;
                Source::Jwt(JwtVerifier::new(jwt, keys).map_err(anyhow::Error::msg)?)
            }
            (IdentitySource::Jwt, None) => anyhow::bail!("identity.jwt is required"),
            (IdentitySource::EnvoyJwtAuthn, _) => Source::EnvoyJwtAuthn {
                namespace: config.envoy_jwt_authn.namespace.clone(),
                payload_key: config.envoy_jwt_authn.payload_key.clone(),
            },
        };
        Ok(Authenticator {
            source,
            mapping: config.principal.clone(),
            mesh_peers: config.mesh_peers.clone(),
        })
    }

    #[cfg(test)]
    pub fn with_verifier(verifier: JwtVerifier, mapping: PrincipalConfig) -> Self {
        Authenticator {
            source: Source::Jwt(verifier),
            mapping,
            mesh_peers: Vec::new(),
        }
    }

    /// Whether verification keys are available (always true when Envoy verifies).
    pub fn keys_loaded(&self) -> bool {
        match &self.source {
            Source::Jwt(verifier) => verifier.keys_loaded(),
            Source::EnvoyJwtAuthn { .. } => true,
        }
    }

    /// Identifies the caller. `metadata` maps Envoy metadata namespaces to their JSON content;
    /// `peer` is the mTLS peer identity Envoy verified (`attributes.source.principal`).
    ///
    /// A bearer token, when present, always decides (a workload cannot downgrade a bad token
    /// to its mesh identity). Without one, a configured mesh peer is recognised by its SPIFFE id.
    pub async fn authenticate(
        &self,
        headers: &Headers,
        metadata: &HashMap<String, Value>,
        peer: &str,
    ) -> Result<Arc<SharedPrincipal>, IdentityError> {
        let has_token = headers.contains_key("authorization");
        let has_payload = matches!(&self.source, Source::EnvoyJwtAuthn { namespace, .. } if metadata.contains_key(namespace));
        let mesh = (!has_token && !has_payload && !peer.is_empty())
            .then(|| self.mesh_peers.iter().find(|m| m.spiffe_id == peer))
            .flatten();
        if let Some(mesh) = mesh {
            return Ok(SharedPrincipal::new(Principal {
                id: mesh.id.clone(),
                roles: mesh.roles.clone(),
                attr: mesh.attr.clone(),
                token: None,
            }));
        }
        self.authenticate_token(headers, metadata).await
    }

    async fn authenticate_token(
        &self,
        headers: &Headers,
        metadata: &HashMap<String, Value>,
    ) -> Result<Arc<SharedPrincipal>, IdentityError> {
        match &self.source {
            Source::Jwt(verifier) => {
                // The verifier checks the token's bytes unless it remembers the token.
                let token = bearer_credential(headers)?;
                // Mapped once per remembered token: the claims and the mapping are all it
                // depends on (the token kept for Cerbos is the one remembered).
                verifier.verify(token).await?.principal(|claims| {
                    let token = Some(BearerToken(token.to_owned()));
                    self.principal(claims.clone(), token)
                })
            }
            Source::EnvoyJwtAuthn {
                namespace,
                payload_key,
            } => {
                let payload = metadata
                    .get(namespace)
                    .and_then(|ns| ns.get(payload_key))
                    .and_then(Value::as_object)
                    .ok_or(IdentityError::MissingEnvoyPayload)?;
                // The token itself is only forwarded when jwt_authn kept it (`forward: true`).
                let token = bearer_token(headers)
                    .ok()
                    .map(|t| BearerToken(t.to_owned()));
                self.principal(payload.clone(), token)
                    .map(SharedPrincipal::new)
            }
        }
    }

    /// The principal `claims` map to, keeping `token` when it is to be passed to Cerbos.
    fn principal(
        &self,
        claims: Map<String, Value>,
        token: Option<BearerToken>,
    ) -> Result<Principal, IdentityError> {
        let mut principal = map_claims(&self.mapping, claims)?;
        if self.mapping.pass_token_to_cerbos {
            principal.token = token;
        }
        Ok(principal)
    }
}

/// The bytes a token may hold: base64url (a JWT's segments), `.` between them, `=` padding.
const TOKEN_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'=');
        b += 1;
    }
    table
};

/// Extracts the token from `Authorization: Bearer <token>`.
///
/// Envoy joins repeated headers with commas; a comma can never appear in a JWT, so its
/// presence means the client sent several Authorization headers, which is refused rather than
/// guessing which one the upstream would read.
pub fn bearer_token(headers: &Headers) -> Result<&str, IdentityError> {
    let token = bearer_credential(headers)?;
    check_token_bytes(token)?;
    Ok(token)
}

/// [`bearer_token`] without the check of the token's bytes, for the verifier, which makes that
/// check before verifying a token it does not remember ([`check_token_bytes`]): a remembered
/// token is one that passed it.
fn bearer_credential(headers: &Headers) -> Result<&str, IdentityError> {
    let value = headers
        .get("authorization")
        .ok_or(IdentityError::MissingToken)?;
    if value.contains(',') {
        return Err(IdentityError::MalformedAuthorization(
            "several Authorization headers",
        ));
    }
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(IdentityError::MalformedAuthorization(
            "expected Bearer <token>",
        ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(IdentityError::MalformedAuthorization(
            "scheme is not Bearer",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(IdentityError::MissingToken);
    }
    Ok(token)
}

/// Refuses a token with a byte a compact JWS cannot hold.
fn check_token_bytes(token: &str) -> Result<(), IdentityError> {
    // Every check passes here with a token of ~1 KiB: a table lookup per byte, without an
    // early exit, costs a third of the per-byte comparisons it replaces.
    if !token
        .bytes()
        .fold(true, |ok, b| ok & TOKEN_BYTE[usize::from(b)])
    {
        return Err(IdentityError::MalformedAuthorization(
            "token has characters outside base64url",
        ));
    }
    Ok(())
}

/// Maps verified claims to the principal: id, roles and attributes as configured.
pub fn map_claims(
    mapping: &PrincipalConfig,
    claims: Map<String, Value>,
) -> Result<Principal, IdentityError> {
    let id = match claims.get(&mapping.id_claim) {
        // Control characters could split the identity header sent upstream.
        Some(Value::String(s)) if !s.is_empty() && !s.chars().any(char::is_control) => s.clone(),
        _ => return Err(IdentityError::MissingClaim(mapping.id_claim.clone())),
    };
    let mut roles = match lookup_path(&claims, &mapping.roles_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| IdentityError::MissingClaim(mapping.roles_claim.clone()))?,
        Some(_) => return Err(IdentityError::MissingClaim(mapping.roles_claim.clone())),
    };
    roles.retain(|r| !r.is_empty());
    roles.dedup();
    if roles.is_empty() {
        roles = mapping.default_roles.clone();
    }
    if roles.is_empty() {
        return Err(IdentityError::MissingClaim(mapping.roles_claim.clone()));
    }
    if let Some((name, _)) = claims.iter().find(|(_, v)| depth(v) > MAX_CLAIM_DEPTH) {
        return Err(IdentityError::InvalidToken(format!(
            "claim {name} is nested deeper than {MAX_CLAIM_DEPTH} levels"
        )));
    }
    let attr = match mapping.attributes.claims() {
        None => claims
            .into_iter()
            .map(|(k, v)| (k, normalize_numbers(v)))
            .collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| {
                claims
                    .get(n)
                    .map(|v| (n.clone(), normalize_numbers(v.clone())))
            })
            .collect(),
    };
    Ok(Principal {
        id,
        roles,
        attr,
        token: None,
    })
}

/// The deepest nesting of objects and arrays accepted in a claim. Claims become Cerbos
/// principal attributes; deeper values made the PDP time out (a 503 that blamed the policy
/// service for a bad token) and no identity provider issues them, so they are refused here.
pub const MAX_CLAIM_DEPTH: usize = 32;

/// Levels of object/array nesting in `value` (a scalar is 0). Stops counting past the limit.
fn depth(value: &Value) -> usize {
    fn walk(value: &Value, level: usize) -> usize {
        if level > MAX_CLAIM_DEPTH {
            return level;
        }
        match value {
            Value::Array(items) => items
                .iter()
                .map(|v| walk(v, level + 1))
                .max()
                .unwrap_or(level + 1),
            Value::Object(map) => map
                .values()
                .map(|v| walk(v, level + 1))
                .max()
                .unwrap_or(level + 1),
            _ => level,
        }
    }
    walk(value, 0)
}

fn lookup_path<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    // A claim whose name itself contains dots (e.g. a namespaced URL claim) wins over a path.
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.get(part)?;
    }
    Some(current)
}

/// Envoy's metadata carries every number as a double (`100000.0`). Integral values are turned
/// back into integers so policies and logs see what the identity provider issued.
pub(crate) fn normalize_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests;
