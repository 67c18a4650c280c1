//! Cursor pagination shared by every list: `first` (1..=100, default 20) and an opaque `after`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

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
