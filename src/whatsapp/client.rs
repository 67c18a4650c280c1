//! The outbound transport: the Cloud API over HTTPS, or (with no credentials anywhere) a recording
//! transport that keeps what would have been sent, so the whole flow works without Meta.
//!
//! Failures are classified as Meta documents them: HTTP 429 and 5xx, and the throttling and
//! temporary codes (1, 2, 4, 80007, 130429, 131000, 131016, 131048, 131056, 133004) are worth a
//! retry, honouring `Retry-After`; every other 4xx (invalid recipient 131026, outside the 24-hour
//! window 131047, template errors 132xxx, bad parameters 100, auth 190, …) is final.

use std::time::Duration;

use serde_json::Value;

use super::config::WhatsAppConfig;
use crate::error::{Error, Result};

/// Which number sends, and with what token.
#[derive(Clone)]
pub struct Credentials {
    pub phone_number_id: String,
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("phone_number_id", &self.phone_number_id)
            .finish_non_exhaustive()
    }
}

/// How one message goes out.
#[derive(Debug, Clone)]
pub enum Transport {
    CloudApi(Credentials),
    /// No credentials: keep the message in the outbox instead.
    Recording,
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::CloudApi(_) => "cloud_api",
            Transport::Recording => "recording",
        }
    }
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Worth another try, after `retry_after` when the provider said so.
    Retryable {
        reason: String,
        code: Option<i64>,
        retry_after: Option<Duration>,
    },
    /// Will not get better by retrying.
    Final { reason: String, code: Option<i64> },
}

/// The longest `Retry-After` honoured; longer answers are capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Meta error codes that are throttling or temporary, whatever the HTTP status.
const RETRYABLE_CODES: &[i64] = &[
    1, 2, 4, 80007, 130429, 131000, 131016, 131048, 131056, 133004,
];

/// The outbound side held in the app state: the HTTP client and the platform number (from
/// `WHATSAPP_TOKEN` + `WHATSAPP_PHONE_NUMBER_ID`), picked once at start-up.
pub struct Outbound {
    http: reqwest::Client,
    api_base: String,
    api_version: String,
    platform: Option<Credentials>,
}

impl Outbound {
    pub fn new(config: &WhatsAppConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(Error::internal)?;
        let platform = match (&config.token, &config.phone_number_id) {
            (Some(token), Some(id)) => Some(Credentials {
                phone_number_id: id.clone(),
                token: token.clone(),
            }),
            _ => None,
        };
        Ok(Self {
            http,
            api_base: config.api_base.trim_end_matches('/').to_owned(),
            api_version: config.api_version.clone(),
            platform,
        })
    }

    /// The platform number's credentials, when configured.
    pub fn platform(&self) -> Option<&Credentials> {
        self.platform.as_ref()
    }

    /// `POST {base}/{version}/{phone_number_id}/messages` with `body` as is. Returns the
    /// provider's message id (`wamid…`).
    pub async fn send(
        &self,
        creds: &Credentials,
        body: &Value,
    ) -> std::result::Result<Option<String>, SendError> {
        let url = format!(
            "{}/{}/{}/messages",
            self.api_base, self.api_version, creds.phone_number_id
        );
        let res = self
            .http
            .post(url)
            .bearer_auth(&creds.token)
            .json(body)
            .send()
            .await
            .map_err(|e| SendError::Retryable {
                reason: format!("Cloud API unreachable: {}", without_url(&e)),
                code: None,
                retry_after: None,
            })?;
        let status = res.status();
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Meta's bodies are small; anything past 64 KiB is not an answer worth reading.
        let json = answer(&read_capped(res, 64 * 1024).await);
        if status.is_success() {
            return Ok(json["messages"][0]["id"].as_str().map(str::to_owned));
        }
        Err(classify(status.as_u16(), &json, retry_after))
    }
}

impl Outbound {
    /// Proves that `creds.token` may use `creds.phone_number_id`: `GET {base}/{version}/{id}`
    /// with the token must answer that number. A merchant that names a number must hold a token
    /// Meta accepts for it, or it could claim another business's number (and its inbound
    /// messages) before that business registers. A refusal is VALIDATION on `accessToken`; an
    /// answer that does not come is UNAVAILABLE, and nothing is stored either way.
    pub async fn verify_number(&self, creds: &Credentials) -> Result<()> {
        let url = format!(
            "{}/{}/{}",
            self.api_base, self.api_version, creds.phone_number_id
        );
        let res = self
            .http
            .get(url)
            .query(&[("fields", "id")])
            .bearer_auth(&creds.token)
            .send()
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "the Cloud API could not be reached to check the phone number id: {}",
                    without_url(&e)
                ))
            })?;
        let status = res.status();
        let json = answer(&read_capped(res, 64 * 1024).await);
        if status.is_success() && json["id"].as_str() == Some(creds.phone_number_id.as_str()) {
            return Ok(());
        }
        match classify(status.as_u16(), &json, None) {
            SendError::Retryable { reason, .. } => Err(Error::Unavailable(format!(
                "the phone number id could not be checked now: {reason}"
            ))),
            SendError::Final { reason, .. } => Err(Error::validation(
                "accessToken",
                format!(
                    "the Cloud API does not accept this access token for this phone number id ({reason})"
                ),
            )),
        }
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<url>");
    }
    if e.is_timeout() {
        "timed out".into()
    } else {
        s
    }
}

async fn read_capped(mut res: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    out
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is still "later than the cap".
        v.parse::<u64>()
            .map_or(MAX_RETRY_AFTER, Duration::from_secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (at.with_timezone(&chrono::Utc) - crate::db::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// What this service reads of a Cloud API answer, read leniently and written back as plain
/// JSON for [`classify`]: `messages[].id`, `id`, and `error`'s `code`, `message` and
/// `error_data.details`. Everything else is skipped unread, so an odd value elsewhere (a
/// number past f64, nesting past serde_json's 128 levels) costs nothing; a code sent as a
/// string or a whole float is still the code; a lone surrogate escape is U+FFFD. An answer that
/// is not JSON at all reads as null.
fn answer(bytes: &[u8]) -> Value {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Answer {
        messages: Option<Vec<Sent>>,
        id: Loose,
        error: Option<MetaError>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Sent {
        id: Loose,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct MetaError {
        code: Loose,
        message: Loose,
        error_data: Option<Details>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Details {
        details: Loose,
    }
    let Ok(a) = crate::input::parse_lossy::<Answer>(bytes) else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    if let Some(sent) = a.messages {
        out.insert(
            "messages".into(),
            sent.into_iter()
                .map(|s| serde_json::json!({ "id": s.id.text() }))
                .collect(),
        );
    }
    if let Some(id) = a.id.text() {
        out.insert("id".into(), id.into());
    }
    if let Some(e) = a.error {
        out.insert(
            "error".into(),
            serde_json::json!({
                "code": e.code.whole(),
                "message": e.message.text(),
                "error_data": { "details": e.error_data.and_then(|d| d.details.text()) },
            }),
        );
    }
    Value::Object(out)
}

/// Any JSON value, of which only a string or a number is kept; anything else is stepped over
/// unread.
#[derive(Default)]
enum Loose {
    Text(String),
    Number(f64),
    Int(i64),
    #[default]
    Other,
}

impl Loose {
    /// A string, or nothing.
    fn text(self) -> Option<String> {
        match self {
            Loose::Text(t) => Some(t),
            _ => None,
        }
    }

    /// A whole number, from a number, a whole float or a numeric string, or nothing.
    fn whole(self) -> Option<i64> {
        match self {
            Loose::Int(n) => Some(n),
            Loose::Number(f) => (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64),
            Loose::Text(t) => t.trim().parse().ok(),
            Loose::Other => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Loose {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON")
            }
            fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose::Text(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
                Ok(Loose::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
                Ok(i64::try_from(v).map_or(Loose::Other, Loose::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
                Ok(Loose::Number(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Loose, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Loose, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Sorts a non-2xx answer into retryable or final (see the module docs).
pub fn classify(status: u16, body: &Value, retry_after: Option<Duration>) -> SendError {
    let err = &body["error"];
    let code = err["code"].as_i64();
    let mut reason = format!("Cloud API answered {status}");
    if let Some(c) = code {
        reason.push_str(&format!(" (code {c})"));
    }
    // Meta's words are kept (in the message row, the job's error, an API error), never judged:
    // a NUL in them becomes U+FFFD, which every backend stores.
    if let Some(m) = err["message"].as_str() {
        reason.push_str(": ");
        reason.extend(crate::input::without_nul(m).chars().take(300));
    }
    if let Some(d) = err["error_data"]["details"].as_str() {
        reason.push_str(" — ");
        reason.extend(crate::input::without_nul(d).chars().take(300));
    }
    let retryable =
        status == 429 || status >= 500 || code.is_some_and(|c| RETRYABLE_CODES.contains(&c));
    if retryable {
        SendError::Retryable {
            reason,
            code,
            retry_after,
        }
    } else {
        SendError::Final { reason, code }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_read_past_odd_values() {
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let body = format!(
            r#"{{"extra":{deep},"n":1e999999,"messages":[{{"id":"wamid.D6","x":1e400}}]}}"#
        );
        assert_eq!(answer(body.as_bytes())["messages"][0]["id"], "wamid.D6");
        // A code as a string or a whole float is the code; Meta's words survive a lone
        // surrogate escape.
        for body in [
            &br#"{"error":{"message":"bad \ud800","code":"131026","error_subcode":1e400,"fbtrace_id":null}}"#[..],
            br#"{"error":{"message":"bad \ud800","code":131026.0}}"#,
        ] {
            match classify(400, &answer(body), None) {
                SendError::Final { code, reason } => {
                    assert_eq!(code, Some(131026));
                    assert!(reason.contains("bad \u{FFFD}"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            classify(400, &answer(br#"{"error":{"code":"131048"}}"#), None),
            SendError::Retryable {
                code: Some(131048),
                ..
            }
        ));
        assert_eq!(answer(b"<html>bad gateway</html>"), Value::Null);
    }

    #[test]
    fn a_retry_after_past_any_number_is_the_cap() {
        assert_eq!(
            parse_retry_after("99999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn meta_errors_are_classified() {
        let e = |code: i64| json!({ "error": { "message": "m", "code": code } });
        assert!(matches!(
            classify(429, &e(130429), None),
            SendError::Retryable { .. }
        ));
        assert!(matches!(
            classify(503, &json!(null), None),
            SendError::Retryable { .. }
        ));
        assert!(matches!(
            classify(400, &e(131048), None),
            SendError::Retryable { .. }
        ));
        assert!(matches!(
            classify(400, &e(131026), None),
            SendError::Final {
                code: Some(131026),
                ..
            }
        ));
        assert!(matches!(
            classify(400, &e(131047), None),
            SendError::Final { .. }
        ));
        assert!(matches!(
            classify(401, &e(190), None),
            SendError::Final { .. }
        ));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
