//! HS256 bearer tokens.

use std::{path::Path, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Actor, Role};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token that says it is not valid yet (`nbf`) is refused until then, as RFC 7519 §4.1.5
        // asks; jsonwebtoken checks `nbf` only when told to.
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Issues a token. A merchant token must name its merchant.
    pub fn issue(
        &self,
        sub: &str,
        role: Role,
        merchant_id: Option<&str>,
        ttl: Duration,
    ) -> Result<String> {
        if role == Role::Merchant && merchant_id.is_none_or(|m| m.trim().is_empty()) {
            return Err(Error::validation(
                "merchant_id",
                "a merchant token needs --merchant-id",
            ));
        }
        if let Some(m) = merchant_id {
            super::parse_merchant_id("merchant_id", m)?;
        }
        if sub.is_empty() || sub.chars().count() > MAX_SUB {
            return Err(Error::validation(
                "sub",
                format!("the subject must have 1 to {MAX_SUB} characters"),
            ));
        }
        let now = crate::db::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            merchant_id: merchant_id.map(str::to_owned),
            iat: now,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(Error::internal)
    }

    /// Verifies a token and returns the actor it stands for. Any failure is UNAUTHENTICATED.
    pub fn verify(&self, token: &str) -> Result<Actor> {
        self.verify_session(token).map(|s| s.actor)
    }

    /// Verifies a token and returns the actor with the token's expiry.
    pub fn verify_session(&self, token: &str) -> Result<Session> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                Error::Unauthenticated(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired".into(),
                    ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".into(),
                    ErrorKind::InvalidSignature => "token signature is invalid".into(),
                    _ => "malformed or invalid token".into(),
                })
            })?;
        let c = data.claims;
        // The ids end up in audit rows and owner columns: hold them to those columns' sizes.
        if c.sub.is_empty() || c.sub.chars().count() > MAX_SUB {
            return Err(Error::Unauthenticated(format!(
                "token subject must have 1 to {MAX_SUB} characters"
            )));
        }
        let actor = match c.role {
            Role::Admin => Actor::Admin { sub: c.sub },
            Role::Service => Actor::Service { sub: c.sub },
            Role::Merchant => Actor::Merchant {
                sub: c.sub,
                merchant_id: c
                    .merchant_id
                    .filter(|m| super::valid_merchant_id(m))
                    .ok_or_else(|| {
                        Error::Unauthenticated("merchant token without a valid merchant_id".into())
                    })?,
            },
        };
        Ok(Session {
            actor,
            expires_at: c.exp,
            leeway: self.validation.leeway,
        })
    }

    /// Reads an `Authorization` header value. `None` (no header) is anonymous.
    pub fn actor_from_header(&self, value: Option<&str>) -> Result<Actor> {
        self.session_from_header(value)
            .map(|s| s.map_or(Actor::Anonymous, |s| s.actor))
    }

    /// Like [`Self::actor_from_header`], keeping the expiry; `None` when there is no header.
    pub fn session_from_header(&self, value: Option<&str>) -> Result<Option<Session>> {
        let Some(value) = value else {
            return Ok(None);
        };
        let token = bearer(value).ok_or_else(|| {
            Error::Unauthenticated("Authorization must be `Bearer <token>`".into())
        })?;
        self.verify_session(token).map(Some)
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1: `bearer`, `BEARER`), and spaces or tabs may follow it.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The longest token subject accepted (the width of the `*_by` and `actor_id` columns).
pub const MAX_SUB: usize = 128;

/// A verified token: who it stands for and until when (epoch seconds, plus `leeway`).
#[derive(Debug, Clone)]
pub struct Session {
    pub actor: Actor,
    pub expires_at: i64,
    pub leeway: u64,
}

impl Session {
    /// The moment after which the token no longer holds, leeway included (epoch seconds).
    pub fn valid_until(&self) -> i64 {
        self.expires_at
            .saturating_add(i64::try_from(self.leeway).unwrap_or(0))
    }
}

/// The secret from config, or one generated once and kept in `DATA_DIR/jwt_secret`.
/// Returns the secret and whether it was generated just now (then the server prints an admin
/// token). An existing file that is too short or readable by others is an error: it is never
/// silently replaced, which would log every holder of a token out.
pub fn load_or_create_secret(configured: Option<&str>, data_dir: &Path) -> Result<(Vec<u8>, bool)> {
    if let Some(secret) = configured {
        if secret.len() < 16 {
            return Err(Error::validation(
                "JWT_SECRET",
                "JWT_SECRET must be at least 16 characters",
            ));
        }
        return Ok((secret.as_bytes().to_vec(), false));
    }
    let path = data_dir.join("jwt_secret");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            check_private(&path, "JWT_SECRET")?;
            if s.trim().len() < 32 {
                return Err(Error::validation(
                    "JWT_SECRET",
                    format!(
                        "{} holds fewer than 32 characters; replace it with a longer secret or delete it to generate one",
                        path.display()
                    ),
                ));
            }
            return Ok((s.trim().as_bytes().to_vec(), false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(data_dir)?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, secret.as_bytes())?;
    Ok((secret.into_bytes(), true))
}

/// The secret file must be readable by its owner only.
pub(crate) fn check_private(path: &Path, var: &str) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::validation(
                var,
                format!(
                    "{} is readable by other users (mode {:o}); run chmod 600 on it",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for ok in [
            "Bearer t",
            "bearer t",
            "BEARER t",
            "BeArEr  t ",
            "Bearer\tt",
        ] {
            assert_eq!(super::bearer(ok), Some("t"), "{ok:?}");
        }
        for bad in ["Bearer", "Bearer ", "Basic t", "Bearert", "t", ""] {
            assert_eq!(super::bearer(bad), None, "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let t = keys
            .issue("u1", Role::Merchant, Some("m1"), Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            keys.verify(&t).unwrap(),
            Actor::Merchant {
                sub: "u1".into(),
                merchant_id: "m1".into()
            }
        );
        let other = TokenKeys::new(b"another-secret-another-secret!!!");
        assert!(matches!(other.verify(&t), Err(Error::Unauthenticated(_))));
        assert!(keys.verify("not.a.jwt").is_err());
        assert!(keys.actor_from_header(Some("Token abc")).is_err());
        assert_eq!(keys.actor_from_header(None).unwrap(), Actor::Anonymous);
        assert!(
            keys.issue("u", Role::Merchant, None, Duration::from_secs(5))
                .is_err()
        );
    }

    #[test]
    fn expired_token_is_rejected() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let now = crate::db::now().timestamp();
        let claims = Claims {
            sub: "a".into(),
            role: Role::Admin,
            merchant_id: None,
            iat: now - 100,
            exp: now - 60,
        };
        let t =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        let err = keys.verify(&t).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn generated_secret_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, gen_a) = load_or_create_secret(None, dir.path()).unwrap();
        let (b, gen_b) = load_or_create_secret(None, dir.path()).unwrap();
        assert!(gen_a);
        assert!(!gen_b, "an existing secret is not announced as generated");
        assert_eq!(a, b);
        assert!(load_or_create_secret(Some("short"), dir.path()).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_bad_secret_file_is_an_error_and_is_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt_secret");
        std::fs::write(&path, "too-short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create_secret(None, dir.path()).unwrap_err();
        assert!(err.to_string().contains("fewer than 32"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "too-short");

        std::fs::write(&path, "x".repeat(64)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_secret(None, dir.path()).unwrap_err();
        assert!(err.to_string().contains("readable by other users"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_or_create_secret(None, dir.path()).is_ok());
    }
}
