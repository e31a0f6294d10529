//! What a guest component may import, checked when its route loads.
//!
//! By default a component may import anything the sandbox links: all of WASI 0.2 (any
//! 0.2.x), and of 0.3 for a 0.3 guest, with its capabilities closed (no preopened folders, no sockets, no outgoing HTTP,
//! an empty environment), and `wasi:nn`; so a standard `wasi:http/proxy` component from any
//! toolchain loads unmodified, as under `wasmtime serve`. Anything else fails to link, named.
//!
//! A route with `strict_imports` allows only the guest world: `wasi:http/proxy` or
//! `wasi:http/service` (HTTP types and handlers, streams, clocks, random, stdio) and `wasi:nn`, plus the `wasi:cli`
//! interfaces that language runtimes link in whether they use them or not (environment,
//! exit, terminals), and the packages its `grant` lists (`wasi:filesystem`,
//! `wasi:sockets`, still without access). Anything else refuses the route at start-up,
//! naming the import.

use wasmtime::Engine;
use wasmtime::component::Component;

/// Interfaces every guest may import (versions aside): 0.2's and 0.3's.
pub const GUEST_WORLD: [&str; 28] = [
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    // 0.3's outgoing requests, wall clock and shared types.
    "wasi:http/client",
    "wasi:clocks/system-clock",
    "wasi:clocks/types",
    "wasi:cli/types",
    "wasi:io/poll",
    "wasi:io/error",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
    "wasi:nn/graph",
    "wasi:nn/tensor",
    "wasi:nn/inference",
    "wasi:nn/errors",
    // Linked in by language runtimes; empty in the sandbox.
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// Packages a route may grant, each linked but without access (no preopens, no network).
pub const GRANTABLE: [&str; 2] = ["wasi:filesystem", "wasi:sockets"];

/// The names a component imports, as written in it (interfaces with their versions).
pub fn imports(engine: &Engine, component: &Component) -> Vec<String> {
    component.component_type().imports(engine).map(|(name, _)| name.to_string()).collect()
}

/// Imports a component makes that its route does not allow; the component is refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "the component imports {}, which its route does not grant (with strict_imports, the guest \
     world is wasi:http/proxy + wasi:nn; a route can grant {GRANTABLE:?} with `grant = [...]`)",
    .0.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
)]
pub struct RefusedImports(pub Vec<String>);

/// Which imports a route's component may have.
#[derive(Clone, Copy, Debug)]
pub enum ImportPolicy<'a> {
    /// Whatever the sandbox links: all of WASI 0.2, capabilities closed, and `wasi:nn`.
    AnyWasi,
    /// Only the guest world and the granted packages (`strict_imports = true`).
    Strict { grants: &'a [String] },
}

/// Checks a component's imports against its route's policy; the error names every import
/// refused.
pub fn check(engine: &Engine, component: &Component, policy: ImportPolicy<'_>) -> Result<(), RefusedImports> {
    let ImportPolicy::Strict { grants } = policy else { return Ok(()) };
    let refused: Vec<String> =
        imports(engine, component).into_iter().filter(|import| !allowed(import, grants)).collect();
    if refused.is_empty() { Ok(()) } else { Err(RefusedImports(refused)) }
}

/// Whether one import (e.g. `wasi:io/poll@0.2.12`) is in the world or granted.
fn allowed(import: &str, grants: &[String]) -> bool {
    let interface = import.split('@').next().unwrap_or(import);
    let package = interface.split('/').next().unwrap_or(interface);
    GUEST_WORLD.contains(&interface) || grants.iter().any(|grant| grant == package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_do_not_matter_and_grants_cover_whole_packages() {
        assert!(allowed("wasi:http/types@0.2.4", &[]));
        assert!(allowed("wasi:nn/graph@0.2.0-rc-2024-10-28", &[]));
        assert!(!allowed("wasi:filesystem/types@0.2.9", &[]));
        assert!(allowed("wasi:filesystem/types@0.2.9", &["wasi:filesystem".into()]));
        assert!(!allowed("wasi:sockets/tcp@0.2.9", &["wasi:filesystem".into()]));
        assert!(!allowed("wasi:clocks/timezone@0.2.12", &[]));
        assert!(!allowed("example:evil/thing", &[]));
    }
}
