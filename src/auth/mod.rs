//! Who is calling, and how much they may do.
//!
//! * [`token`]: HS256 JWTs (`sub`, `role`, `merchant_id`, `exp`) signed with `JWT_SECRET`.
//! * [`Actor`]: the per-request identity every service function takes and scopes its queries by.
//!   No token means [`Actor::Anonymous`]; a bad token is an error, never anonymous.
//! * [`rate_limit`]: per-client-IP limits.

pub mod rate_limit;
pub mod scope;
pub mod token;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The roles a token may carry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, async_graphql::Enum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Merchant,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Merchant => "merchant",
            Role::Service => "service",
        }
    }
}

/// The widest merchant id (the `merchant_id` columns).
pub const MAX_MERCHANT_ID: usize = 64;

/// A merchant id: 1 to 64 characters of letters, digits, `.`, `_`, `-`, `:` and `@`.
pub fn valid_merchant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MERCHANT_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
}

/// Checks a merchant id given as input (`field` names it in the error).
pub fn parse_merchant_id(field: &str, id: &str) -> Result<String> {
    let id = id.trim();
    if valid_merchant_id(id) {
        Ok(id.to_owned())
    } else {
        Err(Error::validation(
            field,
            format!(
                "{field} must have 1 to {MAX_MERCHANT_ID} characters of letters, digits, '.', '_', '-', ':' or '@'"
            ),
        ))
    }
}

/// A checked merchant id (see [`valid_merchant_id`]). Everything a merchant owns is keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MerchantId(String);

impl MerchantId {
    /// Parses input named `field` (which the VALIDATION error names).
    pub fn parse(field: &str, id: &str) -> Result<Self> {
        parse_merchant_id(field, id).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for MerchantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which merchants' rows a read may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MerchantScope {
    /// Every merchant's (admin and service callers that named none).
    All,
    One(MerchantId),
}

impl MerchantScope {
    pub fn allows(&self, merchant: &str) -> bool {
        match self {
            MerchantScope::All => true,
            MerchantScope::One(m) => m.as_str() == merchant,
        }
    }

    pub fn merchant(&self) -> Option<&MerchantId> {
        match self {
            MerchantScope::All => None,
            MerchantScope::One(m) => Some(m),
        }
    }
}

/// The caller of a service function. Tenant data is always scoped by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Anonymous,
    Merchant { sub: String, merchant_id: String },
    Service { sub: String },
    Admin { sub: String },
}

impl Actor {
    pub fn id(&self) -> Option<&str> {
        match self {
            Actor::Anonymous => None,
            Actor::Merchant { sub, .. } | Actor::Service { sub } | Actor::Admin { sub } => {
                Some(sub)
            }
        }
    }

    pub fn role_name(&self) -> &'static str {
        match self {
            Actor::Anonymous => "anonymous",
            Actor::Merchant { .. } => "merchant",
            Actor::Service { .. } => "service",
            Actor::Admin { .. } => "admin",
        }
    }

    pub fn merchant_id(&self) -> Option<&str> {
        match self {
            Actor::Merchant { merchant_id, .. } => Some(merchant_id),
            _ => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Actor::Admin { .. })
    }

    /// Any valid token.
    pub fn require_authenticated(&self) -> Result<()> {
        match self {
            Actor::Anonymous => Err(Error::Unauthenticated(
                "this operation requires a bearer token".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The merchants a read may see. A merchant sees its own (naming another is FORBIDDEN);
    /// admin and service see the one they name, or all; anonymous callers are refused.
    pub fn merchant_scope(&self, requested: Option<&str>) -> Result<MerchantScope> {
        let requested = requested
            .map(|m| MerchantId::parse("merchantId", m))
            .transpose()?;
        match self {
            Actor::Anonymous => Err(Error::Unauthenticated(
                "this operation requires a bearer token".into(),
            )),
            Actor::Merchant { merchant_id, .. } => match requested {
                Some(r) if r.as_str() != merchant_id => Err(Error::Forbidden(
                    "a merchant token can only reach its own merchant".into(),
                )),
                _ => Ok(MerchantScope::One(MerchantId(merchant_id.clone()))),
            },
            Actor::Admin { .. } | Actor::Service { .. } => {
                Ok(requested.map_or(MerchantScope::All, MerchantScope::One))
            }
        }
    }

    /// The one merchant a write acts for: a merchant's own; admin and service must name it.
    pub fn owning_merchant(&self, requested: Option<&str>) -> Result<MerchantId> {
        match self.merchant_scope(requested)? {
            MerchantScope::One(m) => Ok(m),
            MerchantScope::All => Err(Error::validation(
                "merchantId",
                "admin and service callers must name the merchant (merchantId)",
            )),
        }
    }

    pub fn require_admin(&self) -> Result<()> {
        self.require_authenticated()?;
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "this operation requires the admin role".into(),
            ))
        }
    }
}

/// Everything a service function needs to know about the request it serves.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub actor: Actor,
    pub ip: Option<IpAddr>,
    pub request_id: Option<String>,
}

impl RequestContext {
    pub fn new(actor: Actor) -> Self {
        Self {
            actor,
            ip: None,
            request_id: None,
        }
    }

    /// For work the system does by itself (seeding, workers).
    pub fn system() -> Self {
        Self::new(Actor::Service {
            sub: "system".into(),
        })
    }
}
