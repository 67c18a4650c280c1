//! What an upload is, before anything is decoded: the bytes (from base64, a `data:` URL or a
//! multipart part), the size cap, the MIME type the client claims, and the names it gives.
//! REST and GraphQL both build an [`UploadRequest`] here, so they cannot judge an upload differently.

use base64::Engine;

use crate::error::{Error, Result};

/// The longest `original_name` stored (the column is 255 characters).
pub const MAX_NAME_CHARS: usize = 255;
/// `merchant_id` columns hold 64 characters.
pub const MAX_MERCHANT_ID_CHARS: usize = 64;

/// One upload, checked for everything but its content.
#[derive(Debug)]
pub struct UploadRequest {
    pub bytes: Vec<u8>,
    pub original_name: String,
    /// A MIME type the client stated; the content must then be of that type.
    pub claimed_mime: Option<String>,
    pub merchant_id: Option<String>,
}

/// Where the client's MIME claim came from; multipart clients often send a generic type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimSource {
    /// `mimeType` in a body, or a `data:` URL's type: always checked against the content.
    Stated,
    /// A multipart part's Content-Type: checked unless it is the generic `application/octet-stream`.
    MultipartPart,
}

fn too_large(len: usize, max: usize) -> Error {
    Error::PayloadTooLarge(format!("the file is {len} bytes; the limit is {max}"))
}

/// The name an upload is stored under: trimmed, without control characters, at most
/// [`MAX_NAME_CHARS`] characters (longer is VALIDATION on `field`), `upload` when empty.
pub fn original_name(name: Option<&str>, field: &str) -> Result<String> {
    let name: String = name
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::validation(
            field,
            format!("{field} must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(if name.is_empty() {
        "upload".into()
    } else {
        name
    })
}

/// A merchant id named in input: blank means none; longer than the column is VALIDATION.
pub fn merchant_id(v: Option<String>) -> Result<Option<String>> {
    let Some(v) = v.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()) else {
        return Ok(None);
    };
    check_merchant_id(&v)?;
    Ok(Some(v))
}

pub fn check_merchant_id(v: &str) -> Result<()> {
    if v.chars().count() > MAX_MERCHANT_ID_CHARS || v.chars().any(char::is_control) {
        return Err(Error::validation(
            "merchantId",
            format!("merchantId must be at most {MAX_MERCHANT_ID_CHARS} printable characters"),
        ));
    }
    Ok(())
}

/// The media type a client claims, as a bare lower-case `type/subtype` (parameters such as
/// `; charset=…` say nothing about an image). A multipart part's `application/octet-stream` is no
/// claim: it is what clients send when they do not know.
fn claim(mime: Option<String>, source: ClaimSource) -> Option<String> {
    let mime = mime?;
    let mime = mime.split(';').next().unwrap_or_default().trim();
    let mime = mime.to_ascii_lowercase();
    if mime.is_empty() {
        return None;
    }
    match source {
        ClaimSource::Stated => Some(mime),
        ClaimSource::MultipartPart => (mime != "application/octet-stream").then_some(mime),
    }
}

/// `prefix` at the start of `s`, ignoring ASCII case; the rest.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The seed's base64 body: `file_data` is base64 or a `data:` URL, whose media type becomes the
/// claim when `mime_type` is absent. The decoded size is capped before decoding.
pub fn from_base64(
    file_data: &str,
    file_name: Option<&str>,
    mime_type: Option<String>,
    merchant_id: Option<String>,
    max_bytes: usize,
) -> Result<UploadRequest> {
    let bad = || Error::validation("fileData", "fileData is not valid base64");
    let data = file_data.trim();
    // RFC 2397, its names case-insensitive: `data:[type][;param…];base64,…`.
    let (url_mime, b64) = match strip_prefix_ignore_case(data, "data:") {
        Some(rest) => {
            let (meta, payload) = rest.split_once(',').ok_or_else(bad)?;
            let (meta, encoding) = meta.rsplit_once(';').ok_or_else(bad)?;
            if !encoding.trim().eq_ignore_ascii_case("base64") {
                return Err(bad());
            }
            (Some(meta.to_owned()), payload)
        }
        None => (None, data),
    };
    let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if clean.is_empty() {
        return Err(Error::validation("fileData", "fileData is empty"));
    }
    // Refuse before decoding: base64 is 4 characters per 3 bytes.
    let decoded_len = clean.len() / 4 * 3 + (clean.len() % 4).saturating_sub(1);
    let decoded_len =
        decoded_len.saturating_sub(clean.bytes().rev().take_while(|&b| b == b'=').count());
    if decoded_len > max_bytes {
        return Err(too_large(decoded_len, max_bytes));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&clean))
        .map_err(|_| bad())?;
    Ok(UploadRequest {
        bytes,
        original_name: original_name(file_name, "fileName")?,
        claimed_mime: claim(mime_type.or(url_mime), ClaimSource::Stated),
        merchant_id: self::merchant_id(merchant_id)?,
    })
}

/// A multipart part, read on the blocking pool up to one byte over the cap.
pub async fn from_reader(
    read: impl std::io::Read + Send + 'static,
    file_name: &str,
    content_type: Option<String>,
    merchant_id: Option<String>,
    max_bytes: usize,
) -> Result<UploadRequest> {
    let limit = max_bytes as u64;
    let bytes = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        read.take(limit + 1).read_to_end(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(Error::internal)??;
    if bytes.len() > max_bytes {
        return Err(Error::PayloadTooLarge(format!(
            "the file is larger than the limit of {max_bytes} bytes"
        )));
    }
    Ok(UploadRequest {
        bytes,
        original_name: original_name(Some(file_name), "file")?,
        claimed_mime: claim(content_type, ClaimSource::MultipartPart),
        merchant_id: self::merchant_id(merchant_id)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_data_urls() {
        let r = from_base64("aGVsbG8=", None, None, None, 100).unwrap();
        assert_eq!(r.bytes, b"hello");
        assert_eq!(r.original_name, "upload");
        let r = from_base64(
            "data:image/png;base64,aGVsbG8",
            Some(" a.png "),
            None,
            None,
            100,
        )
        .unwrap();
        assert_eq!(
            (
                r.bytes.as_slice(),
                r.claimed_mime.as_deref(),
                r.original_name.as_str()
            ),
            (&b"hello"[..], Some("image/png"), "a.png")
        );
        assert_eq!(
            from_base64("aGVsbG8=", None, None, None, 4)
                .unwrap_err()
                .code(),
            "PAYLOAD_TOO_LARGE"
        );
        assert_eq!(
            from_base64("aGVsbG8=", None, None, None, 5)
                .unwrap()
                .bytes
                .len(),
            5
        );
        assert_eq!(
            from_base64("!!", None, None, None, 9).unwrap_err().field(),
            Some("fileData")
        );
        let long = "n".repeat(256);
        assert_eq!(
            from_base64("aGVsbG8=", Some(&long), None, None, 9)
                .unwrap_err()
                .field(),
            Some("fileName")
        );
        assert_eq!(
            from_base64("aGVsbG8=", None, None, Some("m".repeat(65)), 9)
                .unwrap_err()
                .field(),
            Some("merchantId")
        );
    }

    #[test]
    fn claims_are_bare_types_and_octet_stream_is_none() {
        let c = |m: &str, s| claim(Some(m.into()), s);
        assert_eq!(
            c("application/octet-stream", ClaimSource::MultipartPart),
            None
        );
        assert_eq!(
            c("image/png", ClaimSource::MultipartPart).as_deref(),
            Some("image/png")
        );
        // Any other type is a claim on every path, checked against the content.
        for s in [ClaimSource::MultipartPart, ClaimSource::Stated] {
            assert_eq!(c("text/html", s).as_deref(), Some("text/html"));
            assert_eq!(
                c(" Image/JPEG; charset=utf-8", s).as_deref(),
                Some("image/jpeg")
            );
            assert_eq!(c(" ; x=y", s), None);
        }
    }

    #[test]
    fn data_urls_are_read_as_rfc_2397_says() {
        for url in [
            "data:image/png;base64,aGVsbG8",
            "DATA:IMAGE/PNG;BASE64,aGVsbG8",
            "data:image/png;charset=utf-8;base64,aGVsbG8",
        ] {
            let r = from_base64(url, None, None, None, 100).unwrap();
            assert_eq!(
                (r.bytes.as_slice(), r.claimed_mime.as_deref()),
                (&b"hello"[..], Some("image/png")),
                "{url}"
            );
        }
        let r = from_base64("data:;base64,aGVsbG8", None, None, None, 100).unwrap();
        assert_eq!(r.claimed_mime, None);
        assert!(from_base64("data:image/png,aGVsbG8", None, None, None, 100).is_err());
    }
}
