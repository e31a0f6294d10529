//! The admin API's bearer token: read from the configured file or the state folder, or
//! made at random at the first start on a folder; and checking what a caller presents.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::ControlPlane;
use crate::node::state::StateDir;

/// The admin token's file in the state folder, when the node makes it.
const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Shortest admin token accepted.
const MIN_TOKEN_CHARS: usize = 16;

/// The admin token: read from `file` if given, else the one in the state folder, else made at
/// random and written there (owner-only). Returns the token and, when made, where it was
/// written.
pub fn admin_token(file: Option<&Path>, state: &StateDir) -> anyhow::Result<(String, Option<PathBuf>)> {
    let read = |file: &Path| -> anyhow::Result<String> {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the admin token file {}", file.display()))?
            .trim()
            .to_string();
        anyhow::ensure!(
            token.len() >= MIN_TOKEN_CHARS,
            "the admin token in {} is shorter than {MIN_TOKEN_CHARS} characters",
            file.display()
        );
        Ok(token)
    };
    if let Some(file) = file {
        return Ok((read(file)?, None));
    }
    let kept = state.root().join(ADMIN_TOKEN_FILE);
    if kept.is_file() {
        return Ok((read(&kept)?, None));
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut source| std::io::Read::read_exact(&mut source, &mut random))
        .context("reading /dev/urandom for an admin token")?;
    let token: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let path = state.write_private(ADMIN_TOKEN_FILE, token.as_bytes())?;
    Ok((token, Some(path)))
}

impl ControlPlane {
    /// Whether `presented` is the admin token, compared in constant time.
    pub fn is_admin_token(&self, presented: &[u8]) -> bool {
        let expected = self.settings.admin_token.as_bytes();
        presented.len() == expected.len()
            && presented.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
    }
}
