//! Tool stripping in every dialect: never panics, and a JSON body stays JSON after stripping.
#![no_main]

use agent_authz::config::Format;
use agent_authz::extract::dialect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let format = Format::ALL[usize::from(selector) % Format::ALL.len()];
    let denied: Vec<String> = ["delete_repo", "b", "googleSearch", "github/*", "support/x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let was_json = serde_json::from_slice::<serde_json::Value>(body).is_ok();
    if let Ok(Some(out)) = dialect(format).strip_tools(body, &denied) {
        if was_json {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
                "stripping broke a JSON body"
            );
        }
    }
});
