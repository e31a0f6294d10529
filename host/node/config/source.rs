//! Where a component or a model comes from, as the configuration and the admin API write
//! it: a file path, a digest of an artifact in the state folder, or an `oci://` reference.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::node::digest::Digest;
use crate::node::oci::{self, OciReference};

/// Where a component or a model comes from: a file on this machine, an artifact already in
/// the state folder (`sha256:…`, as `PUT /admin/artifacts` answered), or an artifact in an
/// OCI registry (`oci://REGISTRY/REPOSITORY:TAG` or `…@sha256:…`), pulled when deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Stored(Digest),
    Oci(OciReference),
}

impl Source {
    /// Takes a relative file path from `base` (the config file's folder).
    pub(super) fn resolve_path(&mut self, base: &Path) {
        if let Source::File(path) = self {
            *path = base.join(&*path);
        }
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Source::File(path) => path.serialize(serializer),
            Source::Stored(digest) => digest.serialize(serializer),
            Source::Oci(reference) => reference.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Source, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.starts_with(oci::SCHEME) {
            text.parse().map(Source::Oci).map_err(serde::de::Error::custom)
        } else if text.starts_with("sha256:") {
            Digest::try_from(text).map(Source::Stored).map_err(serde::de::Error::custom)
        } else {
            Ok(Source::File(text.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::config::Config;

    #[test]
    fn files_are_paths_digests_or_oci_references() {
        let parse = |text: &str| Config::from_toml(text, Path::new("/etc/edge"));
        let digest = format!("sha256:{}", "0a".repeat(32));
        let config = parse(&format!(
            "[models.m]\nfile = \"oci://registry.example:5000/models/m@{digest}\"\n[models.n]\nfile = \"{digest}\"\n\
             [[routes]]\npath = \"/a\"\ncomponent = \"oci://registry.example/guests/a:v1\"\nmodels = [\"m\"]\n"
        ))
        .unwrap();
        let Source::Oci(model) = &config.models["m"].file else { panic!("{:?}", config.models["m"].file) };
        assert_eq!(model.digest(), Some(digest.clone()));
        assert_eq!(config.models["n"].file, Source::Stored(Digest::try_from(digest).unwrap()));
        assert!(matches!(&config.routes[0].component, Source::Oci(r) if r.digest().is_none()));
        let bad = format!(
            "{:#}",
            parse("[[routes]]\npath = \"/a\"\ncomponent = \"oci://guests/a:v1\"").unwrap_err()
        );
        assert!(bad.contains("routes[0].component") && bad.contains("name the registry"), "{bad}");
    }
}
