//! Model splitting, for model parallelism: one ONNX model cut into consecutive stages, each
//! an ONNX model of its own that any backend loads, with only the weights its nodes read.
//!
//! ONNX lists a graph's nodes in an order where every tensor is produced before it is read;
//! a cut after a node splits that list in two. The tensors produced before a cut and read
//! after it become outputs of the earlier stage and inputs of the later one, under the
//! names they have in the model, so the stages chain by name. Their types and shapes come
//! from tract's analysis of the whole model, with the model's symbolic dimensions (such as
//! `batch`) kept, so each stage still batches and pads like the model.
//!
//! Cuts are given as node names, or chosen for N stages of similar cost: the cost of a node
//! is the weights it reads (a lookup such as `Gather` reads only a few rows: it counts as
//! free), and near each even share the cut goes where the fewest tensors cross.

use std::collections::{HashMap, HashSet};

use prost_onnx::Message;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::{
    GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Where to cut a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cut {
    /// After each of these nodes, named as in the model, in graph order.
    After(Vec<String>),
    /// Into this many stages of similar cost.
    Stages(usize),
}

/// A model cut into stages.
pub struct Stages {
    /// Each stage's ONNX model, in order.
    pub models: Vec<Vec<u8>>,
    /// Each stage's nodes, as `(first, last)` node names (for logs).
    pub bounds: Vec<(String, String)>,
    /// The whole model's outputs, in its order.
    pub outputs: Vec<String>,
}

/// Why a model cannot be cut as asked.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(
        "splitting needs tract to read and analyse the whole model (whichever backends run the stages), and it cannot: {0}"
    )]
    Unreadable(String),
    #[error("the model has no node named {0:?}")]
    NoSuchNode(String),
    #[error("the cuts must follow the graph's order: {0:?} does not come after {1:?}")]
    OutOfOrder(String, String),
    #[error("cutting after {0:?}, the model's last node, leaves the last stage empty")]
    AfterLastNode(String),
    #[error("the model has {nodes} nodes: too few for {stages} stages")]
    TooFewNodes { nodes: usize, stages: usize },
    #[error("tensor {tensor:?} crosses the cut after {node:?}, and it cannot pass between stages: {reason}")]
    Uncrossable { tensor: String, node: String, reason: String },
    #[error("no cut near an even share of the cost lets every crossing tensor pass between stages")]
    NoCut,
}

/// What crossing a cut requires of a tensor: a type and shape tract worked out, in an element
/// type the stages can exchange.
type Crossing = Result<ValueInfoProto, String>;

/// Cuts the ONNX model in `bytes` as `cut` says.
pub fn split(mut bytes: &[u8], cut: &Cut) -> Result<Stages, SplitError> {
    let unreadable = |e: anyhow::Error| SplitError::Unreadable(format!("{e:#}"));
    let onnx = tract_onnx::onnx();
    let proto = onnx.proto_model_for_read(&mut bytes).map_err(unreadable)?;
    let graph = proto.graph.as_ref().ok_or_else(|| SplitError::Unreadable("it has no graph".into()))?;
    let nodes = &graph.node;
    let mut analysed = onnx.parse(&proto, None).map_err(unreadable)?;
    analysed.model.analyse(false).map_err(unreadable)?;
    let crossing = |name: &str| -> Crossing {
        let outlet = analysed.outlets_by_name.get(name).ok_or("tract does not see it")?;
        let fact = analysed.model.outlet_fact(*outlet).map_err(|e| e.to_string())?;
        value_info(name, fact)
    };

    // Every weight by name, with its element count.
    let elements = |dims: &[i64]| dims.iter().product::<i64>().max(1) as usize;
    let sparse = graph
        .sparse_initializer
        .iter()
        .filter_map(|t| Some((t.values.as_ref()?.name.as_str(), elements(&t.dims))));
    let initializers: HashMap<&str, usize> =
        graph.initializer.iter().map(|t| (t.name.as_str(), elements(&t.dims))).chain(sparse).collect();
    let reads: Vec<Vec<String>> = nodes.iter().map(reads_of).collect();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (index, node) in nodes.iter().enumerate() {
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(output, index);
        }
    }
    // The last node to read each produced tensor (past the end for the model's outputs).
    let mut last_read: HashMap<&str, usize> = HashMap::new();
    for (index, names) in reads.iter().enumerate() {
        for name in names.iter().filter(|name| producer.contains_key(name.as_str())) {
            last_read.insert(name, index);
        }
    }
    // (An output that no node makes, such as an input passed through, crosses no cut.)
    for output in graph.output.iter().filter(|output| producer.contains_key(output.name.as_str())) {
        last_read.insert(&output.name, nodes.len());
    }
    // The tensors that cross a cut before node `end`, in the order they are produced.
    let crossing_at = |end: usize| -> Vec<&str> {
        let mut crossing: Vec<&str> = last_read
            .iter()
            .filter(|(name, last)| producer[**name] < end && **last >= end)
            .map(|(name, _)| *name)
            .collect();
        crossing.sort_by_key(|name| producer[name]);
        crossing
    };

    let ends = match cut {
        Cut::After(names) => {
            let mut ends = Vec::with_capacity(names.len());
            for name in names {
                let index = nodes
                    .iter()
                    .position(|n| &n.name == name)
                    .ok_or_else(|| SplitError::NoSuchNode(name.clone()))?;
                if index + 1 == nodes.len() {
                    return Err(SplitError::AfterLastNode(name.clone()));
                }
                if let Some(&previous) = ends.last()
                    && index < previous
                {
                    return Err(SplitError::OutOfOrder(name.clone(), nodes[previous - 1].name.clone()));
                }
                for tensor in crossing_at(index + 1) {
                    if let Err(reason) = crossing(tensor) {
                        let (tensor, node) = (tensor.to_string(), name.clone());
                        return Err(SplitError::Uncrossable { tensor, node, reason });
                    }
                }
                ends.push(index + 1);
            }
            ends
        }
        Cut::Stages(stages) => {
            if nodes.len() < *stages {
                return Err(SplitError::TooFewNodes { nodes: nodes.len(), stages: *stages });
            }
            let costs: Vec<usize> = nodes
                .iter()
                .zip(&reads)
                .map(|(node, names)| {
                    let weights: usize =
                        names.iter().filter_map(|name| initializers.get(name.as_str())).sum();
                    if node.op_type.starts_with("Gather") { 1 } else { 1 + weights }
                })
                .collect();
            even_cuts(&costs, *stages, |end| {
                let tensors = crossing_at(end);
                tensors.iter().all(|tensor| crossing(tensor).is_ok()).then_some(tensors.len())
            })?
        }
    };

    // Before IR version 4, every initializer is also listed among the inputs, and must stay so.
    let listed_initializers = proto.ir_version < 4;
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|input| listed_initializers || !initializers.contains_key(input.name.as_str()))
        .collect();
    let outputs: HashMap<&str, &ValueInfoProto> = graph.output.iter().map(|o| (o.name.as_str(), o)).collect();
    let mut starts = vec![0];
    starts.extend(&ends);
    let mut bounds_end = ends.clone();
    bounds_end.push(nodes.len());
    let mut models = Vec::with_capacity(starts.len());
    let mut bounds = Vec::with_capacity(starts.len());
    for (stage, (&start, &end)) in starts.iter().zip(&bounds_end).enumerate() {
        let produced_here: HashSet<&str> =
            nodes[start..end].iter().flat_map(|node| node.output.iter().map(String::as_str)).collect();
        let read_here: HashSet<&str> = reads[start..end].iter().flatten().map(String::as_str).collect();
        // The model's inputs this stage reads (the first stage takes those no node reads too),
        // then the tensors that cross into it.
        let mut stage_inputs: Vec<ValueInfoProto> = inputs
            .iter()
            .filter(|input| {
                read_here.contains(input.name.as_str())
                    || (stage == 0 && !reads.iter().flatten().any(|r| *r == input.name))
            })
            .map(|input| (*input).clone())
            .collect();
        for tensor in crossing_at(start) {
            if read_here.contains(tensor) {
                stage_inputs.push(crossing(tensor).expect("checked when cutting"));
            }
        }
        let mut stage_outputs = Vec::new();
        for tensor in crossing_at(end) {
            if !produced_here.contains(tensor) {
                continue;
            }
            match outputs.get(tensor) {
                Some(output) => stage_outputs.push((*output).clone()),
                None => stage_outputs.push(crossing(tensor).expect("checked when cutting")),
            }
        }
        let stage_graph = GraphProto {
            name: format!("{}-stage{}", graph.name, stage + 1),
            node: nodes[start..end].to_vec(),
            initializer: graph
                .initializer
                .iter()
                .filter(|t| read_here.contains(t.name.as_str()))
                .cloned()
                .collect(),
            sparse_initializer: graph
                .sparse_initializer
                .iter()
                .filter(|t| t.values.as_ref().is_some_and(|v| read_here.contains(v.name.as_str())))
                .cloned()
                .collect(),
            quantization_annotation: graph
                .quantization_annotation
                .iter()
                .filter(|a| {
                    a.tensor_name
                        .as_deref()
                        .is_some_and(|t| read_here.contains(t) || produced_here.contains(t))
                })
                .cloned()
                .collect(),
            input: stage_inputs,
            output: stage_outputs,
            value_info: graph
                .value_info
                .iter()
                .filter(|v| produced_here.contains(v.name.as_str()))
                .cloned()
                .collect(),
            ..GraphProto::default()
        };
        models.push(ModelProto { graph: Some(stage_graph), ..proto.clone() }.encode_to_vec());
        bounds.push((nodes[start].name.clone(), nodes[end - 1].name.clone()));
    }
    Ok(Stages { models, bounds, outputs: graph.output.iter().map(|o| o.name.clone()).collect() })
}

/// Cut positions (the index of the first node after each cut) for `stages` stages of
/// similar total `costs`: near each even share of the cost (within a quarter of a stage's
/// share), the position where the fewest tensors cross, among those `crossing` accepts
/// (it gives how many tensors cross there, or `None` where they cannot).
fn even_cuts(
    costs: &[usize],
    stages: usize,
    crossing: impl Fn(usize) -> Option<usize>,
) -> Result<Vec<usize>, SplitError> {
    let total: usize = costs.iter().sum();
    let mut before = Vec::with_capacity(costs.len() + 1);
    before.push(0usize);
    for cost in costs {
        before.push(before.last().unwrap() + cost);
    }
    let share = total as f64 / stages as f64;
    let mut ends: Vec<usize> = Vec::with_capacity(stages - 1);
    for cut in 1..stages {
        let target = share * cut as f64;
        let first = ends.last().map_or(1, |end| end + 1);
        // Leave at least one node for each stage still to come.
        let last = costs.len() - (stages - cut);
        let distance = |end: usize| (before[end] as f64 - target).abs();
        let near: Vec<usize> = (first..=last).filter(|&end| distance(end) <= share / 4.0).collect();
        let candidates = if near.is_empty() { (first..=last).collect() } else { near };
        let best = candidates
            .into_iter()
            .filter_map(|end| crossing(end).map(|count| (count, distance(end), end)))
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .ok_or(SplitError::NoCut)?;
        ends.push(best.2);
    }
    Ok(ends)
}

/// The tensors a node reads: its inputs, and the outer tensors its subgraphs (the bodies of
/// `If`, `Loop`, `Scan`) read.
fn reads_of(node: &NodeProto) -> Vec<String> {
    let mut names: Vec<String> = node.input.iter().filter(|name| !name.is_empty()).cloned().collect();
    for attribute in &node.attribute {
        for graph in attribute.g.iter().chain(&attribute.graphs) {
            let defined: HashSet<&str> = graph
                .input
                .iter()
                .map(|v| v.name.as_str())
                .chain(graph.initializer.iter().map(|t| t.name.as_str()))
                .chain(graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)))
                .collect();
            for inner in &graph.node {
                names.extend(reads_of(inner).into_iter().filter(|name| !defined.contains(name.as_str())));
            }
        }
    }
    names
}

/// A tensor's declaration as a stage input or output, from what tract worked out about it.
fn value_info(name: &str, fact: &InferenceFact) -> Crossing {
    let datum_type = fact.datum_type.concretize().ok_or("its element type is unknown")?;
    let elem_type = match datum_type {
        DatumType::F32 => 1,
        DatumType::U8 => 2,
        DatumType::I32 => 6,
        DatumType::I64 => 7,
        DatumType::F16 => 10,
        DatumType::F64 => 11,
        other => return Err(format!("its element type, {other:?}, cannot pass between stages")),
    };
    if fact.shape.is_open() {
        return Err("its rank is unknown".into());
    }
    let dim = fact
        .shape
        .dims()
        .map(|dim| Dimension {
            value: match dim.concretize() {
                Some(size) if size.to_i64().is_ok() => {
                    Some(dimension::Value::DimValue(size.to_i64().unwrap()))
                }
                Some(TDim::Sym(symbol)) => Some(dimension::Value::DimParam(symbol.to_string())),
                _ => None,
            },
            ..Dimension::default()
        })
        .collect();
    let tensor = type_proto::Tensor { elem_type, shape: Some(TensorShapeProto { dim }) };
    Ok(ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    })
}
