//! `WHATSAPP_*` settings, read by `Config` through its lookup (nothing here reads the environment).

use std::time::Duration;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct WhatsAppConfig {
    /// `WHATSAPP_API_BASE` (default `https://graph.facebook.com`).
    pub api_base: String,
    /// `WHATSAPP_API_VERSION` (default `v23.0`).
    pub api_version: String,
    /// `WHATSAPP_TOKEN`: the platform number's access token.
    pub token: Option<String>,
    /// `WHATSAPP_PHONE_NUMBER_ID`: the platform number.
    pub phone_number_id: Option<String>,
    /// `WHATSAPP_MERCHANT_ID` (default `default`): the merchant the platform number serves
    /// (inbound messages to it belong to this merchant).
    pub merchant_id: String,
    /// `WHATSAPP_VERIFY_TOKEN`: answers Meta's `GET /webhooks/whatsapp` handshake.
    pub verify_token: Option<String>,
    /// `WHATSAPP_APP_SECRET`: keys the `X-Hub-Signature-256` HMAC of inbound webhooks.
    pub app_secret: Option<String>,
    /// `WHATSAPP_RETRY_BASE` (default 1s): the first retry delay of a send (doubling, jittered).
    pub retry_base: Duration,
    /// `WHATSAPP_TIMEOUT` (default 15s): one Cloud API call.
    pub timeout: Duration,
}

impl Default for WhatsAppConfig {
    fn default() -> Self {
        Self {
            api_base: "https://graph.facebook.com".into(),
            api_version: "v23.0".into(),
            token: None,
            phone_number_id: None,
            merchant_id: "default".into(),
            verify_token: None,
            app_secret: None,
            retry_base: Duration::from_secs(1),
            timeout: Duration::from_secs(15),
        }
    }
}

/// Secrets stay out of logs.
impl std::fmt::Debug for WhatsAppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("WhatsAppConfig")
            .field("api_base", &self.api_base)
            .field("api_version", &self.api_version)
            .field("token", &set(&self.token))
            .field("phone_number_id", &self.phone_number_id)
            .field("merchant_id", &self.merchant_id)
            .field("verify_token", &set(&self.verify_token))
            .field("app_secret", &set(&self.app_secret))
            .field("retry_base", &self.retry_base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn invalid(key: &str, why: impl std::fmt::Display) -> Error {
    Error::validation(key, format!("invalid {key}: {why}"))
}

/// A phone number id is a path segment of the Cloud API URL: digits only.
pub fn valid_phone_number_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_digit())
}

impl WhatsAppConfig {
    /// Reads the `WHATSAPP_*` keys through `get` (trimmed, empty = unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = Self::default();
        if let Some(v) = get("WHATSAPP_API_BASE") {
            if !(v.starts_with("https://") || v.starts_with("http://")) {
                return Err(invalid("WHATSAPP_API_BASE", "must be an http(s) URL"));
            }
            c.api_base = v.trim_end_matches('/').to_owned();
        }
        if let Some(v) = get("WHATSAPP_API_VERSION") {
            if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                return Err(invalid(
                    "WHATSAPP_API_VERSION",
                    "expected a version such as v23.0",
                ));
            }
            c.api_version = v;
        }
        c.token = get("WHATSAPP_TOKEN");
        c.phone_number_id = get("WHATSAPP_PHONE_NUMBER_ID");
        if let Some(id) = &c.phone_number_id
            && !valid_phone_number_id(id)
        {
            return Err(invalid("WHATSAPP_PHONE_NUMBER_ID", "must be digits"));
        }
        if let Some(v) = get("WHATSAPP_MERCHANT_ID") {
            c.merchant_id = crate::auth::parse_merchant_id("WHATSAPP_MERCHANT_ID", &v)?;
        }
        c.verify_token = get("WHATSAPP_VERIFY_TOKEN");
        c.app_secret = get("WHATSAPP_APP_SECRET");
        if let Some(v) = get("WHATSAPP_RETRY_BASE") {
            c.retry_base =
                humantime::parse_duration(&v).map_err(|e| invalid("WHATSAPP_RETRY_BASE", e))?;
        }
        if let Some(v) = get("WHATSAPP_TIMEOUT") {
            c.timeout =
                humantime::parse_duration(&v).map_err(|e| invalid("WHATSAPP_TIMEOUT", e))?;
            if c.timeout.is_zero() {
                return Err(invalid("WHATSAPP_TIMEOUT", "must be greater than zero"));
            }
        }
        Ok(c)
    }
}
