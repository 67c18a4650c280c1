//! Tenant scoping in one place, as svix's `secure_find_by_*` does.
//!
//! Every table a merchant owns implements [`Tenant`]: it names its merchant column and, where the
//! product has them, the rows others may read (active templates, usable media). Services then
//! start every query from a scoped finder instead of `Entity::find()`:
//!
//! * [`Scoped::visible_to`]: what an actor may read (its own rows, plus the public ones).
//! * [`Scoped::writable_by`]: what an actor may change (its own rows; admin and service all).
//! * [`Scoped::in_scope`]: the rows of a [`MerchantScope`], for lists that show only one's own.
//! * [`one_writable`]: the one row a write acts on, scoped in the query itself. NOT_FOUND when the
//!   actor may not even read it, FORBIDDEN when it may read it but not change it. It never fetches
//!   a row first and checks afterwards, and it locks the row for the rest of the transaction, so
//!   concurrent writes to one row take turns on PostgreSQL as they do on SQLite. Reads use
//!   [`one_visible`].
//!
//! The rule: anonymous callers read public rows only and write nothing; a merchant reads its own
//! and the public rows and writes its own; admin and service read and write everything. Platform
//! rows (merchant NULL) belong to no merchant, so only admin and service change them.

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Select,
    sea_query::Expr,
};

use super::{Actor, MerchantScope};
use crate::error::{Error, Result};

/// A table whose rows belong to a merchant.
pub trait Tenant: EntityTrait {
    /// What a row is called in NOT_FOUND and FORBIDDEN messages ("template", "webhook", …).
    const NOUN: &'static str;

    /// The column that holds the owning merchant's id.
    fn merchant_column() -> Self::Column;

    /// Rows any caller may read without owning them. None: private to their merchant.
    fn public_rows() -> Option<Condition> {
        None
    }

    /// Whether the platform's own rows (no merchant) are the admin's alone to change. A service
    /// token acts for merchants; a platform-wide webhook receives every merchant's events, so
    /// only an admin may point it somewhere else.
    const PLATFORM_ROWS_ADMIN_ONLY: bool = false;
}

fn nothing() -> Condition {
    Condition::all().add(Expr::val(false))
}

fn privileged(actor: &Actor) -> bool {
    matches!(actor, Actor::Admin { .. } | Actor::Service { .. })
}

/// The scoped finders every service starts from.
pub trait Scoped: Tenant {
    /// The rows `actor` may read.
    fn read_condition(actor: &Actor) -> Condition {
        if privileged(actor) {
            return Condition::all();
        }
        let mut any = Condition::any();
        if let Some(m) = actor.merchant_id() {
            any = any.add(Self::merchant_column().eq(m));
        }
        if let Some(p) = Self::public_rows() {
            any = any.add(p);
        }
        // Wrapped in an AND group, so that filters added by the caller narrow it (adding to an
        // OR group would widen it).
        if any.is_empty() {
            nothing()
        } else {
            Condition::all().add(any)
        }
    }

    /// The rows `actor` may change. Anonymous callers are UNAUTHENTICATED.
    fn write_condition(actor: &Actor) -> Result<Condition> {
        match actor {
            Actor::Admin { .. } => Ok(Condition::all()),
            Actor::Service { .. } if Self::PLATFORM_ROWS_ADMIN_ONLY => {
                Ok(Condition::all().add(Self::merchant_column().is_not_null()))
            }
            Actor::Service { .. } => Ok(Condition::all()),
            Actor::Merchant { merchant_id, .. } => {
                Ok(Condition::all().add(Self::merchant_column().eq(merchant_id.as_str())))
            }
            Actor::Anonymous => Err(Error::Unauthenticated(
                "this operation requires a bearer token".into(),
            )),
        }
    }

    /// The rows of one merchant, or of all (a [`MerchantScope`] from `Actor::merchant_scope`).
    fn scope_condition(scope: &MerchantScope) -> Condition {
        match scope.merchant() {
            Some(m) => Condition::all().add(Self::merchant_column().eq(m.as_str())),
            None => Condition::all(),
        }
    }

    fn visible_to(actor: &Actor) -> Select<Self> {
        Self::find().filter(Self::read_condition(actor))
    }

    fn writable_by(actor: &Actor) -> Result<Select<Self>> {
        Ok(Self::find().filter(Self::write_condition(actor)?))
    }

    fn in_scope(scope: &MerchantScope) -> Select<Self> {
        Self::find().filter(Self::scope_condition(scope))
    }
}

impl<E: Tenant> Scoped for E {}

/// The one row matching `which` that `actor` may change. NOT_FOUND when the actor cannot read it
/// either (another merchant's private row looks like no row at all), FORBIDDEN when it can read
/// it but not change it (an active template of the platform, say).
///
/// The row is locked (`FOR UPDATE` on PostgreSQL; SQLite's one writer serializes anyway) until
/// the caller's transaction ends: a concurrent write to the same row waits, then decides on what
/// this one wrote, instead of deciding on a stale read and losing a compare-and-set (two payments
/// for one order, a CONFLICT where SQLite answers VALIDATION). A transaction that writes an order
/// and its delivery task locks the order first (`orders::lock`).
pub async fn one_writable<E: Tenant, C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    which: Condition,
) -> Result<E::Model> {
    if let Some(row) = E::writable_by(actor)?
        .filter(which.clone())
        .lock_exclusive()
        .one(db)
        .await?
    {
        return Ok(row);
    }
    let readable = E::visible_to(actor).filter(which).one(db).await?.is_some();
    Err(if readable {
        Error::Forbidden(format!("this {} belongs to another merchant", E::NOUN))
    } else {
        Error::not_found(E::NOUN)
    })
}

/// The one row matching `which` that `actor` may read, else NOT_FOUND. An anonymous caller of a
/// table with no public rows could read none of them: UNAUTHENTICATED, not NOT_FOUND.
pub async fn one_visible<E: Tenant, C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    which: Condition,
) -> Result<E::Model> {
    if E::public_rows().is_none() {
        actor.require_authenticated()?;
    }
    E::visible_to(actor)
        .filter(which)
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found(E::NOUN))
}

// ---- the tenant tables ------------------------------------------------------------------------

impl Tenant for entity::message_template::Entity {
    const NOUN: &'static str = "template";
    fn merchant_column() -> Self::Column {
        entity::message_template::Column::MerchantId
    }
    /// Active templates are the catalogue every bot reads (the seed's public list).
    fn public_rows() -> Option<Condition> {
        Some(
            Condition::all()
                .add(entity::message_template::Column::Status.eq(entity::TemplateStatus::Active)),
        )
    }
}

impl Tenant for entity::media_file::Entity {
    const NOUN: &'static str = "media";
    fn merchant_column() -> Self::Column {
        entity::media_file::Column::MerchantId
    }
    /// A usable upload is public: product images are shown to customers.
    fn public_rows() -> Option<Condition> {
        use entity::{MediaStatus, media_file::Column};
        Some(
            Condition::all()
                .add(Column::Status.is_in([MediaStatus::Ready, MediaStatus::Processing])),
        )
    }
}

impl Tenant for entity::webhook::Entity {
    const NOUN: &'static str = "webhook";
    const PLATFORM_ROWS_ADMIN_ONLY: bool = true;
    fn merchant_column() -> Self::Column {
        entity::webhook::Column::MerchantId
    }
}

impl Tenant for entity::order::Entity {
    const NOUN: &'static str = "order";
    fn merchant_column() -> Self::Column {
        entity::order::Column::MerchantId
    }
}

impl Tenant for entity::delivery_task::Entity {
    const NOUN: &'static str = "delivery task";
    fn merchant_column() -> Self::Column {
        entity::delivery_task::Column::MerchantId
    }
}

impl Tenant for entity::message::Entity {
    const NOUN: &'static str = "message";
    fn merchant_column() -> Self::Column {
        entity::message::Column::MerchantId
    }
}

impl Tenant for entity::event::Entity {
    const NOUN: &'static str = "event";
    fn merchant_column() -> Self::Column {
        entity::event::Column::MerchantId
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;
    use entity::message_template::Entity as Templates;

    /// The WHERE clause of a template read by `actor`.
    fn sql(actor: &Actor) -> String {
        let q = Templates::visible_to(actor)
            .build(DbBackend::Postgres)
            .to_string();
        q[q.find(" WHERE ").expect("always scoped")..].to_owned()
    }

    #[test]
    fn each_actor_gets_its_own_condition() {
        let m = Actor::Merchant {
            sub: "u".into(),
            merchant_id: "m-a".into(),
        };
        let q = sql(&m);
        assert!(
            q.contains("\"merchant_id\" = 'm-a' OR ") && q.contains("\"status\" = 'active'"),
            "{q}"
        );
        let admin = sql(&Actor::Admin { sub: "a".into() });
        assert!(
            !admin.contains("merchant_id") && !admin.contains("status"),
            "{admin}"
        );
        let anon = sql(&Actor::Anonymous);
        assert!(
            !anon.contains("merchant_id") && anon.contains("'active'"),
            "{anon}"
        );
        let w = Templates::writable_by(&m)
            .unwrap()
            .build(DbBackend::Postgres)
            .to_string();
        let w = &w[w.find(" WHERE ").unwrap()..];
        assert!(
            w.contains("\"merchant_id\" = 'm-a'") && !w.contains("active"),
            "{w}"
        );
        assert!(Templates::writable_by(&Actor::Anonymous).is_err());
    }

    #[test]
    fn a_private_table_shows_anonymous_callers_nothing() {
        let q = entity::event::Entity::visible_to(&Actor::Anonymous)
            .build(DbBackend::Postgres)
            .to_string();
        assert!(q.contains("WHERE FALSE"), "{q}");
    }
}
