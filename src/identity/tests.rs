use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::jwks::{KeySet, KeyStore, KeyStores, MAX_JWKS_BYTES};
use super::jwt::JwtVerifier;
use super::*;
use crate::config::{AttributeSelection, JwksSource, JwtConfig};

const JWKS: &[u8] = include_bytes!("testdata/jwks.json");
const RSA_KEY: &[u8] = include_bytes!("testdata/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("testdata/rsa_public.pem");
const EC_KEY: &[u8] = include_bytes!("testdata/ec_private.pem");
const OTHER_KEY: &[u8] = include_bytes!("testdata/other_rsa_private.pem");

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "sub": "alice", "iss": "https://issuer", "aud": "gw", "exp": now() + 300,
        "roles": ["support"], "assigned_ticket": "T-100", "refund_limit_cents": 100000
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, pem: &[u8], claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem).unwrap(),
    };
    encode(&header, claims, &key).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), RSA_KEY, claims)
}

/// A JWKS source: a URL, or neither (keys given directly).
fn source(url: Option<String>) -> JwksSource {
    JwksSource {
        file: None,
        url,
        refresh_interval: std::time::Duration::from_secs(3600),
        fetch_timeout: std::time::Duration::from_secs(2),
        unknown_kid_wait: std::time::Duration::from_millis(50),
    }
}

/// The verification settings every test uses (issuer, audience, RS256 + ES256, 5 s leeway).
fn jwt_config(jwks: JwksSource) -> JwtConfig {
    JwtConfig {
        jwks,
        issuer: "https://issuer".into(),
        audiences: vec!["gw".into()],
        algorithms: vec!["RS256".into(), "ES256".into()],
        leeway: std::time::Duration::from_secs(5),
        max_token_bytes: 4096,
    }
}

fn authenticator(mapping: PrincipalConfig) -> Authenticator {
    let config = jwt_config(source(None));
    let keys = KeyStore::fixed(KeySet::parse(JWKS).unwrap());
    Authenticator::with_verifier(JwtVerifier::new(&config, keys).unwrap(), mapping)
}

fn bearer(token: &str) -> Headers {
    Headers::from_iter([("authorization".to_owned(), format!("Bearer {token}"))])
}

fn check(token: &str) -> Result<Principal, IdentityError> {
    block(authenticator(PrincipalConfig::default()).authenticate(
        &bearer(token),
        &HashMap::new(),
        "",
    ))
    .map(|p| Principal::clone(&p))
}

fn assert_invalid(token: &str, reason: &str) {
    match check(token) {
        Err(IdentityError::InvalidToken(got)) => assert!(got.contains(reason), "{got} !~ {reason}"),
        other => panic!("expected invalid token ({reason}), got {other:?}"),
    }
}

#[test]
fn jwks_skips_encryption_and_symmetric_keys() {
    let set = KeySet::parse(JWKS).unwrap();
    let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
    assert_eq!(kids, ["rsa-1", "ec-1"]);
    assert!(KeySet::parse(br#"{"keys":[]}"#).is_err());
    assert!(KeySet::parse(b"not json").is_err());
}

#[test]
fn good_tokens_map_to_a_principal() {
    let p = check(&rs256(&claims())).unwrap();
    assert_eq!(p.id, "alice");
    assert_eq!(p.roles, ["support"]);
    assert_eq!(p.attr["assigned_ticket"], "T-100");
    assert_eq!(p.attr["refund_limit_cents"], 100000);
    assert_eq!(
        p.token, None,
        "the token is kept only when passed to Cerbos"
    );

    let p = check(&sign(Algorithm::ES256, Some("ec-1"), EC_KEY, &claims())).unwrap();
    assert_eq!(p.id, "alice");
    let p = check(&sign(Algorithm::ES256, None, EC_KEY, &claims())).unwrap();
    assert_eq!(p.id, "alice", "without kid the only EC key is used");
}

#[test]
fn time_claims_are_enforced_with_leeway() {
    let mut c = claims();
    c["exp"] = json!(now() - 60);
    assert_invalid(&rs256(&c), "expired");
    c["exp"] = json!(now() - 2);
    assert!(check(&rs256(&c)).is_ok(), "within 5 s leeway");
    let mut c = claims();
    c["nbf"] = json!(now() + 60);
    assert_invalid(&rs256(&c), "not yet valid");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_invalid(&rs256(&c), "missing claim exp");
}

#[test]
fn issuer_and_audience_are_enforced() {
    let mut c = claims();
    c["iss"] = json!("https://evil");
    assert_invalid(&rs256(&c), "wrong issuer");
    let mut c = claims();
    c["aud"] = json!("other");
    assert_invalid(&rs256(&c), "wrong audience");
    let mut c = claims();
    c["aud"] = json!(["other", "gw"]);
    assert!(check(&rs256(&c)).is_ok(), "one matching audience suffices");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_invalid(&rs256(&c), "missing claim aud");
}

#[test]
fn iss_must_be_the_one_configured_string() {
    let mut c = claims();
    c["iss"] = json!(["https://issuer"]);
    assert_invalid(&rs256(&c), "iss");
    c["iss"] = json!(["https://issuer", "https://evil"]);
    assert_invalid(&rs256(&c), "iss");
    c["iss"] = json!({"iss": "https://issuer"});
    assert!(check(&rs256(&c)).is_err());
}

#[test]
fn a_critical_header_extension_is_refused() {
    // RFC 7515 §4.1.11: agent-authz implements no extension, so any `crit` is refused.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    header.crit = Some(vec!["exp-policy".into()]);
    let token = encode(
        &header,
        &claims(),
        &EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
    )
    .unwrap();
    assert_invalid(&token, "critical header extension(s): exp-policy");
}

#[test]
fn a_claim_nested_too_deep_is_a_bad_token() {
    let mut deep = json!("x");
    for _ in 0..super::MAX_CLAIM_DEPTH + 1 {
        deep = json!({ "a": deep });
    }
    let mut c = claims();
    c["profile"] = deep.clone();
    assert_invalid(&rs256(&c), "claim profile is nested deeper than 32 levels");
    // One level less is fine.
    c["profile"] = deep["a"].clone();
    assert!(check(&rs256(&c)).is_ok());
}

#[test]
fn an_api_key_is_told_a_jwt_is_expected() {
    assert_invalid(
        "sk-live-0123456789abcdef",
        "a signed JWT (header.payload.signature) is expected",
    );
    assert_invalid("a.b", "JWT");
}

fn forge(header: Value, claims: &Value, signature: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[test]
fn algorithm_attacks_are_refused() {
    // alg none, with and without a signature.
    let none = forge(json!({"alg": "none", "typ": "JWT"}), &claims(), b"");
    assert_invalid(&none, "malformed");
    let none_kid = forge(json!({"alg": "none", "kid": "rsa-1"}), &claims(), b"x");
    assert_invalid(&none_kid, "malformed");
    // HS256 keyed with the RSA public key (the classic confusion attack).
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = encode(&header, &claims(), &EncodingKey::from_secret(RSA_PUBLIC)).unwrap();
    assert_invalid(&confused, "not allowed");
    // RS256 token presented against the EC key.
    assert_invalid(
        &sign(Algorithm::RS256, Some("ec-1"), RSA_KEY, &claims()),
        "does not match",
    );
    // ES256 token presented against the RSA key pinned to RS256.
    assert_invalid(
        &sign(Algorithm::ES256, Some("rsa-1"), EC_KEY, &claims()),
        "does not match",
    );
    // PS256 is a valid RSA algorithm but not on the allow-list.
    assert_invalid(
        &sign(Algorithm::PS256, Some("rsa-1"), RSA_KEY, &claims()),
        "not allowed",
    );
}

#[test]
fn wrong_and_unknown_keys_are_refused() {
    assert_invalid(
        &sign(Algorithm::RS256, Some("rsa-1"), OTHER_KEY, &claims()),
        "bad signature",
    );
    assert_invalid(
        &sign(Algorithm::RS256, Some("nope"), RSA_KEY, &claims()),
        "unknown signing key",
    );
    assert_invalid(
        &sign(Algorithm::RS256, Some("enc-1"), RSA_KEY, &claims()),
        "unknown signing key",
    );
    // Tampered payload keeps the original signature.
    let token = rs256(&claims());
    let parts: Vec<_> = token.split('.').collect();
    let mut c = claims();
    c["roles"] = json!(["admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(c.to_string()),
        parts[2]
    );
    assert_invalid(&tampered, "bad signature");
}

#[test]
fn oversized_tokens_are_refused_unparsed() {
    let mut c = claims();
    c["padding"] = json!("x".repeat(5000));
    assert_invalid(&rs256(&c), "too large");
}

#[test]
fn authorization_header_shapes() {
    let a = authenticator(PrincipalConfig::default());
    let none = HashMap::new();
    let run = |h: Headers| block(a.authenticate(&h, &none, "")).map(|p| Principal::clone(&p));
    assert_eq!(run(Headers::default()), Err(IdentityError::MissingToken));
    let token = rs256(&claims());
    let h = |v: String| Headers::from_iter([("authorization".to_owned(), v)]);
    assert!(
        run(h(format!("bearer {token}"))).is_ok(),
        "scheme is case-insensitive"
    );
    assert!(matches!(
        run(h(format!("Basic {token}"))),
        Err(IdentityError::MalformedAuthorization(_))
    ));
    assert!(matches!(
        run(h(format!("Bearer {token},Bearer {token}"))),
        Err(IdentityError::MalformedAuthorization(
            "several Authorization headers"
        ))
    ));
    assert_eq!(run(h("Bearer ".into())), Err(IdentityError::MissingToken));
    assert!(matches!(
        run(h("Bearer a b".into())),
        Err(IdentityError::MalformedAuthorization(_))
    ));
}

#[test]
fn claim_mapping_follows_config() {
    let mut c = claims();
    c["scope"] = json!("read write");
    c["realm"] = json!({"roles": ["a", "b"]});
    let mapping = PrincipalConfig {
        roles_claim: "realm.roles".into(),
        attributes: AttributeSelection::Claims(vec!["assigned_ticket".into(), "absent".into()]),
        ..PrincipalConfig::default()
    };
    let p = map_claims(&mapping, c.as_object().unwrap().clone()).unwrap();
    assert_eq!(p.roles, ["a", "b"]);
    assert_eq!(Value::Object(p.attr), json!({"assigned_ticket": "T-100"}));

    let scope_roles = PrincipalConfig {
        roles_claim: "scope".into(),
        ..PrincipalConfig::default()
    };
    let p = map_claims(&scope_roles, c.as_object().unwrap().clone()).unwrap();
    assert_eq!(p.roles, ["read", "write"], "space-separated string");

    let mut c = claims();
    c.as_object_mut().unwrap().remove("roles");
    let p = map_claims(&PrincipalConfig::default(), c.as_object().unwrap().clone()).unwrap();
    assert_eq!(p.roles, ["authenticated"], "default roles");
    let no_default = PrincipalConfig {
        default_roles: vec![],
        ..PrincipalConfig::default()
    };
    assert_eq!(
        map_claims(&no_default, c.as_object().unwrap().clone()),
        Err(IdentityError::MissingClaim("roles".into()))
    );

    let mut c = claims();
    c["sub"] = json!(42);
    assert_eq!(
        map_claims(&PrincipalConfig::default(), c.as_object().unwrap().clone()),
        Err(IdentityError::MissingClaim("sub".into()))
    );
}

#[tokio::test]
async fn token_is_kept_only_when_passed_to_cerbos_and_never_printed() {
    let mapping = PrincipalConfig {
        pass_token_to_cerbos: true,
        ..PrincipalConfig::default()
    };
    let token = rs256(&claims());
    let p = authenticator(mapping)
        .authenticate(&bearer(&token), &HashMap::new(), "")
        .await
        .unwrap();
    assert_eq!(p.token.as_ref().unwrap().expose(), token);
    assert!(!format!("{p:?}").contains(&token));
}

#[test]
fn envoy_metadata_numbers_become_integers() {
    let payload =
        json!({"sub": "bob", "roles": ["support"], "refund_limit_cents": 5000.0, "ratio": 0.5});
    let p = map_claims(
        &PrincipalConfig::default(),
        payload.as_object().unwrap().clone(),
    )
    .unwrap();
    assert_eq!(p.attr["refund_limit_cents"], json!(5000));
    assert!(p.attr["refund_limit_cents"].is_i64());
    assert_eq!(p.attr["ratio"], json!(0.5));
}

/// What the loopback JWKS endpoint answers.
#[derive(Clone)]
enum Reply {
    Document(String),
    Down,
    /// Accepts the connection and never answers.
    Hang,
    /// A whole raw HTTP response.
    Raw(String),
}

/// A JWKS endpoint on loopback whose answer can be changed; counts the requests it gets.
struct JwksServer {
    url: String,
    reply: std::sync::Arc<std::sync::Mutex<Reply>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(document: Option<String>) -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let reply = std::sync::Arc::new(std::sync::Mutex::new(
            document.map_or(Reply::Down, Reply::Document),
        ));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (reply.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let response = match served.lock().unwrap().clone() {
                    Reply::Document(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Reply::Down => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                    Reply::Hang => {
                        tokio::spawn(async move {
                            let _socket = socket;
                            std::future::pending::<()>().await;
                        });
                        continue;
                    }
                    Reply::Raw(raw) => raw,
                };
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        JwksServer {
            url,
            reply,
            requests,
        }
    }

    fn serve(&self, document: Option<String>) {
        self.answer(document.map_or(Reply::Down, Reply::Document));
    }

    fn answer(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn jwks_with(kids: &[&str]) -> String {
    let all: Value = serde_json::from_slice(JWKS).unwrap();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

#[tokio::test]
async fn remote_jwks_rotation_and_outages() {
    let server = JwksServer::start(Some(jwks_with(&["ec-1"]))).await;
    let failures = prometheus_client::metrics::counter::Counter::<u64>::default();
    let source = source(Some(server.url.clone()));
    let keys = KeyStore::start(&source, failures.clone()).await.unwrap();
    assert!(keys.is_loaded());
    let verifier = JwtVerifier::new(&jwt_config(source), keys.clone()).unwrap();
    // The provider rotates in rsa-1: an unknown kid fetches the JWKS again, once.
    server.serve(Some(jwks_with(&["ec-1", "rsa-1"])));
    assert_eq!(
        verifier.verify(&rs256(&claims())).await.unwrap().claims["sub"],
        "alice"
    );
    // The endpoint goes down: the last good keys keep working, and the failure is counted.
    server.serve(None);
    assert_eq!(
        keys.refetch_for_unknown_kid().await,
        super::jwks::Refetch::NotNeeded,
        "rate-limited right after a fetch"
    );
    let unknown = sign(Algorithm::RS256, Some("rsa-2"), RSA_KEY, &claims());
    assert!(verifier.verify(&unknown).await.is_err());
    assert!(verifier.verify(&rs256(&claims())).await.is_ok());
    assert_eq!(
        failures.get(),
        0,
        "no fetch was attempted inside the rate limit"
    );
}

#[tokio::test]
async fn a_remote_jwks_down_at_start_counts_a_failure_and_refuses_with_503() {
    let server = JwksServer::start(None).await;
    let failures = prometheus_client::metrics::counter::Counter::<u64>::default();
    let source = source(Some(server.url.clone()));
    let keys = KeyStore::start(&source, failures.clone()).await.unwrap();
    assert!(!keys.is_loaded());
    assert_eq!(failures.get(), 1);
    let verifier = JwtVerifier::new(&jwt_config(source), keys).unwrap();
    assert_eq!(
        verifier.verify(&rs256(&claims())).await.err(),
        Some(IdentityError::KeysUnavailable)
    );
}

#[tokio::test]
async fn a_verified_token_is_remembered_but_only_that_exact_token() {
    let verifier = JwtVerifier::new(
        &jwt_config(source(None)),
        KeyStore::fixed(KeySet::parse(JWKS).unwrap()),
    )
    .unwrap();
    let token = rs256(&claims());
    assert_eq!(
        verifier.verify(&token).await.unwrap().claims["sub"],
        "alice"
    );
    assert_eq!(
        verifier.verify(&token).await.unwrap().claims["sub"],
        "alice",
        "answered from memory"
    );
    // A different signature on the same claims is a different token: verified afresh.
    let forged = sign(Algorithm::RS256, Some("rsa-1"), OTHER_KEY, &claims());
    assert!(verifier.verify(&forged).await.is_err());
    // An expired token is never remembered past its expiry (leeway 5 s).
    let mut c = claims();
    c["exp"] = json!(now() - 60);
    assert!(verifier.verify(&rs256(&c)).await.is_err());
}

#[tokio::test]
async fn an_unknown_kid_waits_only_briefly_for_a_slow_identity_provider() {
    let server = JwksServer::start(Some(jwks_with(&["ec-1"]))).await;
    let source = source(Some(server.url.clone()));
    let keys = KeyStore::start(&source, Default::default()).await.unwrap();
    let verifier = JwtVerifier::new(&jwt_config(source), keys).unwrap();
    // The provider hangs while rotating: the token is answered 503 (retry) after
    // `unknown_kid_wait` (50 ms here), not after `fetch_timeout` (2 s) with a 401.
    server.answer(Reply::Hang);
    assert_eq!(
        verifier.verify(&rs256(&claims())).await.err(),
        Some(IdentityError::KeysRefreshing)
    );
}

/// A body of `len` bytes that is a valid JWKS (the keys, then padding whitespace).
fn padded_jwks(len: usize) -> String {
    let doc = jwks_with(&["rsa-1"]);
    format!("{doc}{}", " ".repeat(len - doc.len()))
}

#[tokio::test]
async fn a_jwks_response_larger_than_the_cap_is_refused() {
    let server = JwksServer::start(Some(padded_jwks(MAX_JWKS_BYTES))).await;
    let failures = prometheus_client::metrics::counter::Counter::<u64>::default();
    let keys = KeyStore::start(&source(Some(server.url.clone())), failures.clone())
        .await
        .unwrap();
    assert!(keys.is_loaded(), "a body of exactly the cap is accepted");
    // With a content-length, and streamed without one (chunked): both refused, old keys kept.
    let big = padded_jwks(MAX_JWKS_BYTES + 1);
    server.serve(Some(big.clone()));
    assert!(
        KeyStore::start(&source(Some(server.url.clone())), failures.clone())
            .await
            .unwrap()
            .snapshot()
            .keys
            .is_empty()
    );
    let chunked = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    server.answer(Reply::Raw(chunked));
    assert!(
        KeyStore::start(&source(Some(server.url.clone())), failures.clone())
            .await
            .unwrap()
            .snapshot()
            .keys
            .is_empty()
    );
    assert_eq!(failures.get(), 2);
}

#[tokio::test]
async fn a_jwks_redirect_is_refused_not_followed() {
    let target = JwksServer::start(Some(jwks_with(&["rsa-1"]))).await;
    let server = JwksServer::start(None).await;
    server.answer(Reply::Raw(format!(
        "HTTP/1.1 302 Found\r\nlocation: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        target.url
    )));
    let keys = KeyStore::start(&source(Some(server.url.clone())), Default::default())
        .await
        .unwrap();
    assert!(!keys.is_loaded());
    assert_eq!(target.requests(), 0, "the redirect target was never asked");
}

#[tokio::test]
async fn a_reload_keeps_the_running_keys_and_does_not_refetch_in_a_storm() {
    let server = JwksServer::start(Some(jwks_with(&["rsa-1"]))).await;
    let stores = KeyStores::new(Default::default());
    let source = source(Some(server.url.clone()));
    let first = stores.get(&source).await.unwrap();
    assert!(first.is_loaded());
    server.serve(None);
    // Twenty reloads (SIGHUP storm) with the endpoint failing: same keys, one fetch at most.
    for _ in 0..20 {
        let again = stores.get(&source).await.unwrap();
        assert!(again.is_loaded());
        assert!(std::sync::Arc::ptr_eq(&first, &again));
    }
    tokio::task::yield_now().await;
    assert!(server.requests() <= 2, "{} fetches", server.requests());
    // A changed source that cannot load keys is refused while the running one has keys.
    let mut other = source.clone();
    other.fetch_timeout = std::time::Duration::from_secs(1);
    assert!(stores.get(&other).await.is_err());
    assert!(std::sync::Arc::ptr_eq(
        &first,
        &stores.get(&source).await.unwrap()
    ));
}

/// A verifier reading a JWKS file in `dir` that holds `rsa-1`: the file's path (to rewrite it)
/// and its key store (to reread it) come with it.
async fn file_verifier(
    dir: &tempfile::TempDir,
) -> (std::path::PathBuf, std::sync::Arc<KeyStore>, JwtVerifier) {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_with(&["rsa-1"])).unwrap();
    let source = JwksSource {
        file: Some(path.clone()),
        ..source(None)
    };
    let keys = KeyStore::start(&source, Default::default()).await.unwrap();
    let verifier = JwtVerifier::new(&jwt_config(source), keys.clone()).unwrap();
    (path, keys, verifier)
}

#[tokio::test]
async fn a_jwks_file_edit_revokes_a_key_at_once_and_adds_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (path, keys, verifier) = file_verifier(&dir).await;
    let token = rs256(&claims());
    assert!(verifier.verify(&token).await.is_ok());
    assert!(verifier.verify(&token).await.is_ok(), "remembered");
    // rsa-1 is revoked, ec-1 added.
    std::fs::write(&path, jwks_with(&["ec-1"])).unwrap();
    keys.reread_file();
    assert_eq!(
        verifier.verify(&token).await.err(),
        Some(IdentityError::InvalidToken(
            "unknown signing key (kid)".into()
        )),
        "the remembered verification went with its key"
    );
    assert!(
        verifier
            .verify(&sign(Algorithm::ES256, Some("ec-1"), EC_KEY, &claims()))
            .await
            .is_ok()
    );
    // A half-written file keeps the last good keys.
    std::fs::write(&path, &jwks_with(&["rsa-1"])[..40]).unwrap();
    keys.reread_file();
    assert!(
        verifier
            .verify(&sign(Algorithm::ES256, Some("ec-1"), EC_KEY, &claims()))
            .await
            .is_ok()
    );
}

#[test]
fn a_token_byte_outside_base64url_is_refused_wherever_it_lies() {
    let token = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln-_=";
    let header =
        |t: &str| Headers::from_iter([("authorization".to_owned(), format!("Bearer {t}"))]);
    assert_eq!(bearer_token(&header(token)), Ok(token));
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.=".contains(c);
    // Space and comma fail earlier (two tokens, two headers); every other character here.
    let others = (0u8..128).map(char::from).chain(['é', '\u{2028}', '😀']);
    for c in others.filter(|&c| !allowed(c) && c != ' ' && c != ',') {
        for at in [0, 12, token.len()] {
            let mut bad = token.to_owned();
            bad.insert(at, c);
            let bad = bad.trim().to_owned();
            if bad == token {
                continue; // whitespace trimmed at either end
            }
            assert!(
                matches!(
                    bearer_token(&header(&bad)),
                    Err(IdentityError::MalformedAuthorization(_))
                ),
                "{c:?} at {at}"
            );
        }
    }
}

/// The authenticator leaves the byte check to the verifier, which makes it before verifying
/// any token it does not remember: a signed token with one byte added is refused as malformed.
#[tokio::test]
async fn the_verifier_refuses_a_token_byte_outside_base64url() {
    let a = authenticator(PrincipalConfig::default());
    let none = HashMap::new();
    let token = rs256(&claims());
    assert!(a.authenticate(&bearer(&token), &none, "").await.is_ok());
    for c in ['!', '"', '\\', '\u{7f}', '\t', 'é'] {
        for at in [1, 40, token.len() - 1] {
            let mut bad = token.clone();
            bad.insert(at, c);
            assert_eq!(
                a.authenticate(&bearer(&bad), &none, "").await.err(),
                Some(IdentityError::MalformedAuthorization(
                    "token has characters outside base64url"
                )),
                "{c:?} at {at}"
            );
        }
    }
}

#[tokio::test]
async fn a_remembered_token_is_one_shared_principal_until_its_key_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, keys, verifier) = file_verifier(&dir).await;
    let a = Authenticator::with_verifier(verifier, PrincipalConfig::default());
    let headers = bearer(&rs256(&claims()));
    let none = HashMap::new();
    let first = a.authenticate(&headers, &none, "").await.unwrap();
    let again = a.authenticate(&headers, &none, "").await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "mapped once, then shared");
    assert_eq!(again.id, "alice");
    assert_eq!(again.attr["refund_limit_cents"], json!(100000));
    // The key is rotated out: the remembered principal goes with it.
    std::fs::write(&path, jwks_with(&["ec-1"])).unwrap();
    keys.reread_file();
    assert_eq!(
        a.authenticate(&headers, &none, "").await.err(),
        Some(IdentityError::InvalidToken(
            "unknown signing key (kid)".into()
        ))
    );
}

#[tokio::test]
async fn a_remembered_token_is_never_served_past_its_expiry() {
    let verifier = JwtVerifier::new(
        &jwt_config(source(None)),
        KeyStore::fixed(KeySet::parse(JWKS).unwrap()),
    )
    .unwrap();
    let exp = now() + 300;
    let mut c = claims();
    c["exp"] = json!(exp);
    let token = rs256(&c);
    verifier.verify(&token).await.unwrap();
    // Leeway 5 s: remembered up to exp + 5, not one second longer, and then forgotten.
    let at = |t: i64| verifier.remembered_at(&token, t as f64).is_some();
    assert!(at(now()));
    assert!(at(exp + 5));
    assert!(!at(exp + 6));
    assert!(!at(now()), "forgotten once past its expiry");
}

#[test]
fn a_shared_principal_writes_its_json_without_the_token() {
    let p = SharedPrincipal::new(Principal {
        id: "alice".into(),
        roles: vec!["support".into()],
        attr: json!({"tier": "gold", "n": 1}).as_object().unwrap().clone(),
        token: Some(BearerToken::for_tests("secret.token.value")),
    });
    let json: Value = serde_json::from_str(p.json().get()).unwrap();
    assert_eq!(
        json,
        json!({"id": "alice", "roles": ["support"], "attr": {"tier": "gold", "n": 1}})
    );
    assert!(!p.json().get().contains("secret"));
}
