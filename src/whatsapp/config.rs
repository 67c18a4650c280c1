//! `WHATSAPP_*` settings, read as part of `Config` (nothing here reads the environment).

use std::time::Duration;

use serde::Deserialize;

use crate::{config::invalid, error::Result};

/// Each field is its `WHATSAPP_*` variable without the prefix, lowercased.
#[derive(Clone, Deserialize)]
#[serde(default)]
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
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// `WHATSAPP_TIMEOUT` (default 15s): one Cloud API call.
    #[serde(with = "humantime_serde")]
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

/// A phone number id is a path segment of the Cloud API URL: digits only.
pub fn valid_phone_number_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_digit())
}

impl WhatsAppConfig {
    /// The rules the formats do not carry; trims a trailing `/` off the API base.
    pub(crate) fn check(&mut self) -> Result<()> {
        if !(self.api_base.starts_with("https://") || self.api_base.starts_with("http://")) {
            return Err(invalid("WHATSAPP_API_BASE", "must be an http(s) URL"));
        }
        self.api_base = self.api_base.trim_end_matches('/').to_owned();
        // Zero would retry a rate-limited send at once, as every other span refuses zero.
        if self.retry_base.is_zero() {
            return Err(invalid("WHATSAPP_RETRY_BASE", "must be greater than zero"));
        }
        if !self
            .api_version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.')
        {
            return Err(invalid(
                "WHATSAPP_API_VERSION",
                "expected a version such as v23.0",
            ));
        }
        if let Some(id) = &self.phone_number_id
            && !valid_phone_number_id(id)
        {
            return Err(invalid("WHATSAPP_PHONE_NUMBER_ID", "must be digits"));
        }
        self.merchant_id =
            crate::auth::parse_merchant_id("WHATSAPP_MERCHANT_ID", &self.merchant_id)?;
        // A send job's timeout is this plus its bookkeeping, and a job runs an hour at most.
        if self.timeout.is_zero() || self.timeout > std::time::Duration::from_secs(300) {
            return Err(invalid(
                "WHATSAPP_TIMEOUT",
                "must be greater than zero and at most 5m",
            ));
        }
        Ok(())
    }
}
