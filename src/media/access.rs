//! Who may see and change which media and which product's media. Row-level reads and writes go
//! through the scoped finders of [`crate::auth::scope`] (media's `Tenant` impl holds the rule that a
//! usable upload is public); the field-level and list rules live here:
//!
//! * `mediaList`: a merchant lists its own media; admin and service list all (optionally one
//!   merchant's); anonymous callers are refused.
//! * One media row (`media(id)`, `GET /api/media/:id`) is public once its upload is usable (READY,
//!   or PROCESSING further sizes), because product images are public. `ownerId`, `originalName`
//!   and `error` are shown only to its merchant, admins and the service; so is a row that is not
//!   usable (PENDING, FAILED). The uploader's token subject (`ownerId`) grants nothing of its own:
//!   subjects are unique only within a merchant (two merchants' tokens may both say `sub: bob`).
//! * Changing media: its merchant, an admin or the service.
//! * A product is `(merchant, productId)`. A merchant acts on its own products; admin and service
//!   callers name the merchant; a public read names the merchant too.

use entity::media_file;

use super::intake;
use crate::{
    auth::Actor,
    error::{Error, Result},
};

fn privileged(actor: &Actor) -> bool {
    matches!(actor, Actor::Admin { .. } | Actor::Service { .. })
}

/// Whether `actor` sees the row's private fields (`ownerId`, `originalName`, `error`).
pub fn sees_private(actor: &Actor, row: &media_file::Model) -> bool {
    privileged(actor)
        || matches!(actor, Actor::Merchant { merchant_id, .. } if row.merchant_id.as_deref() == Some(merchant_id.as_str()))
}

/// The merchant an upload belongs to: a merchant's own; admin and service may name one (or none,
/// for platform media).
pub fn upload_merchant(actor: &Actor, requested: Option<String>) -> Result<Option<String>> {
    actor.require_authenticated()?;
    match (actor, requested) {
        (Actor::Merchant { merchant_id, .. }, Some(m)) if &m != merchant_id => Err(
            Error::Forbidden("a merchant may upload only its own media".into()),
        ),
        (Actor::Merchant { merchant_id, .. }, _) => {
            intake::check_merchant_id(merchant_id)?;
            Ok(Some(merchant_id.clone()))
        }
        (_, m) => Ok(m),
    }
}

/// A `merchantId` argument as given, refused when blank: an empty one is a mistake (an unset
/// variable), not "none" or "every merchant", nor a merchant named "". (The seed's REST upload
/// form reads a blank field as none; GraphQL does not.)
pub fn not_blank(requested: Option<String>) -> Result<Option<String>> {
    if requested.as_deref().is_some_and(|m| m.trim().is_empty()) {
        return Err(Error::validation(
            "merchantId",
            "merchantId must not be empty: leave it out (or null) for none",
        ));
    }
    Ok(requested)
}

/// The merchant filter of `mediaList`: `Some` restricts the list to one merchant.
pub fn list_scope(actor: &Actor, requested: Option<String>) -> Result<Option<String>> {
    let requested = not_blank(requested)?;
    match actor {
        Actor::Anonymous => Err(Error::Unauthenticated(
            "listing media requires a bearer token".into(),
        )),
        Actor::Merchant { merchant_id, .. } => match requested {
            Some(m) if &m != merchant_id => Err(Error::Forbidden(
                "a merchant may list only its own media".into(),
            )),
            _ => Ok(Some(merchant_id.clone())),
        },
        Actor::Admin { .. } | Actor::Service { .. } => Ok(requested),
    }
}

/// Whether a product operation changes data or only reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductAccess {
    Read,
    Write,
}

/// The merchant whose product an operation addresses.
pub fn product_merchant(
    actor: &Actor,
    requested: Option<String>,
    access: ProductAccess,
) -> Result<String> {
    let requested = intake::merchant_id(requested)?;
    let required = || {
        Error::validation(
            "merchantId",
            "merchantId is required: a product belongs to a merchant",
        )
    };
    match (actor, access) {
        (Actor::Anonymous, ProductAccess::Write) => Err(Error::Unauthenticated(
            "this operation requires a bearer token".into(),
        )),
        (Actor::Merchant { merchant_id, .. }, access) => match requested {
            None => {
                intake::check_merchant_id(merchant_id)?;
                Ok(merchant_id.clone())
            }
            Some(m) if &m == merchant_id => Ok(m),
            // Anyone may read any merchant's product media; writing is for the owner.
            Some(m) if access == ProductAccess::Read => Ok(m),
            Some(_) => Err(Error::Forbidden(
                "a merchant may change only its own products".into(),
            )),
        },
        _ => requested.ok_or_else(required),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merchant(id: &str) -> Actor {
        Actor::Merchant {
            sub: format!("u-{id}"),
            merchant_id: id.into(),
        }
    }

    #[test]
    fn product_merchant_rules() {
        use ProductAccess::*;
        let admin = Actor::Admin { sub: "a".into() };
        let service = Actor::Service { sub: "s".into() };
        let code = |a: &Actor, r: Option<&str>, acc| {
            product_merchant(a, r.map(str::to_owned), acc).map_err(|e| e.code())
        };
        assert_eq!(code(&merchant("m1"), None, Write), Ok("m1".into()));
        assert_eq!(code(&merchant("m1"), Some("m1"), Write), Ok("m1".into()));
        assert_eq!(code(&merchant("m1"), Some("m2"), Write), Err("FORBIDDEN"));
        assert_eq!(code(&merchant("m1"), Some("m2"), Read), Ok("m2".into()));
        for a in [&admin, &service] {
            assert_eq!(code(a, None, Write), Err("VALIDATION"));
            assert_eq!(code(a, Some(" "), Read), Err("VALIDATION"));
            assert_eq!(code(a, Some("m2"), Write), Ok("m2".into()));
        }
        assert_eq!(
            code(&Actor::Anonymous, Some("m2"), Write),
            Err("UNAUTHENTICATED")
        );
        assert_eq!(code(&Actor::Anonymous, None, Read), Err("VALIDATION"));
        assert_eq!(code(&Actor::Anonymous, Some("m2"), Read), Ok("m2".into()));
        assert_eq!(
            code(&admin, Some(&"x".repeat(65)), Write),
            Err("VALIDATION")
        );
    }

    #[test]
    fn list_scope_rules() {
        let admin = Actor::Admin { sub: "a".into() };
        assert_eq!(
            list_scope(&Actor::Anonymous, None).unwrap_err().code(),
            "UNAUTHENTICATED"
        );
        assert_eq!(
            list_scope(&merchant("m1"), None).unwrap(),
            Some("m1".into())
        );
        assert_eq!(
            list_scope(&merchant("m1"), Some("m2".into()))
                .unwrap_err()
                .code(),
            "FORBIDDEN"
        );
        assert_eq!(list_scope(&admin, None).unwrap(), None);
        assert_eq!(
            list_scope(&admin, Some("m2".into())).unwrap(),
            Some("m2".into())
        );
    }
}
