//! MCP sessions bound to the principal that opened them.
//!
//! A Streamable HTTP server names a session in the `Mcp-Session-Id` header of its
//! `initialize` answer, and every later request of the session (POST, the GET stream that
//! carries server-to-client requests, DELETE) sends it back. The server only knows the id, so
//! anyone holding alice's id could call tools in her session, end it, or read the sampling and
//! elicitation requests meant for her. The MCP security guidance says to bind sessions to the
//! user; Envoy AI Gateway encrypts the ids it hands out.
//!
//! Here the ext_proc leg seals the id the server minted before the client sees it:
//! `s1.<tag>.<server id>`, where `tag` is an HMAC-SHA256 (truncated to 128 bits) over the
//! principal's id and the server's id. ext_authz unseals the id a request carries, checks the
//! tag against the principal that sends it, and forwards the server's own id; a missing or
//! wrong tag is a session the server would not know either (`404`). No state is shared: every
//! replica with the same key verifies every seal.
//!
//! Keys come from `mcp.session_keys_file` (one secret per line, at least 32 bytes; the first
//! seals, every line verifies, so a key is rotated by adding the new one first and removing the
//! old one once its sessions have ended). Without the file each process draws a random key at
//! start, kept across configuration reloads: sessions then bind to one replica.

use std::path::Path;
use std::sync::OnceLock;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Prefix of a sealed id, naming the scheme so it can change.
const SCHEME: &str = "s1.";
/// Bytes of the HMAC kept in the seal.
const TAG_BYTES: usize = 16;
/// Shortest secret accepted from the keys file.
pub const MIN_KEY_BYTES: usize = 32;

/// The keys that seal and verify session ids.
#[derive(Clone)]
pub struct SessionSeal {
    /// The first seals; all verify.
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for SessionSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionSeal({} keys)", self.keys.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionKeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no key")]
    Empty { path: String },
    #[error("{path} line {line}: a session key needs at least {MIN_KEY_BYTES} bytes")]
    Short { path: String, line: usize },
}

impl SessionSeal {
    /// Keys from a file (one per line; blank lines and `#` comments skipped).
    pub fn from_file(path: &Path) -> Result<Self, SessionKeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SessionKeyError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let secret = line.trim();
            if secret.is_empty() || secret.starts_with('#') {
                continue;
            }
            if secret.len() < MIN_KEY_BYTES {
                return Err(SessionKeyError::Short {
                    path: shown,
                    line: n + 1,
                });
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()));
        }
        if keys.is_empty() {
            return Err(SessionKeyError::Empty { path: shown });
        }
        Ok(Self { keys })
    }

    /// This process's random key, drawn once and kept across reloads.
    pub fn per_process() -> Self {
        static KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let secret = KEY.get_or_init(|| {
            let mut bytes = [0u8; 32];
            // The system generator fails only without an entropy source; refuse to run
            // with a predictable key rather than continue.
            SystemRandom::new()
                .fill(&mut bytes)
                .unwrap_or_else(|_| panic!("no system randomness for the MCP session key"));
            bytes
        });
        Self {
            keys: vec![hmac::Key::new(hmac::HMAC_SHA256, secret)],
        }
    }

    fn tag(key: &hmac::Key, principal: &str, session: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(b"agent-authz mcp session\0");
        ctx.update(principal.as_bytes());
        ctx.update(b"\0");
        ctx.update(session.as_bytes());
        ctx.sign()
            .as_ref()
            .get(..TAG_BYTES)
            .unwrap_or_default()
            .to_vec()
    }

    /// The id to hand to `principal` for the server's session id.
    pub fn seal(&self, principal: &str, session: &str) -> String {
        let tag = self
            .keys
            .first()
            .map(|key| Self::tag(key, principal, session))
            .unwrap_or_default();
        format!("{SCHEME}{}.{session}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The server's session id inside `sealed`, if `principal` is the one it was sealed for.
    pub fn unseal<'a>(&self, principal: &str, sealed: &'a str) -> Option<&'a str> {
        let (tag, session) = sealed.strip_prefix(SCHEME)?.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.keys
            .iter()
            .any(|key| verify_slices_are_equal(&Self::tag(key, principal, session), &tag).is_ok())
            .then_some(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_with(secrets: &[&str]) -> SessionSeal {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, secrets.join("\n")).unwrap();
        SessionSeal::from_file(&path).unwrap()
    }

    const K1: &str = "0123456789abcdef0123456789abcdef-one";
    const K2: &str = "0123456789abcdef0123456789abcdef-two";

    #[test]
    fn a_session_opens_only_for_its_principal() {
        let seal = seal_with(&[K1]);
        let sealed = seal.seal("alice", "3f2a.b9");
        assert!(sealed.starts_with("s1.") && sealed.ends_with(".3f2a.b9"));
        assert_eq!(seal.unseal("alice", &sealed), Some("3f2a.b9"));
        assert_eq!(seal.unseal("bob", &sealed), None);
        assert_eq!(seal.unseal("alice", "3f2a.b9"), None, "an unsealed id");
        let forged = sealed.replace(".3f2a.b9", ".other");
        assert_eq!(seal.unseal("alice", &forged), None, "the tag covers the id");
        // Every byte is visible ASCII, as MCP requires of session ids.
        assert!(sealed.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }

    #[test]
    fn rotation_keeps_old_seals_valid_until_the_old_key_goes() {
        let old = seal_with(&[K1]).seal("alice", "s");
        let rotated = seal_with(&[K2, K1]);
        assert_eq!(rotated.unseal("alice", &old), Some("s"));
        assert!(rotated.seal("alice", "s") != old, "the new key seals");
        assert_eq!(seal_with(&[K2]).unseal("alice", &old), None);
    }

    #[test]
    fn short_or_missing_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# rotate monthly\n\nshort\n").unwrap();
        assert!(matches!(
            SessionSeal::from_file(&path),
            Err(SessionKeyError::Short { line: 3, .. })
        ));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(matches!(
            SessionSeal::from_file(&path),
            Err(SessionKeyError::Empty { .. })
        ));
    }

    #[test]
    fn the_per_process_key_survives_rebuilds() {
        let sealed = SessionSeal::per_process().seal("alice", "s");
        assert_eq!(
            SessionSeal::per_process().unseal("alice", &sealed),
            Some("s")
        );
    }
}
