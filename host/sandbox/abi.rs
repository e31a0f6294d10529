//! Which `wasi:http` a guest component serves, read from its exports before it is compiled,
//! so that its route's engine is configured for it: a 0.2 guest exports
//! `wasi:http/incoming-handler@0.2.x` and is called synchronously, one call per instance; a
//! 0.3 guest exports `wasi:http/handler@0.3.x` and runs on the component model's async ABI,
//! its body streaming from tasks that go on after it has returned its response.

use wasmparser::{Encoding, Parser, Payload};

/// The `wasi:http` interface a component is served through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestAbi {
    /// `wasi:http/incoming-handler@0.2.x`.
    P2,
    /// `wasi:http/handler@0.3.x`.
    P3,
}

impl GuestAbi {
    /// How the front page and the log name it.
    pub fn label(self) -> &'static str {
        match self {
            GuestAbi::P2 => "wasi:http@0.2",
            GuestAbi::P3 => "wasi:http@0.3",
        }
    }
}

/// Why a component's interface could not be told.
#[derive(Debug, thiserror::Error)]
pub enum AbiError {
    #[error("it is not a WebAssembly component: {0}")]
    Malformed(String),
    #[error(
        "it exports neither `wasi:http/incoming-handler@0.2` nor `wasi:http/handler@0.3` (its exports: {})",
        if .0.is_empty() { "none".to_string() } else { .0.join(", ") }
    )]
    NoHandler(Vec<String>),
}

const P2_HANDLER: &str = "wasi:http/incoming-handler@0.2.";
const P3_HANDLER: &str = "wasi:http/handler@0.3.";

/// Reads the exports of the outermost component in `bytes` (binary, or WebAssembly text as
/// wasmtime also takes). A component exporting both handlers is served through 0.2, the
/// interface every toolchain's guests have long used.
pub fn detect(bytes: &[u8]) -> Result<GuestAbi, AbiError> {
    let binary = wat::parse_bytes(bytes).map_err(|error| AbiError::Malformed(error.to_string()))?;
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(&binary) {
        match payload.map_err(|error| AbiError::Malformed(error.to_string()))? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    return Err(AbiError::Malformed("it is a core module".into()));
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    let export = export.map_err(|error| AbiError::Malformed(error.to_string()))?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    let exports_one = |prefix: &str| exports.iter().any(|name| name.starts_with(prefix));
    match (exports_one(P2_HANDLER), exports_one(P3_HANDLER)) {
        (true, _) => Ok(GuestAbi::P2),
        (false, true) => Ok(GuestAbi::P3),
        (false, false) => Err(AbiError::NoHandler(exports)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_modules_and_garbage_are_refused() {
        assert!(matches!(detect(b"not wasm"), Err(AbiError::Malformed(_))));
        let core_module = [0, b'a', b's', b'm', 1, 0, 0, 0];
        let refused = detect(&core_module).unwrap_err().to_string();
        assert!(refused.contains("core module"), "{refused}");
    }

    #[test]
    fn a_component_in_text_is_read_and_one_without_a_handler_is_refused() {
        let refused = detect(b"(component)").unwrap_err().to_string();
        assert!(refused.contains("exports neither") && refused.contains("none"), "{refused}");
    }
}
