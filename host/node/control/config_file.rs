//! The config file's routes, models and ensembles as the control plane applies them: their
//! files fetched into the state folder, then merged into the desired state so that the last
//! word wins between the file and the admin API.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ControlPlane, DeployError, Outcome};
use crate::node::config::{Config, EnsembleConfig};
use crate::node::digest::Digest;
use crate::node::oci::{ArtifactKind, OciReference};
use crate::node::state::{DesiredState, ModelSpec, RouteRecord, RouteSpec};

/// The config file's routes and models, their files fetched into the state folder.
#[derive(Default)]
pub(super) struct FileEntries {
    models: BTreeMap<String, ModelSpec>,
    routes: BTreeMap<String, RouteSpec>,
    ensembles: BTreeMap<String, EnsembleConfig>,
    /// Where the files pulled from registries came from.
    sources: BTreeMap<Digest, OciReference>,
}

impl ControlPlane {
    /// Fetches every file the config names, and returns its entries with the files named by
    /// digest.
    pub(super) async fn fetch_config(&self, config: &Config) -> Result<FileEntries, DeployError> {
        let in_entry = |error: DeployError, entry: String| {
            DeployError::Invalid(anyhow::Error::new(error).context(entry))
        };
        let mut file = FileEntries::default();
        for (name, model) in &config.models {
            let fetched = self
                .fetch(&model.file, ArtifactKind::Model)
                .await
                .map_err(|e| in_entry(e, format!("model {name:?}")))?;
            file.models.insert(name.clone(), model.clone().with_file(fetched.keep_source(&mut file.sources)));
        }
        for route in &config.routes {
            let name = route.name();
            let fetched = self
                .fetch(&route.component, ArtifactKind::Component)
                .await
                .map_err(|e| in_entry(e, format!("route {name:?}")))?;
            let component = fetched.keep_source(&mut file.sources);
            file.routes.insert(name, RouteSpec { name: None, ..route.clone().with_component(component) });
        }
        file.ensembles = config.ensembles.clone();
        Ok(file)
    }
}

/// Applies the config file to `desired`: each route and model whose entry in the file
/// changed since the file was last applied is deployed as the file says; those the file
/// dropped are removed, unless the API has replaced them since. An entry the file still
/// gives unchanged is left as the API made it (replaced, or deleted).
pub(super) fn apply_config(desired: &mut DesiredState, file: &FileEntries) -> Outcome {
    let before = desired.clone();
    let applied = &mut desired.config_applied;
    for (name, spec) in changed_entries(&mut applied.models, &file.models, &mut desired.models, |model| model)
    {
        desired.unloaded.remove(&name);
        desired.models.insert(name, spec);
    }
    for (name, ensemble) in
        changed_entries(&mut applied.ensembles, &file.ensembles, &mut desired.ensembles, |ensemble| ensemble)
    {
        desired.ensembles.insert(name, ensemble);
    }
    for (name, spec) in
        changed_entries(&mut applied.routes, &file.routes, &mut desired.routes, |r| &r.current)
    {
        match desired.routes.get_mut(&name) {
            Some(record) if record.current == spec => {}
            Some(record) => record.previous = Some(std::mem::replace(&mut record.current, spec)),
            None => drop(desired.routes.insert(name, RouteRecord { current: spec, previous: None })),
        }
    }
    let outcome = if *desired == before { Outcome::Unchanged } else { Outcome::Replaced };
    desired.sources.extend(file.sources.clone());
    outcome
}

/// Compares the file's entries with what the file said when it was last applied
/// (`applied`, updated to the file): returns the entries that are new or changed in the
/// file, and removes from `deployed` the entries the file dropped that are still as the file
/// gave them (`version` finds an entry's settings).
fn changed_entries<S: Serialize + Clone, R>(
    applied: &mut BTreeMap<String, Digest>,
    file: &BTreeMap<String, S>,
    deployed: &mut BTreeMap<String, R>,
    version: impl Fn(&R) -> &S,
) -> Vec<(String, S)> {
    let dropped: Vec<(String, Digest)> = applied
        .iter()
        .filter(|(name, _)| !file.contains_key(*name))
        .map(|(n, d)| (n.clone(), d.clone()))
        .collect();
    for (name, digest) in dropped {
        applied.remove(&name);
        if deployed.get(&name).is_some_and(|entry| digest_of(version(entry)) == digest) {
            deployed.remove(&name);
        }
    }
    let mut changed = Vec::new();
    for (name, spec) in file {
        let digest = digest_of(spec);
        if applied.get(name) != Some(&digest) {
            applied.insert(name.clone(), digest);
            changed.push((name.clone(), spec.clone()));
        }
    }
    changed
}

/// The digest of a setting's canonical JSON.
fn digest_of<T: Serialize>(value: &T) -> Digest {
    Digest::of(&serde_json::to_vec(value).expect("settings serialize"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::node::config::Source;
    use crate::node::state::StateDir;

    /// A config file with route `a` (capped at `a_cap`) and, if `with_b`, route `b`, its
    /// files imported into `state`.
    fn file(folder: &Path, state: &StateDir, a_cap: usize, with_b: bool) -> FileEntries {
        std::fs::write(folder.join("a.wasm"), b"component a").unwrap();
        std::fs::write(folder.join("b.wasm"), b"component b").unwrap();
        let mut text =
            format!("[[routes]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nmax_concurrency = {a_cap}\n");
        if with_b {
            text.push_str("[[routes]]\npath = \"/b\"\ncomponent = \"b.wasm\"\n");
        }
        entries(Config::from_toml(&text, folder).unwrap(), state)
    }

    fn entries(config: Config, state: &StateDir) -> FileEntries {
        let import = |source: &Source| match source {
            Source::File(path) => state.import(path).unwrap(),
            _ => unreachable!("the test files name paths"),
        };
        FileEntries {
            models: config
                .models
                .into_iter()
                .map(|(n, m)| (n, m.clone().with_file(import(&m.file))))
                .collect(),
            routes: config
                .routes
                .iter()
                .map(|r| {
                    (r.name(), RouteSpec { name: None, ..r.clone().with_component(import(&r.component)) })
                })
                .collect(),
            ensembles: config.ensembles,
            sources: BTreeMap::new(),
        }
    }

    #[test]
    fn the_last_word_wins_between_the_file_and_the_api() {
        let folder = tempfile::tempdir().unwrap();
        let state = StateDir::open(&folder.path().join("state")).unwrap();
        let mut desired = DesiredState::default();
        let apply = |desired: &mut DesiredState, file: &FileEntries| apply_config(desired, file);

        assert_eq!(apply(&mut desired, &file(folder.path(), &state, 1, true)), Outcome::Replaced);
        assert_eq!(desired.routes.keys().collect::<Vec<_>>(), ["a", "b"]);

        // The API deletes a and changes b; the same file again undoes neither.
        desired.routes.remove("a");
        desired.routes.get_mut("b").unwrap().current.settings.max_concurrency = 9;
        assert_eq!(apply(&mut desired, &file(folder.path(), &state, 1, true)), Outcome::Unchanged);
        assert!(!desired.routes.contains_key("a"));
        assert_eq!(desired.routes["b"].current.settings.max_concurrency, 9);

        // The file's entry for a changes: the file's new word brings it back.
        apply(&mut desired, &file(folder.path(), &state, 2, true));
        assert_eq!(desired.routes["a"].current.settings.max_concurrency, 2);

        // The file drops b, which the API changed since: it stays. Then the file drops a,
        // still as the file gave it: it goes.
        apply(&mut desired, &file(folder.path(), &state, 2, false));
        assert_eq!(desired.routes["b"].current.settings.max_concurrency, 9);
        apply(&mut desired, &FileEntries::default());
        assert_eq!(desired.routes.keys().collect::<Vec<_>>(), ["b"]);
        assert!(desired.config_applied.routes.is_empty());
    }

    #[test]
    fn a_changed_file_entry_keeps_the_version_it_replaces_for_rollback() {
        let folder = tempfile::tempdir().unwrap();
        let state = StateDir::open(&folder.path().join("state")).unwrap();
        let mut desired = DesiredState::default();
        apply_config(&mut desired, &file(folder.path(), &state, 1, false));
        apply_config(&mut desired, &file(folder.path(), &state, 5, false));
        let record = &desired.routes["a"];
        assert_eq!(
            (
                record.current.settings.max_concurrency,
                record.previous.as_ref().unwrap().settings.max_concurrency
            ),
            (5, 1)
        );
    }
}
