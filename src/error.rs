//! The one error type. Every fallible service function returns [`Error`]; the GraphQL layer turns it
//! into `extensions.code` (+ `field`) and the REST layer into a status code and the seed's
//! `{"success":false,"error":"…"}` body. Internal details are logged here and never sent to clients.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One limit violation or bad field: `field` is a path such as `buttons[1].title`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, async_graphql::SimpleObject)]
#[graphql(name = "Violation")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input. `details` lists every violation when there is more than one.
    #[error("{message}")]
    Validation {
        field: String,
        message: String,
        details: Vec<FieldError>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit exceeded, retry in {retry_after_secs}s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The route exists, but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A service this request needs (the database, Redis, the WhatsApp Cloud API) did not
    /// answer; the same request may be sent again.
    #[error("{0}")]
    Unavailable(String),
    /// A resume point (`after`) older than the event history holds.
    #[error("{0}")]
    HistoryExpired(String),
    /// A subscriber fell a whole buffer behind and was cut off; it resumes with `after`.
    #[error("{0}")]
    Lagged(String),
    /// The message is for the log only; clients see "internal error".
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// A VALIDATION error carrying every violation; the first names the field.
    pub fn violations(list: Vec<FieldError>) -> Self {
        let first = list.first().cloned().unwrap_or(FieldError {
            field: "input".into(),
            message: "invalid input".into(),
        });
        let message = if list.len() > 1 {
            format!("{} (and {} more)", first.message, list.len() - 1)
        } else {
            first.message.clone()
        };
        Self::Validation {
            field: first.field,
            message,
            details: list,
        }
    }

    /// A patch field that may be absent (keep it) but not `null`, because the row always has
    /// one. `None` is absent, `Some(None)` an explicit null: VALIDATION naming the field.
    pub fn not_null<T>(field: &str, value: Option<Option<T>>) -> Result<Option<T>> {
        match value {
            Some(None) => Err(Self::validation(
                field,
                format!("{field} cannot be null: leave it out to keep it"),
            )),
            Some(Some(v)) => Ok(Some(v)),
            None => Ok(None),
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { .. } => "VALIDATION",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMedia(_) => "UNSUPPORTED_MEDIA",
            Self::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::HistoryExpired(_) => "HISTORY_EXPIRED",
            Self::Lagged(_) => "LAGGED",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::HistoryExpired(_) => StatusCode::GONE,
            Self::Lagged(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text a client may see. Internal errors are logged once, here, and replaced.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Validation { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The JSON error object GraphQL clients see (used where async-graphql is not in the loop,
    /// e.g. a rejected token or a rate-limited request).
    pub fn graphql_body(&self) -> serde_json::Value {
        let mut ext = json!({ "code": self.code() });
        if let Some(field) = self.field() {
            ext["field"] = json!(field);
        }
        if let Self::RateLimited { retry_after_secs } = self {
            ext["retryAfter"] = json!(retry_after_secs);
        }
        json!({ "data": null, "errors": [{ "message": self.public_message(), "extensions": ext }] })
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// A response in the GraphQL error shape with this error's HTTP status.
    pub fn into_graphql_response(self) -> Response {
        let mut res = (self.status(), Json(self.graphql_body())).into_response();
        add_retry_after(&mut res, self.retry_after());
        res
    }
}

fn add_retry_after(res: &mut Response, secs: Option<u64>) {
    if let Some(secs) = secs {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
}

/// REST responses keep the seed's shape: `{"success":false,"error":"…"}`, plus `code` and `field`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut body = json!({
            "success": false,
            "error": self.public_message(),
            "code": self.code(),
        });
        if let Some(field) = self.field() {
            body["field"] = json!(field);
        }
        if let Self::Validation { details, .. } = &self
            && !details.is_empty()
        {
            body["details"] = json!(details);
        }
        let mut res = (self.status(), Json(body)).into_response();
        add_retry_after(&mut res, self.retry_after());
        res
    }
}

impl From<Error> for async_graphql::Error {
    fn from(err: Error) -> Self {
        let message = err.public_message();
        use async_graphql::ErrorExtensions;
        async_graphql::Error::new(message).extend_with(|_, ext| {
            ext.set("code", err.code());
            if let Some(field) = err.field() {
                ext.set("field", field);
            }
            if let Error::Validation { details, .. } = &err
                && !details.is_empty()
            {
                let list: Vec<async_graphql::Value> = details
                    .iter()
                    .map(|d| {
                        let mut m = async_graphql::indexmap::IndexMap::new();
                        m.insert(
                            async_graphql::Name::new("field"),
                            async_graphql::Value::from(d.field.clone()),
                        );
                        m.insert(
                            async_graphql::Name::new("message"),
                            async_graphql::Value::from(d.message.clone()),
                        );
                        async_graphql::Value::Object(m)
                    })
                    .collect();
                ext.set("violations", list);
            }
            if let Error::RateLimited { retry_after_secs } = &err {
                ext.set("retryAfter", *retry_after_secs);
            }
        })
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::{DbErr, SqlErr};
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                return Self::Conflict("a record with the same unique key already exists".into());
            }
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => {
                return Self::validation("id", "a referenced record does not exist");
            }
            _ => {}
        }
        if let Some(code) = sqlstate(&err)
            && code.starts_with("22")
        {
            // SQLSTATE class 22, "data exception": a value the column cannot hold (a NUL byte in
            // text, an out-of-range number or date, a string over the column width). The input
            // is at fault, and the transaction it was in is rolled back.
            tracing::debug!(%code, error = %err, "database refused a value");
            return Self::validation(
                "input",
                format!("a value is not valid for storage (SQLSTATE {code})"),
            );
        }
        if let Some(code) = sqlstate(&err)
            && code.starts_with("40")
        {
            // SQLSTATE class 40, "transaction rollback": a deadlock (40P01) or a serialization
            // failure (40001) with a concurrent transaction. Nothing was written, and the same
            // request may be sent again: a conflict, not the server's fault.
            tracing::info!(%code, error = %err, "transaction rolled back by a concurrent one");
            return Self::Conflict(
                "the change collided with a concurrent one and was not made; send it again".into(),
            );
        }
        if unreachable_database(&err) {
            tracing::warn!(error = %err, "the database did not answer");
            return Self::Unavailable(
                "the database is unavailable at the moment; try again shortly".into(),
            );
        }
        match err {
            DbErr::RecordNotFound(what) => Self::NotFound(what),
            other => Self::Internal(format!("database: {other}")),
        }
    }
}

/// Whether `err` says the database could not be reached or had no room for the request (no
/// connection from the pool in time, a connection lost, PostgreSQL shutting down or out of
/// connections), not that the statement was wrong: the request may be sent again as it is.
fn unreachable_database(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)) => {
            match e.as_ref() {
                Sqlx::Io(_) | Sqlx::Tls(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed => true,
                Sqlx::WorkerCrashed => true,
                // SQLSTATE 08: connection exception; 53: insufficient resources (too many
                // connections, disk full); 57P01-57P03: the server is shutting down or starting.
                Sqlx::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("53") || c.starts_with("57P0")
                }),
                _ => false,
            }
        }
        _ => false,
    }
}

impl Error {
    /// A Redis failure in `what` (the job queue, the event bus, the rate limiter). Redis not
    /// answering (connection lost, a command timed out, the client's queue full) is UNAVAILABLE:
    /// the request may be sent again. A command that timed out may still have run, which is why
    /// writes that go through Redis take an idempotency key or a `jobId`. Anything else is a
    /// fault of this program's and stays internal.
    pub fn redis(what: &str, err: &fred::error::Error) -> Self {
        use fred::error::ErrorKind as K;
        match err.kind() {
            K::IO | K::Timeout | K::Canceled | K::Backpressure => {
                tracing::warn!(error = %err, "{what}: Redis did not answer");
                Self::Unavailable(format!(
                    "{what} is unavailable at the moment (Redis did not answer); try again shortly"
                ))
            }
            _ => Self::Internal(format!("{what}: redis: {err}")),
        }
    }
}

/// The SQLSTATE of a database error, when the driver reported one.
fn sqlstate(err: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr};
    let (DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e))) = err
    else {
        return None;
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::Internal(format!("io: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable() {
        use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr, sqlx};
        for err in [
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
            DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
            DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::PoolTimedOut.into())),
            DbErr::Exec(RuntimeErr::SqlxError(
                sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()).into(),
            )),
        ] {
            let e = Error::from(err);
            assert_eq!(e.code(), "UNAVAILABLE", "{e:?}");
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(!e.to_string().contains("Pool"), "no driver detail: {e}");
        }
        // A statement the database refused for what it is stays a fault of the program's.
        let e = Error::from(DbErr::Query(RuntimeErr::Internal("syntax".into())));
        assert_eq!(e.code(), "INTERNAL");
    }

    #[test]
    fn redis_not_answering_is_unavailable() {
        use fred::error::{Error as Fred, ErrorKind};
        for kind in [
            ErrorKind::IO,
            ErrorKind::Timeout,
            ErrorKind::Canceled,
            ErrorKind::Backpressure,
        ] {
            let e = Error::redis("the job queue", &Fred::new(kind, "connection refused"));
            assert_eq!(e.code(), "UNAVAILABLE");
            assert!(
                e.to_string().starts_with("the job queue is unavailable"),
                "{e}"
            );
            assert!(!e.to_string().contains("refused"), "no driver detail: {e}");
        }
        let e = Error::redis("the job queue", &Fred::new(ErrorKind::Parse, "bad reply"));
        assert_eq!(e.code(), "INTERNAL");
    }
}
