//! Where media bytes live. Keys are content-addressed (`ab/cd/<sha256>[_<size>].<ext>`) and made by
//! the server only; a client's file name never reaches a path. [`LocalStorage`] writes atomically
//! (temp file in the same directory, fsync, rename), so a reader never sees half a file.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Removing a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }
    /// Removes every file of the bytes `sha256`: the original and each derived size, whatever
    /// names the sizes have (the rows' lists of sizes may lag behind a job that just wrote one).
    async fn delete_content(&self, sha256: &str) -> Result<()>;
    fn path_ok(key: &str) -> bool
    where
        Self: Sized,
    {
        key_ok(key)
    }
}

/// A safe key: relative, no `..`, no backslash, only `[a-z0-9_./-]`, no empty segment.
pub fn key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 255
        && !key.starts_with('/')
        && key
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'/' | b'-'))
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !key.contains("..")
}

/// `ab/cd/<sha256>.<ext>`, or `ab/cd/<sha256>_<variant>.<ext>` for a derived size.
pub fn key_for(sha256: &str, variant: Option<&str>, ext: &str) -> String {
    let base = match variant {
        Some(v) => format!("{sha256}_{v}"),
        None => sha256.to_owned(),
    };
    format!("{}/{}/{base}.{ext}", &sha256[0..2], &sha256[2..4])
}

/// The public URL of a key.
pub fn url_for(key: &str) -> String {
    format!("/uploads/{key}")
}

/// The key of a `/uploads/<key>` URL.
pub fn key_of_url(url: &str) -> Option<&str> {
    url.strip_prefix("/uploads/")
}

/// Files under a local directory (DATA_DIR/uploads).
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if !key_ok(key) {
            return Err(Error::validation("key", "invalid storage key"));
        }
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let dir = path
            .parent()
            .ok_or_else(|| Error::internal("storage key has no directory"))?;
        tokio::fs::create_dir_all(dir).await?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let write = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(bytes).await?;
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(e) = write.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            // Only files are stored under a key: a key that names a directory (`ab`, `ab/cd`) or
            // goes through a file (`ab/cd/<file>/x`) holds nothing, like a missing one.
            Err(e) if no_such_file(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_content(&self, sha256: &str) -> Result<()> {
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Error::validation(
                "sha256",
                "not a SHA-256 in lowercase hex",
            ));
        }
        let dir = self.root.join(&sha256[0..2]).join(&sha256[2..4]);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if no_such_file(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let ours = name
                .to_str()
                .and_then(|n| n.strip_prefix(sha256))
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('_'));
            if ours {
                match tokio::fs::remove_file(entry.path()).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(m.is_file()),
            Err(e) if no_such_file(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether an error reading a key's path means there is no file under that key.
fn no_such_file(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{IsADirectory, NotADirectory, NotFound};
    matches!(e.kind(), NotFound | IsADirectory | NotADirectory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let sha = "ab".repeat(32);
        let k = key_for(&sha, Some("thumbnail"), "jpg");
        assert_eq!(k, format!("ab/ab/{sha}_thumbnail.jpg"));
        assert!(key_ok(&k));
        for bad in [
            "",
            "../x",
            "a/../b",
            "/etc/passwd",
            "a\\b",
            "A/b",
            "a//b",
            "a/./b",
            "a/b%2e",
            "a/b c",
        ] {
            assert!(!key_ok(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn put_get_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        s.put("ab/cd/x.png", b"hi").await.unwrap();
        assert_eq!(s.get("ab/cd/x.png").await.unwrap().unwrap(), b"hi");
        s.delete("ab/cd/x.png").await.unwrap();
        assert!(s.get("ab/cd/x.png").await.unwrap().is_none());
        s.delete("ab/cd/x.png").await.unwrap();
        assert!(s.put("../x", b"no").await.is_err());
        // Directories and paths through a file hold nothing.
        s.put("ab/cd/y.png", b"hi").await.unwrap();
        for key in ["ab", "ab/cd", "ab/cd/y.png/z"] {
            assert!(s.get(key).await.unwrap().is_none(), "{key}");
            assert!(!s.exists(key).await.unwrap(), "{key}");
        }
        assert!(s.exists("ab/cd/y.png").await.unwrap());
    }

    #[tokio::test]
    async fn delete_content_takes_every_size_of_the_bytes_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let (sha, other) = ("ab".repeat(32), format!("{}cd", "ab".repeat(31)));
        let ours = [
            key_for(&sha, None, "png"),
            key_for(&sha, Some("thumbnail"), "jpg"),
            key_for(&sha, Some("any-size_2"), "webp"),
        ];
        let theirs = [key_for(&other, None, "png"), format!("ab/ab/{sha}x.png")];
        for k in ours.iter().chain(&theirs) {
            s.put(k, b"x").await.unwrap();
        }
        s.delete_content(&sha).await.unwrap();
        for k in &ours {
            assert!(!s.exists(k).await.unwrap(), "{k}");
        }
        for k in &theirs {
            assert!(s.exists(k).await.unwrap(), "{k}");
        }
        // Nothing stored, or not a sha: no harm done.
        s.delete_content(&"ef".repeat(32)).await.unwrap();
        assert!(s.delete_content("../..").await.is_err());
    }
}
