//! Tensor declarations from the model's config, for ONNX files that leave their inputs and
//! outputs open.
//!
//! Some exported models declare an input with no element type, no rank, or only anonymous
//! free dimensions (`?`, `-1`, or names that link nothing, such as `p2o.DynamicDimension.0`):
//! tract then cannot type the graph ("Source node without a determined fact"), and no
//! backend can tell the batch axis from the others. A model's config may declare each
//! input's (and output's) element type and shape, a number fixing a dimension and a name
//! making it free (`["batch", 3, 48, "width"]`; dimensions sharing a name share the size,
//! which is how the batch axis is found). The declarations are written into the ONNX file's
//! graph inputs and outputs before any backend reads it, so tract, ONNX Runtime and the
//! model splitter all see the same model.
//!
//! A declaration may only narrow what the file says: it cannot change a declared element
//! type, rank or fixed size.

use std::collections::BTreeMap;

use prost_onnx::Message;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::{ModelProto, TensorShapeProto, type_proto};

use crate::inference::tensor::ElementType;

/// What one input or output is declared as.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDeclaration {
    /// Its element type, or `None` to keep the file's.
    pub element_type: Option<ElementType>,
    /// Its dimensions, outermost first.
    pub shape: Vec<DeclaredSize>,
}

/// One declared dimension.
#[derive(Clone, Debug, PartialEq)]
pub enum DeclaredSize {
    /// Always this size.
    Fixed(u64),
    /// Free, named: dimensions with the same name have the same size in one run.
    Free(String),
}

/// Why declarations cannot be applied to a model.
#[derive(Debug, thiserror::Error)]
pub enum HintError {
    #[error("the model cannot be read as ONNX: {0}")]
    Unreadable(String),
    #[error("the model has no {side} named {name:?} (its {side}s: {names})")]
    NoSuchTensor { side: &'static str, name: String, names: String },
    #[error("{tensor:?} is {file} in the model file, not {declared}")]
    ElementType { tensor: String, file: String, declared: ElementType },
    #[error("{tensor:?} has {file} dimensions in the model file, not {declared}")]
    Rank { tensor: String, file: usize, declared: usize },
    #[error("dimension {axis} of {tensor:?} is fixed at {file} in the model file, not {declared}")]
    Size { tensor: String, axis: usize, file: i64, declared: String },
    #[error("dimension {axis} of {tensor:?}: {reason}")]
    BadSize { tensor: String, axis: usize, reason: &'static str },
}

/// The element types by their ONNX numbers.
const ONNX_ELEMENT_TYPES: [(i32, ElementType); 7] = [
    (1, ElementType::F32),
    (2, ElementType::U8),
    (6, ElementType::I32),
    (7, ElementType::I64),
    (10, ElementType::F16),
    (11, ElementType::F64),
    (16, ElementType::Bf16),
];

/// Declarations by tensor name: the model's inputs, and its outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Declarations {
    pub inputs: BTreeMap<String, TensorDeclaration>,
    pub outputs: BTreeMap<String, TensorDeclaration>,
}

/// The model in `bytes` with its inputs and outputs declared as `declarations` say; `bytes`
/// unchanged where there are none.
pub fn declare(bytes: Vec<u8>, declarations: &Declarations) -> Result<Vec<u8>, HintError> {
    if declarations.inputs.is_empty() && declarations.outputs.is_empty() {
        return Ok(bytes);
    }
    let mut model = ModelProto::decode(bytes.as_slice()).map_err(|e| HintError::Unreadable(e.to_string()))?;
    let graph = model.graph.as_mut().ok_or_else(|| HintError::Unreadable("it has no graph".into()))?;
    for (side, tensors, declared) in [
        ("input", &mut graph.input, &declarations.inputs),
        ("output", &mut graph.output, &declarations.outputs),
    ] {
        let names = match tensors.is_empty() {
            true => "none".to_string(),
            false => tensors.iter().map(|tensor| format!("{:?}", tensor.name)).collect::<Vec<_>>().join(", "),
        };
        for (name, declaration) in declared {
            let tensor = tensors
                .iter_mut()
                .find(|tensor| &tensor.name == name)
                .ok_or_else(|| HintError::NoSuchTensor { side, name: name.clone(), names: names.clone() })?;
            // tract's reading of ONNX knows tensor types only: there is no other kind to refuse.
            let type_proto::Value::TensorType(tensor) = tensor
                .r#type
                .get_or_insert_with(Default::default)
                .value
                .get_or_insert_with(|| type_proto::Value::TensorType(type_proto::Tensor::default()));
            narrow(name, tensor, declaration)?;
        }
    }
    Ok(model.encode_to_vec())
}

/// Largest fixed size a dimension may be declared with.
const MAX_FIXED_SIZE: u64 = i64::MAX as u64;

/// Whether `size` can be declared: a fixed size from 1 to 2^63 − 1, or a free
/// dimension with a name; else why not.
pub fn check_size(size: &DeclaredSize) -> Result<(), &'static str> {
    match size {
        DeclaredSize::Fixed(0) => Err("a fixed size is at least 1"),
        DeclaredSize::Fixed(size) if *size > MAX_FIXED_SIZE => Err("a fixed size is at most 2^63 - 1"),
        DeclaredSize::Free(name) if name.trim().is_empty() => Err("a free dimension needs a name"),
        _ => Ok(()),
    }
}

/// Narrows one tensor's type to its declaration.
fn narrow(
    name: &str,
    tensor: &mut type_proto::Tensor,
    declaration: &TensorDeclaration,
) -> Result<(), HintError> {
    if let Some(element_type) = declaration.element_type {
        let number =
            |wanted: ElementType| ONNX_ELEMENT_TYPES.iter().find(|(_, t)| *t == wanted).map(|(n, _)| *n);
        let declared = number(element_type).expect("every element type has an ONNX number");
        if tensor.elem_type != 0 && tensor.elem_type != declared {
            let file = match ONNX_ELEMENT_TYPES.iter().find(|(n, _)| *n == tensor.elem_type) {
                Some((_, file)) => file.to_string(),
                None => format!("ONNX element type {}", tensor.elem_type),
            };
            return Err(HintError::ElementType { tensor: name.into(), file, declared: element_type });
        }
        tensor.elem_type = declared;
    }
    // No shape: the rank is open. A shape with no dimensions: a scalar.
    let file_dims = tensor.shape.as_ref().map_or(&[][..], |shape| shape.dim.as_slice());
    if tensor.shape.is_some() && file_dims.len() != declaration.shape.len() {
        let (file, declared) = (file_dims.len(), declaration.shape.len());
        return Err(HintError::Rank { tensor: name.into(), file, declared });
    }
    let mut dims = Vec::with_capacity(declaration.shape.len());
    for (axis, size) in declaration.shape.iter().enumerate() {
        let fixed_in_file = match file_dims.get(axis).and_then(|d| d.value.as_ref()) {
            Some(dimension::Value::DimValue(size)) if *size > 0 => Some(*size),
            _ => None,
        };
        check_size(size).map_err(|reason| HintError::BadSize { tensor: name.into(), axis, reason })?;
        let value = match size {
            DeclaredSize::Fixed(size) => dimension::Value::DimValue(*size as i64),
            DeclaredSize::Free(symbol) => dimension::Value::DimParam(symbol.clone()),
        };
        if let Some(file) = fixed_in_file
            && value != dimension::Value::DimValue(file)
        {
            let declared = match size {
                DeclaredSize::Fixed(size) => size.to_string(),
                DeclaredSize::Free(symbol) => format!("free ({symbol:?})"),
            };
            return Err(HintError::Size { tensor: name.into(), axis, file, declared });
        }
        dims.push(Dimension { value: Some(value), ..Dimension::default() });
    }
    tensor.shape = Some(TensorShapeProto { dim: dims });
    Ok(())
}

#[cfg(test)]
mod tests {
    use tract_onnx::pb::{GraphProto, TypeProto, ValueInfoProto};

    use super::*;

    /// A model whose one input `x` has the given element type and dimensions (`None`: no
    /// shape at all).
    fn model(elem_type: i32, dims: Option<Vec<Option<dimension::Value>>>) -> Vec<u8> {
        let shape = dims.map(|dims| TensorShapeProto {
            dim: dims.into_iter().map(|value| Dimension { value, ..Dimension::default() }).collect(),
        });
        let input = ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type, shape })),
                ..TypeProto::default()
            }),
            ..ValueInfoProto::default()
        };
        let graph = GraphProto { input: vec![input], ..GraphProto::default() };
        ModelProto { graph: Some(graph), ..ModelProto::default() }.encode_to_vec()
    }

    fn declared(bytes: &[u8]) -> type_proto::Tensor {
        let model = ModelProto::decode(bytes).unwrap();
        let value = model.graph.unwrap().input[0].r#type.clone().unwrap().value.unwrap();
        let type_proto::Value::TensorType(tensor) = value;
        tensor
    }

    fn declaration(element_type: Option<ElementType>, shape: &[&str]) -> Declarations {
        let shape = shape
            .iter()
            .map(|dim| match dim.parse() {
                Ok(size) => DeclaredSize::Fixed(size),
                Err(_) => DeclaredSize::Free(dim.to_string()),
            })
            .collect();
        let inputs = BTreeMap::from([("x".to_string(), TensorDeclaration { element_type, shape })]);
        Declarations { inputs, outputs: BTreeMap::new() }
    }

    #[test]
    fn open_dimensions_are_fixed_or_named() {
        use dimension::Value::{DimParam, DimValue};
        // PP-OCR's classifier: [-1, 3, "?", "?"].
        let file =
            model(1, Some(vec![Some(DimValue(-1)), Some(DimValue(3)), Some(DimParam("?".into())), None]));
        let bytes =
            declare(file, &declaration(Some(ElementType::F32), &["batch", "3", "48", "width"])).unwrap();
        let tensor = declared(&bytes);
        assert_eq!(tensor.elem_type, 1);
        let dims: Vec<_> = tensor.shape.unwrap().dim.into_iter().map(|d| d.value.unwrap()).collect();
        assert_eq!(dims, [DimParam("batch".into()), DimValue(3), DimValue(48), DimParam("width".into())]);
        // An input with no type or shape at all takes the declaration whole.
        let bytes = declare(model(0, None), &declaration(Some(ElementType::I64), &["n"])).unwrap();
        assert_eq!(declared(&bytes).elem_type, 7);
        // No declarations: the bytes are not touched.
        let file = model(1, None);
        assert_eq!(declare(file.clone(), &Declarations::default()).unwrap(), file);
    }

    #[test]
    fn declarations_cannot_contradict_the_file() {
        use dimension::Value::DimValue;
        let file = || model(1, Some(vec![None, Some(DimValue(3))]));
        let refused = |declarations: Declarations| declare(file(), &declarations).unwrap_err().to_string();
        assert!(
            refused(declaration(Some(ElementType::I64), &["n", "3"]))
                .contains("is FP32 in the model file, not INT64")
        );
        assert!(
            refused(declaration(None, &["n", "3", "4"]))
                .contains("has 2 dimensions in the model file, not 3")
        );
        assert!(refused(declaration(None, &["n", "4"])).contains("dimension 1 of \"x\" is fixed at 3"));
        assert!(refused(declaration(None, &["n", "free"])).contains("not free (\"free\")"));
        assert!(
            refused(declaration(None, &["0", "3"]))
                .contains("dimension 0 of \"x\": a fixed size is at least 1")
        );
        assert!(refused(declaration(None, &["n"])).contains("has 2 dimensions in the model file, not 1"));
        // A scalar stays a scalar.
        let scalar = model(1, Some(vec![]));
        let inputs = declaration(None, &["n"]);
        assert!(
            declare(scalar, &inputs).unwrap_err().to_string().contains("has 0 dimensions in the model file")
        );
        let Declarations { inputs, .. } = declaration(None, &["n", "3"]);
        let outputs = BTreeMap::from([("y".to_string(), inputs["x"].clone())]);
        let on_output = Declarations { inputs: BTreeMap::new(), outputs };
        assert!(refused(on_output).contains("the model has no output named \"y\" (its outputs: none)"));
    }
}
