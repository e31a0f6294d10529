//! What the admin API reports of the routes: each version serving or draining, with its
//! component, where it came from, and its load.

use std::sync::{Arc, Weak};

use serde::Serialize;

use super::ControlPlane;
use crate::node::digest::Digest;
use crate::node::oci::OciReference;
use crate::node::state::RouteSpec;
use crate::node::{Route, Runtime};

/// A route as the admin API reports it.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    pub name: String,
    /// `serving`, or `draining` for a version replaced but still finishing requests.
    pub state: &'static str,
    pub component: Digest,
    /// Where the component was pulled from, pinned by digest (for an `oci://` source).
    pub source: Option<OciReference>,
    pub previous_component: Option<Digest>,
    pub settings: RouteSpec,
    pub in_flight: usize,
    pub waiting: usize,
    /// Replaced versions of this route still finishing requests.
    pub draining_versions: usize,
}

impl ControlPlane {
    /// Every route now serving, with what it is doing.
    pub fn route_statuses(&self, runtime: &Runtime) -> Vec<RouteStatus> {
        let mut retired = self.retired.lock().unwrap();
        retired.retain(|route| route.strong_count() > 0);
        let draining: Vec<Arc<Route>> = retired.iter().filter_map(Weak::upgrade).collect();
        drop(retired);
        let desired = self.desired.lock().unwrap().clone();
        let source = |digest: &Digest| desired.sources.get(digest).cloned();
        let previous = |name: &str| {
            desired.routes.get(name).and_then(|r| r.previous.as_ref().map(|p| p.component.clone()))
        };
        let status = |route: &Arc<Route>, state, draining_versions| RouteStatus {
            name: route.name.clone(),
            state,
            component: route.spec.component.clone(),
            source: source(&route.spec.component),
            previous_component: previous(&route.name),
            settings: route.spec.clone(),
            in_flight: route.admission.in_use(),
            waiting: route.admission.waiting(),
            draining_versions,
        };
        let mut statuses: Vec<RouteStatus> = runtime
            .routes()
            .iter()
            .map(|route| {
                let versions = draining.iter().filter(|old| old.name == route.name).count();
                status(route, "serving", versions)
            })
            .collect();
        // A version of a route that is gone (deleted) but still finishing requests.
        for old in &draining {
            if runtime.route_named(&old.name).is_none() {
                statuses.push(status(old, "draining", 0));
            }
        }
        statuses
    }
}
