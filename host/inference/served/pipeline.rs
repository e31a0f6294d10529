//! Pipelines: several models served as one, each step computed through its own model's
//! scheduler, so batching, queue limits, priorities, deadlines and metrics apply per step.
//!
//! A pipeline is a graph of steps over named tensors: each step feeds some of the pipeline's
//! tensors to a model's inputs and publishes some of the model's outputs as new tensors. A
//! step starts as soon as every tensor it needs exists, so independent steps of one request
//! run at once; and since each step waits in its own model's queue, the steps of different
//! requests overlap (while one request is in the second step, the next is in the first).
//!
//! Two things are pipelines: the config's declarative ensembles (Triton's ensemble
//! semantics), and a model split into stages (model parallelism), whose stages are
//! chained by the names of the tensors that cross each cut.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::ServedModel;
use crate::inference::scheduler::{ComputeError, RunFailure};
use crate::inference::tensor::{NamedTensor, Signature, Tensor, TensorSpec};
use crate::request::RequestContext;

/// One step as it is given: a model (itself possibly split into stages), and which pipeline
/// tensor each of its inputs takes and each of its outputs becomes, by the model's tensor
/// names. An input not mapped takes the tensor of its own name; an output not mapped becomes
/// the tensor of its own name if a step or the pipeline's outputs use that name, else it is
/// dropped.
pub struct StepSpec {
    pub model: ServedModel,
    pub input_map: BTreeMap<String, String>,
    pub output_map: BTreeMap<String, String>,
}

/// One step, its maps resolved.
pub struct Step {
    pub model: ServedModel,
    /// `(model input, pipeline tensor)`, one for every input of the model.
    pub inputs: Vec<(String, String)>,
    /// `(model output, pipeline tensor)`; outputs not listed are dropped.
    pub outputs: Vec<(String, String)>,
}

/// What a pipeline is, as the protocol publishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineKind {
    /// Declared in the config: published as an ensemble, with its steps.
    Ensemble,
    /// One model split into stages: published as that model.
    Split,
}

/// Why a pipeline cannot be made from its steps.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "step {step} (model {model:?}) maps {name:?}, which is not one of the model's {what}s; they are {names:?}"
    )]
    NoSuchTensor { step: usize, model: String, what: &'static str, name: String, names: Vec<String> },
    #[error("tensor {0:?} is produced by more than one step")]
    ProducedTwice(String),
    #[error("output {0:?} is produced by no step")]
    NoProducer(String),
    #[error("output {0:?} is named twice")]
    RepeatedOutput(String),
    #[error("the steps form a cycle: {0:?} can never run")]
    Cycle(Vec<String>),
    #[error("tensor {tensor:?} is {produced} where step {step} (model {model:?}) takes {wanted}")]
    TypeMismatch { tensor: String, produced: String, step: usize, model: String, wanted: String },
    #[error("a pipeline needs at least one step and one output")]
    Empty,
}

/// Models run as one: see the module's documentation.
pub struct Pipeline {
    name: String,
    kind: PipelineKind,
    steps: Vec<Step>,
    signature: Signature,
}

impl Pipeline {
    /// Checks the steps and derives the pipeline's signature: its inputs are the tensors the
    /// steps take but none produces (in the order the steps first take them, each declared as
    /// its first taker declares it); its outputs are `outputs`, as their producers declare them.
    pub fn new(
        name: &str,
        kind: PipelineKind,
        specs: Vec<StepSpec>,
        outputs: &[String],
    ) -> Result<Pipeline, PipelineError> {
        if specs.is_empty() || outputs.is_empty() {
            return Err(PipelineError::Empty);
        }
        if let Some(repeated) = outputs.iter().enumerate().find(|(i, name)| outputs[..*i].contains(name)) {
            return Err(PipelineError::RepeatedOutput(repeated.1.clone()));
        }
        let steps = resolve(specs, outputs)?;
        let mut produced: HashMap<&str, &TensorSpec> = HashMap::new();
        for step in &steps {
            for (output, tensor) in &step.outputs {
                let spec = step.model.signature().outputs.iter().find(|spec| &spec.name == output);
                if produced.insert(tensor, spec.expect("resolved from the signature")).is_some() {
                    return Err(PipelineError::ProducedTwice(tensor.clone()));
                }
            }
        }
        let mut inputs: Vec<TensorSpec> = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            for (input, tensor) in &step.inputs {
                let wanted = step.model.signature().inputs.iter().find(|spec| &spec.name == input);
                let wanted = wanted.expect("resolved from the signature");
                let given = match produced.get(tensor.as_str()) {
                    Some(spec) => *spec,
                    None => match inputs.iter().find(|spec| &spec.name == tensor) {
                        Some(spec) => spec,
                        None => {
                            inputs.push(TensorSpec { name: tensor.clone(), ..wanted.clone() });
                            continue;
                        }
                    },
                };
                if given.element_type != wanted.element_type {
                    return Err(PipelineError::TypeMismatch {
                        tensor: tensor.clone(),
                        produced: given.element_type.to_string(),
                        step: index,
                        model: step.model.name().to_string(),
                        wanted: wanted.element_type.to_string(),
                    });
                }
            }
        }
        let outputs = outputs
            .iter()
            .map(|name| match produced.get(name.as_str()) {
                Some(spec) => Ok(TensorSpec { name: name.clone(), ..(*spec).clone() }),
                None => Err(PipelineError::NoProducer(name.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_acyclic(&steps, &inputs)?;
        Ok(Pipeline { name: name.to_string(), kind, steps, signature: Signature { inputs, outputs } })
    }

    /// Whether it is an ensemble or a split model.
    pub fn kind(&self) -> PipelineKind {
        self.kind
    }

    /// The pipeline's name, as callers ask for it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensors the pipeline takes and gives.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The steps, in the order they were given.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Runs the pipeline: each step as soon as its tensors exist, through its model's
    /// scheduler. The first step to fail ends the request with that step's error, and the
    /// steps still queued are withdrawn (dropping their futures), as is everything when the
    /// returned future is dropped.
    pub async fn compute(
        &self,
        inputs: Vec<NamedTensor>,
        context: &RequestContext,
    ) -> Result<Vec<NamedTensor>, ComputeError> {
        let checked = self.signature.check_inputs(inputs)?;
        let mut tensors: HashMap<&str, Tensor> =
            self.signature.inputs.iter().map(|spec| spec.name.as_str()).zip(checked).collect();
        let mut started = vec![false; self.steps.len()];
        let mut running = FuturesUnordered::new();
        loop {
            for (index, step) in self.steps.iter().enumerate() {
                if started[index]
                    || !step.inputs.iter().all(|(_, tensor)| tensors.contains_key(tensor.as_str()))
                {
                    continue;
                }
                started[index] = true;
                let fed: Vec<NamedTensor> = step
                    .inputs
                    .iter()
                    .map(|(input, tensor)| (input.clone(), tensors[tensor.as_str()].clone()))
                    .collect();
                running.push(async move { (step, step.model.compute(fed, context).await) });
            }
            let Some((step, result)) = running.next().await else { break };
            for (output, tensor) in result.map_err(|error| self.step_failed(step, error))? {
                if let Some((_, name)) = step.outputs.iter().find(|(kept, _)| *kept == output) {
                    tensors.insert(name, tensor);
                }
            }
        }
        Ok(self
            .signature
            .outputs
            .iter()
            .map(|spec| {
                (spec.name.clone(), tensors.remove(spec.name.as_str()).expect("every output has a producer"))
            })
            .collect())
    }

    /// The error a failed step ends the request with: its own, except that tensors one step
    /// made and the next refused are not the caller's mistake but the pipeline's.
    fn step_failed(&self, step: &Step, error: ComputeError) -> ComputeError {
        let fed_by_steps = step
            .inputs
            .iter()
            .any(|(_, tensor)| !self.signature.inputs.iter().any(|input| &input.name == tensor));
        match error {
            ComputeError::InvalidInput(reason) if fed_by_steps => ComputeError::Failed {
                model: step.model.name().to_string(),
                reason: RunFailure::Backend(format!("a tensor from an earlier step does not fit: {reason}")),
            },
            other => other,
        }
    }
}

/// Resolves each step's maps against its model's signature: every name mapped must be one of
/// the model's inputs (or outputs); unmapped inputs take their own name, and unmapped outputs
/// are kept under their own name where a step or the pipeline's `outputs` use that name.
fn resolve(specs: Vec<StepSpec>, outputs: &[String]) -> Result<Vec<Step>, PipelineError> {
    let mut taken: HashSet<String> = outputs.iter().cloned().collect();
    for spec in &specs {
        for input in &spec.model.signature().inputs {
            taken.insert(spec.input_map.get(&input.name).unwrap_or(&input.name).clone());
        }
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(index, spec)| {
            let signature = spec.model.signature();
            for (map, declared, what) in [
                (&spec.input_map, &signature.inputs, "input"),
                (&spec.output_map, &signature.outputs, "output"),
            ] {
                if let Some(name) = map.keys().find(|name| !declared.iter().any(|d| &d.name == *name)) {
                    return Err(PipelineError::NoSuchTensor {
                        step: index,
                        model: spec.model.name().to_string(),
                        what,
                        name: name.clone(),
                        names: declared.iter().map(|d| d.name.clone()).collect(),
                    });
                }
            }
            let inputs = signature
                .inputs
                .iter()
                .map(|input| {
                    (input.name.clone(), spec.input_map.get(&input.name).unwrap_or(&input.name).clone())
                })
                .collect();
            let outputs = signature
                .outputs
                .iter()
                .filter_map(|output| match spec.output_map.get(&output.name) {
                    Some(tensor) => Some((output.name.clone(), tensor.clone())),
                    None => taken.contains(&output.name).then(|| (output.name.clone(), output.name.clone())),
                })
                .collect();
            Ok(Step { model: spec.model, inputs, outputs })
        })
        .collect()
}

/// Checks that every step can run: starting from the pipeline's inputs, some order of the
/// steps gives each one its tensors.
fn check_acyclic(steps: &[Step], inputs: &[TensorSpec]) -> Result<(), PipelineError> {
    let mut available: HashSet<&str> = inputs.iter().map(|spec| spec.name.as_str()).collect();
    let mut ran = vec![false; steps.len()];
    while let Some(index) = (0..steps.len())
        .find(|&i| !ran[i] && steps[i].inputs.iter().all(|(_, tensor)| available.contains(tensor.as_str())))
    {
        ran[index] = true;
        available.extend(steps[index].outputs.iter().map(|(_, tensor)| tensor.as_str()));
    }
    let stuck: Vec<String> = steps
        .iter()
        .zip(&ran)
        .filter(|(_, ran)| !**ran)
        .map(|(step, _)| step.model.name().to_string())
        .collect();
    if stuck.is_empty() { Ok(()) } else { Err(PipelineError::Cycle(stuck)) }
}
