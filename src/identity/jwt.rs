//! Bearer-token verification: signature against the JWKS, `exp`/`nbf` with leeway, `iss`, `aud`
//! and an algorithm allow-list.
//!
//! Algorithm confusion is closed three ways: `none` and HMAC are refused at configuration time,
//! the token's `alg` must be on the allow-list, and it must belong to the family of the key that
//! verifies it (and equal the JWK's own `alg` when the JWK pins one).

use std::sync::{Arc, OnceLock};

use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde_json::Value;

use super::jwks::{Key, KeyStore, Refetch};
use super::{IdentityError, Principal, SharedPrincipal};
use crate::config::JwtConfig;

/// Parses one configured algorithm name, refusing those that must never verify a bearer token.
pub fn parse_allowed_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown algorithm {name:?}"))?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Err(format!(
            "{name} is refused: HMAC needs a shared secret, and a JWKS publishes public keys"
        )),
        _ => Ok(alg),
    }
}

pub struct JwtVerifier {
    keys: Arc<KeyStore>,
    algorithms: Vec<Algorithm>,
    issuer: String,
    audiences: Vec<String>,
    leeway_secs: u64,
    max_token_bytes: usize,
    /// Tokens already verified (agents send the same token every turn): the signature check
    /// and claim decoding are skipped until the token expires, the key set changes, or
    /// [`VERIFIED_TTL`] passes, whichever comes first.
    ///
    /// Keyed with foldhash, not SipHash: hashing a ~1 KiB token with SipHash was most of a
    /// remembered token's cost. Flooding a table needs keys an attacker chooses, and only
    /// tokens the identity provider signed are ever inserted; any other token costs one probe.
    verified: moka::sync::Cache<String, Arc<Verified>, foldhash::fast::RandomState>,
}

/// A verified token's claims, and what the [`super::Authenticator`] made of them, kept
/// together: a remembered token costs a lookup, not a re-mapping of its claims.
#[derive(Debug)]
pub struct Verified {
    pub claims: serde_json::Map<String, Value>,
    exp: f64,
    key_generation: u64,
    /// The claims mapped to a principal (or the mapping's refusal), made on first use. The
    /// mapping depends only on the claims and the configuration, which is fixed for the
    /// verifier's life (a reload builds a new one).
    principal: OnceLock<Result<Arc<SharedPrincipal>, IdentityError>>,
}

impl Verified {
    /// The principal these claims map to, mapped by `map` on first use only.
    pub fn principal(
        &self,
        map: impl FnOnce(&serde_json::Map<String, Value>) -> Result<Principal, IdentityError>,
    ) -> Result<Arc<SharedPrincipal>, IdentityError> {
        self.principal
            .get_or_init(|| map(&self.claims).map(SharedPrincipal::new))
            .clone()
    }
}

/// How long a verified token is remembered at most.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl JwtVerifier {
    pub fn new(config: &JwtConfig, keys: Arc<KeyStore>) -> Result<Self, String> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| parse_allowed_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keys,
            algorithms,
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            leeway_secs: config.leeway.as_secs(),
            max_token_bytes: config.max_token_bytes,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_TTL)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        })
    }

    pub fn keys_loaded(&self) -> bool {
        self.keys.is_loaded()
    }

    /// Verifies a compact JWS (its bytes checked first, see [`super::bearer_token`]) and
    /// returns its claims. A token naming a key we do not hold triggers one (rate-limited)
    /// JWKS fetch, so rotated keys work without a restart.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, IdentityError> {
        let now = jsonwebtoken::get_current_timestamp() as f64;
        if let Some(hit) = self.remembered(token, now) {
            return Ok(hit);
        }
        let generation = self.keys.generation();
        let claims = self.verify_uncached(token).await?;
        let exp = claims.get("exp").and_then(Value::as_f64);
        let verified = Arc::new(Verified {
            claims,
            exp: exp.unwrap_or(f64::NEG_INFINITY),
            key_generation: generation,
            principal: OnceLock::new(),
        });
        if exp.is_some() {
            self.verified
                .insert(token.to_owned(), Arc::clone(&verified));
        }
        Ok(verified)
    }

    /// The remembered verification of `token`, if it still holds at `now` (seconds since the
    /// epoch): made with the key set in force, and the token not expired (leeway included).
    /// One that no longer holds is forgotten.
    fn remembered(&self, token: &str, now: f64) -> Option<Arc<Verified>> {
        let hit = self.verified.get(token)?;
        if hit.key_generation == self.keys.generation() && now <= hit.exp + self.leeway_secs as f64
        {
            return Some(hit);
        }
        self.verified.invalidate(token);
        None
    }

    #[cfg(test)]
    pub fn remembered_at(&self, token: &str, now: f64) -> Option<Arc<Verified>> {
        self.remembered(token, now)
    }

    async fn verify_uncached(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, Value>, IdentityError> {
        // Checked here rather than by every caller: a remembered token passed it, and the
        // check is a table lookup per byte of a ~1 KiB token on every request.
        super::check_token_bytes(token)?;
        match self.verify_with_current_keys(token) {
            Err(IdentityError::InvalidToken(reason)) if reason == UNKNOWN_KID => {
                match self.keys.refetch_for_unknown_kid().await {
                    Refetch::Fetched => self.verify_with_current_keys(token),
                    Refetch::NotNeeded => Err(IdentityError::InvalidToken(reason)),
                    // The key may be one the identity provider just rotated in: answer 503
                    // (retry) rather than a 401 that would make the agent drop a good token.
                    Refetch::StillRunning => Err(IdentityError::KeysRefreshing),
                }
            }
            other => other,
        }
    }

    fn verify_with_current_keys(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, Value>, IdentityError> {
        if token.len() > self.max_token_bytes {
            return Err(IdentityError::InvalidToken("token too large".into()));
        }
        if token.split('.').count() != 3 {
            // An API key or an opaque access token: say what is expected.
            return Err(IdentityError::InvalidToken(
                "not a JWT: a signed JWT (header.payload.signature) is expected".into(),
            ));
        }
        let header = decode_header(token)
            .map_err(|_| IdentityError::InvalidToken("malformed token".into()))?;
        if let Some(crit) = &header.crit {
            // RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` names an
            // extension it does not implement, and agent-authz implements none.
            return Err(IdentityError::InvalidToken(format!(
                "unsupported critical header extension(s): {}",
                crit.join(", ")
            )));
        }
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(IdentityError::InvalidToken(format!(
                "algorithm {alg:?} not allowed"
            )));
        }
        let keys = self.keys.snapshot();
        if keys.keys.is_empty() {
            return Err(IdentityError::KeysUnavailable);
        }
        let key = select_key(&keys.keys, header.kid.as_deref(), alg)?;

        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);

        let data = decode::<serde_json::Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| IdentityError::InvalidToken(describe(e.kind())))?;
        // The library also accepts an `iss` array containing the issuer; RFC 7519 makes `iss`
        // a single string, and a token listing several issuers is not the one configured.
        match data.claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => Ok(data.claims),
            Some(Value::String(_)) => Err(IdentityError::InvalidToken("wrong issuer".into())),
            _ => Err(IdentityError::InvalidToken(
                "malformed claim iss: must be a single string".into(),
            )),
        }
    }
}

const UNKNOWN_KID: &str = "unknown signing key (kid)";

/// Picks the key named by `kid`, or the only compatible key when the token names none.
fn select_key<'k>(
    keys: &'k [Key],
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'k Key, IdentityError> {
    let compatible =
        |k: &&Key| k.decoding.family() == alg.family() && k.alg.is_none_or(|pinned| pinned == alg);
    let key = match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .ok_or_else(|| IdentityError::InvalidToken(UNKNOWN_KID.into()))?,
        None => {
            let mut candidates = keys.iter().filter(compatible);
            match (candidates.next(), candidates.next()) {
                (Some(k), None) => k,
                (None, _) => {
                    return Err(IdentityError::InvalidToken(
                        "no key for this algorithm".into(),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(IdentityError::InvalidToken(
                        "token has no kid and several keys match".into(),
                    ));
                }
            }
        }
    };
    if !compatible(&key) {
        return Err(IdentityError::InvalidToken(format!(
            "algorithm {alg:?} does not match the signing key"
        )));
    }
    Ok(key)
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "token expired".into(),
        K::ImmatureSignature => "token not yet valid".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm => "algorithm does not match the key".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        K::InvalidClaimFormat(c) => format!("malformed claim {c}"),
        _ => "malformed token".into(),
    }
}
