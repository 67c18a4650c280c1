//! WhatsApp: the Cloud API client and the recording transport (outbound), `sendMessage` and the
//! `message_sending` job, merchants' own credentials (encrypted at rest), and the inbound webhook
//! (signature check, messages, delivery statuses).
//!
//! * [`config`]: `WHATSAPP_*` settings.
//! * [`client`]: one HTTP call to `POST {base}/{version}/{phone_number_id}/messages`, and the
//!   classification of its failures (retryable: 429, 5xx, Meta's throttling codes; final: the
//!   other 4xx) with `Retry-After`.
//! * [`service`]: `sendMessage`, the job that delivers it, `outbox`, credentials.
//! * [`inbound`]: `X-Hub-Signature-256` verification and the webhook payload, processed once per
//!   provider message id.

pub mod client;
pub mod config;
pub mod inbound;
pub mod service;

pub use client::Outbound;
pub use config::WhatsAppConfig;

use crate::error::{Error, Result};

/// A phone number in E.164 form (`+` optional, 7 to 15 digits, no leading 0), returned as the
/// digits the Cloud API takes. `field` names it in the error.
pub fn parse_phone(field: &str, v: &str) -> Result<String> {
    let v = v.trim();
    let digits = v.strip_prefix('+').unwrap_or(v);
    let ok = (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(digits.to_owned())
    } else {
        Err(Error::validation(
            field,
            format!("{field} must be a phone number in E.164 form, such as +263781564004"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn phones_are_e164() {
        assert_eq!(
            super::parse_phone("to", "+263781564004").unwrap(),
            "263781564004"
        );
        assert_eq!(
            super::parse_phone("to", "263781564004").unwrap(),
            "263781564004"
        );
        for bad in [
            "",
            "+",
            "0781564004",
            "12ab5678",
            "1234567890123456",
            "+1 555 0100",
        ] {
            assert!(super::parse_phone("to", bad).is_err(), "{bad}");
        }
    }
}
