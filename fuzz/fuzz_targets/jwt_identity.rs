//! The identity path: arbitrary Authorization headers and claims never panic and never
//! authenticate without a valid signature.
#![no_main]

use std::sync::OnceLock;

use agent_authz::config::{IdentityConfig, JwksSource, JwtConfig, PrincipalConfig};
use agent_authz::headers::Headers;
use agent_authz::identity::{Authenticator, map_claims};
use libfuzzer_sys::fuzz_target;

const JWKS: &str = include_str!("../../src/identity/testdata/jwks.json");

fn authenticator() -> &'static (tokio::runtime::Runtime, Authenticator) {
    static CELL: OnceLock<(tokio::runtime::Runtime, Authenticator)> = OnceLock::new();
    CELL.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join("agent-authz-fuzz-jwks.json");
        std::fs::write(&dir, JWKS).unwrap();
        let config = IdentityConfig {
            source: Default::default(),
            jwt: Some(JwtConfig {
                jwks: JwksSource {
                    file: Some(dir),
                    url: None,
                    refresh_interval: std::time::Duration::from_secs(3600),
                    fetch_timeout: std::time::Duration::from_secs(1),
                    unknown_kid_wait: std::time::Duration::from_millis(250),
                },
                issuer: "https://issuer".into(),
                audiences: vec!["gw".into()],
                algorithms: vec!["RS256".into(), "ES256".into()],
                leeway: std::time::Duration::from_secs(5),
                max_token_bytes: 8192,
            }),
            envoy_jwt_authn: Default::default(),
            principal: PrincipalConfig::default(),
            protected_header_prefixes: vec![],
            mesh_peers: vec![],
        };
        let auth = runtime.block_on(Authenticator::start(&config, Default::default())).unwrap();
        (runtime, auth)
    })
}

fuzz_target!(|data: &[u8]| {
    let (runtime, auth) = authenticator();
    let header = String::from_utf8_lossy(data).into_owned();
    let headers = Headers::from_iter([("authorization".to_owned(), format!("Bearer {header}"))]);
    let result = runtime.block_on(auth.authenticate(&headers, &Default::default(), ""));
    assert!(result.is_err(), "a fuzzed token authenticated");
    if let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(data) {
        let _ = map_claims(&PrincipalConfig::default(), claims);
    }
});
