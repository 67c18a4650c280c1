//! Cursor pagination shared by every list: `first` (1..=100, default 20) and an opaque `after`.
//!
//! Most lists page newest first by a time-ordered (v7) uuid id; [`NewestFirst`] is that keyset
//! pager, written once. The cursor is `base64url("{kind}:{uuid}")`, so cursors handed out before
//! it existed still decode.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Select,
};
use uuid::Uuid;

use crate::error::{Error, Result};

pub const DEFAULT_PAGE: u64 = 20;
pub const MAX_PAGE: u64 = 100;

#[derive(Debug, Clone, Default)]
pub struct PageArgs {
    pub first: Option<i32>,
    pub after: Option<String>,
}

impl PageArgs {
    pub fn limit(&self) -> Result<u64> {
        match self.first {
            None => Ok(DEFAULT_PAGE),
            Some(n) if n >= 1 && n as u64 <= MAX_PAGE => Ok(n as u64),
            Some(_) => Err(Error::validation(
                "first",
                format!("first must be between 1 and {MAX_PAGE}"),
            )),
        }
    }

    /// A newest-first keyset pager over this page's arguments, for the list whose cursors carry
    /// `kind`. Checks `first` now (before the caller's own checks, as every list did).
    pub fn newest_first<'a>(&'a self, kind: &'a str) -> Result<NewestFirst<'a>> {
        Ok(NewestFirst {
            args: self,
            kind,
            limit: self.limit()?,
        })
    }

    /// The decoded `after` cursor, tagged with `kind` so a cursor from one list is refused by another.
    pub fn after_key(&self, kind: &str) -> Result<Option<String>> {
        self.after
            .as_deref()
            .map(|c| decode_cursor(kind, c))
            .transpose()
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// 0 when the caller did not ask for it (a list may skip its COUNT query).
    pub total_count: u64,
    pub has_next_page: bool,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total_count: self.total_count,
            has_next_page: self.has_next_page,
        }
    }

    pub fn try_map<U>(self, f: impl FnMut(T) -> Result<U>) -> Result<Page<U>> {
        Ok(Page {
            items: self.items.into_iter().map(f).collect::<Result<_>>()?,
            total_count: self.total_count,
            has_next_page: self.has_next_page,
        })
    }
}

/// Newest-first keyset paging by a time-ordered uuid id: `id < after`, `ORDER BY id DESC`, one
/// row more than asked to learn `hasNextPage`, and the filtered COUNT for `totalCount`.
pub struct NewestFirst<'a> {
    args: &'a PageArgs,
    kind: &'a str,
    limit: u64,
}

impl NewestFirst<'_> {
    /// The page of `select` (already filtered and scoped), keyed by its uuid column `id`.
    pub async fn fetch<E, C>(
        &self,
        db: &C,
        select: Select<E>,
        id: E::Column,
    ) -> Result<Page<E::Model>>
    where
        E: EntityTrait,
        E::Model: FromQueryResult + Send + Sync,
        C: ConnectionTrait,
    {
        let after = match self.after()? {
            Some(after) => Some(
                Uuid::parse_str(&after)
                    .map_err(|_| Error::validation("after", "after is not a valid cursor"))?,
            ),
            None => None,
        };
        self.fetch_after(db, select, id, after).await
    }

    /// The decoded `after` cursor of this list, if any.
    pub fn after(&self) -> Result<Option<String>> {
        self.args.after_key(self.kind)
    }

    /// [`NewestFirst::fetch`] keyed by any unique, ordered column `key`, the rows before `after`
    /// (the key the caller found for its cursor: an event's commit position, say).
    pub async fn fetch_after<E, C, K>(
        &self,
        db: &C,
        select: Select<E>,
        key: E::Column,
        after: Option<K>,
    ) -> Result<Page<E::Model>>
    where
        E: EntityTrait,
        E::Model: FromQueryResult + Send + Sync,
        C: ConnectionTrait,
        K: Into<sea_orm::Value>,
    {
        let total_count = select.clone().count(db).await?;
        let mut q = select;
        if let Some(after) = after {
            q = q.filter(key.lt(after));
        }
        let mut items = q.order_by_desc(key).limit(self.limit + 1).all(db).await?;
        let has_next_page = items.len() as u64 > self.limit;
        items.truncate(self.limit as usize);
        Ok(Page {
            items,
            total_count,
            has_next_page,
        })
    }
}

pub fn encode_cursor(kind: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{key}"))
}

pub fn decode_cursor(kind: &str, cursor: &str) -> Result<String> {
    let bad = || Error::validation("after", "after is not a valid cursor for this list");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    raw.strip_prefix(kind)
        .and_then(|r| r.strip_prefix(':'))
        .map(str::to_owned)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_typed() {
        let c = encode_cursor("tpl", "welcome");
        assert_eq!(decode_cursor("tpl", &c).unwrap(), "welcome");
        assert!(decode_cursor("audit", &c).is_err());
        assert!(decode_cursor("tpl", "%%%").is_err());
        assert!(
            PageArgs {
                first: Some(0),
                after: None
            }
            .limit()
            .is_err()
        );
        assert!(
            PageArgs {
                first: Some(101),
                after: None
            }
            .limit()
            .is_err()
        );
        assert_eq!(PageArgs::default().limit().unwrap(), 20);
    }
}
