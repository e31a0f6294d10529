//! Artifacts' names: the sha256 digest of a file's bytes, as the state folder stores
//! components and models and as the configuration and the admin API name them.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The sha256 digest of a file's bytes, written `sha256:<64 hex digits>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest of what `hasher` has been fed.
    pub(super) fn from_hasher(hasher: Sha256) -> Digest {
        let hex: String = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
        Digest(format!("sha256:{hex}"))
    }

    /// The 64 hex digits.
    pub(super) fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl TryFrom<String> for Digest {
    type Error = String;

    fn try_from(text: String) -> Result<Digest, String> {
        let valid = text.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if valid {
            Ok(Digest(text))
        } else {
            Err(format!("{text:?} is not a digest: expected sha256:<64 lowercase hex digits>"))
        }
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_only_their_own_form() {
        let digest = Digest::of(b"hello");
        assert_eq!(
            digest.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::try_from(digest.to_string()), Ok(digest));
        for bad in [
            "",
            "sha256:",
            "md5:2cf2",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
        ] {
            assert!(Digest::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
