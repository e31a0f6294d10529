//! The `wasi:nn@0.2.0-rc-2024-10-28` host, written for edge-infer.
//!
//! - `load-by-name` hands out a model loaded at start-up; a route sees only the models its
//!   config grants it (`not-found` otherwise), and nothing is read or compiled per request.
//! - `compute` is an async host call: the tensors go to the model's scheduler, with the
//!   request's deadline and priority, and the guest's task yields until the outputs come
//!   back, so inference never blocks the event loop. A full model queue, or a model that
//!   cannot be loaded for want of room, ends the request (a trap carrying the
//!   [`ComputeError`], answered 503 by the host): there is no
//!   `wasi:nn` error code for "busy", and the guest could not do better than the host.
//! - `load` of raw model bytes is refused (`security`) unless the route allows it.
//! - Bad tensors (name, type, shape, length) are `invalid-argument` errors, never a trap.
//! - What the guest makes the host hold is charged to its [`HostBudget`]: tensor data when
//!   made (over budget, `tensor` traps: its constructor cannot fail), outputs after
//!   `compute` (over budget, a `too-large` error), model bytes on `load` (for the instance's
//!   life); tensors are refunded when dropped or handed to `compute`. Error messages, which
//!   quote guest text, are cut at 1 KiB.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::inference::backend;
use crate::inference::scheduler::{Batching, ComputeError, DelayPolicy, ModelScheduler, SchedulerConfig};
use crate::inference::served::ServedModel;
use crate::inference::tensor::{ElementType, Tensor};
use crate::request::RequestContext;
use crate::sandbox::budget::{HostBudget, HostRefusal};

mod generated {
    wasmtime::component::bindgen!({
        path: "wit/deps/nn.wit",
        world: "ml",
        with: {
            "wasi:nn/graph.graph": super::Graph,
            "wasi:nn/tensor.tensor": crate::inference::tensor::Tensor,
            "wasi:nn/inference.graph-execution-context": super::ExecutionContext,
            "wasi:nn/errors.error": super::NnError,
        },
        imports: {
            "wasi:nn/graph.load": async | trappable,
            "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
            default: trappable,
        },
    });
}

use generated::wasi::nn::errors::{self, ErrorCode};
use generated::wasi::nn::graph::{self, ExecutionTarget, GraphBuilder, GraphEncoding};
use generated::wasi::nn::inference::{self, NamedTensor};
use generated::wasi::nn::tensor::{self, TensorType};

/// What one route's guests may do with `wasi:nn`: shared by all of the route's instances.
pub struct NnGrant {
    /// The models the route may load by name.
    pub models: HashMap<String, ServedModel>,
    /// Whether `load` of raw model bytes is allowed.
    pub allow_model_load: bool,
}

/// A `graph` resource: a model the guest may run.
pub struct Graph {
    model: ServedModel,
}

/// A `graph-execution-context` resource.
pub struct ExecutionContext {
    model: ServedModel,
}

/// An `error` resource: a code and a message for the guest.
pub struct NnError {
    code: ErrorCode,
    message: String,
}

/// The store state `wasi:nn` works on: the route's grant, the request's context, and the
/// instance's resources.
pub struct NnView<'a> {
    pub grant: &'a NnGrant,
    pub context: &'a RequestContext,
    pub table: &'a mut ResourceTable,
    pub budget: &'a mut HostBudget,
}

/// Store data that can lend out an [`NnView`].
pub trait HasNn: Send {
    fn nn(&mut self) -> NnView<'_>;
}

struct NnData;

impl HasData for NnData {
    type Data<'a> = NnView<'a>;
}

/// Adds the `wasi:nn` interfaces to a linker.
pub fn add_to_linker<T: HasNn + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    errors::add_to_linker::<T, NnData>(linker, T::nn)?;
    tensor::add_to_linker::<T, NnData>(linker, T::nn)?;
    graph::add_to_linker::<T, NnData>(linker, T::nn)?;
    inference::add_to_linker::<T, NnData>(linker, T::nn)?;
    Ok(())
}

/// Longest `error` message kept for the guest, in bytes.
const MAX_ERROR_MESSAGE: usize = 1024;
/// Most dimensions a guest's tensor may have.
const MAX_DIMENSIONS: usize = 16;

/// Host bytes a tensor holds: its data and its shape.
fn held_bytes(tensor: &Tensor) -> usize {
    tensor.data.len() + tensor.shape.len() * std::mem::size_of::<usize>()
}

/// The result of a `wasi:nn` call that may fail with an `error` resource.
type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl NnView<'_> {
    fn fail<T>(&mut self, code: ErrorCode, message: impl Into<String>) -> NnResult<T> {
        // Messages quote guest text (names); kept short, they hold no guest-sized memory.
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let cut = (0..=MAX_ERROR_MESSAGE).rev().find(|&at| message.is_char_boundary(at)).unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        let error = self.table.push(NnError { code, message })?;
        Ok(Err(error))
    }

    fn graph(&mut self, model: ServedModel) -> NnResult<Resource<Graph>> {
        Ok(Ok(self.table.push(Graph { model })?))
    }
}

impl graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        builders: Vec<GraphBuilder>,
        encoding: GraphEncoding,
        target: ExecutionTarget,
    ) -> NnResult<Resource<Graph>> {
        if !self.grant.allow_model_load {
            return self.fail(
                ErrorCode::Security,
                "loading a model from bytes is not allowed on this route (allow_model_load = false); use load-by-name",
            );
        }
        if !matches!(encoding, GraphEncoding::Onnx | GraphEncoding::Autodetect) {
            return self
                .fail(ErrorCode::InvalidEncoding, format!("{encoding:?} is not supported: only ONNX"));
        }
        let [bytes]: [Vec<u8>; 1] = match builders.try_into() {
            Ok(one) => one,
            Err(_) => return self.fail(ErrorCode::InvalidArgument, "an ONNX model is one builder"),
        };
        match self.budget.charge(bytes.len(), "a model loaded from bytes") {
            Ok(()) => {}
            Err(HostRefusal::Instance(over)) => return self.fail(ErrorCode::TooLarge, over.to_string()),
            Err(node @ HostRefusal::Node(_)) => return Err(node.into_trap()),
        }
        let charged = bytes.len();
        let want_gpu = matches!(target, ExecutionTarget::Gpu);
        let loaded = tokio::task::spawn_blocking(move || {
            let backend = backend::load_bytes(&bytes, want_gpu)?;
            let config = SchedulerConfig {
                executors: 1,
                queue_capacity: 16,
                batching: Batching::Off,
                max_batch_size: 1,
                max_queue_delay: std::time::Duration::ZERO,
                queue_delay: DelayPolicy::Fixed,
                max_padding_ratio: Some(0.0),
                pad_values: Default::default(),
                cache: None,
            };
            ModelScheduler::start("guest-loaded", Arc::from(backend), &config)
        })
        .await?;
        match loaded {
            Ok(model) => self.graph(ServedModel::Single(Arc::new(model))),
            Err(e) => {
                self.budget.refund(charged);
                self.fail(ErrorCode::InvalidEncoding, format!("cannot load the model: {e:#}"))
            }
        }
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<Graph>> {
        match self.grant.models.get(&name) {
            Some(model) => self.graph(model.clone()),
            None => self.fail(ErrorCode::NotFound, format!("no model {name:?} is granted to this route")),
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(&mut self, graph: Resource<Graph>) -> NnResult<Resource<ExecutionContext>> {
        let model = self.table.get(&graph)?.model.clone();
        Ok(Ok(self.table.push(ExecutionContext { model })?))
    }

    fn drop(&mut self, graph: Resource<Graph>) -> wasmtime::Result<()> {
        // A model loaded from bytes stays charged: an execution context may still run it.
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        context: Resource<ExecutionContext>,
        inputs: Vec<NamedTensor>,
    ) -> NnResult<Vec<NamedTensor>> {
        let model = self.table.get(&context)?.model.clone();
        // The guest handed these tensors over: take them all out of the table, no copy,
        // before checking any. The scheduler holds them from here, within its queue limits.
        let mut handed = Vec::with_capacity(inputs.len());
        for (name, handle) in inputs {
            let raw = self.table.delete(handle)?;
            self.budget.refund(held_bytes(&raw));
            handed.push((name, raw));
        }
        let mut named = Vec::with_capacity(handed.len());
        for (name, raw) in handed {
            match Tensor::new(raw.element_type, raw.shape, raw.data) {
                Ok(tensor) => named.push((name, tensor)),
                Err(message) => {
                    return self.fail(ErrorCode::InvalidArgument, format!("input {name:?}: {message}"));
                }
            }
        }
        let context = self.context.clone();
        match model.compute(named, &context).await {
            Ok(outputs) => {
                let bytes = outputs.iter().map(|(_, tensor)| held_bytes(tensor)).sum();
                match self.budget.charge(bytes, "a model's outputs") {
                    Ok(()) => {}
                    Err(HostRefusal::Instance(over)) => {
                        return self.fail(ErrorCode::TooLarge, format!("model {:?}: {over}", model.name()));
                    }
                    Err(node @ HostRefusal::Node(_)) => return Err(node.into_trap()),
                }
                let mut handles = Vec::with_capacity(outputs.len());
                for (name, tensor) in outputs {
                    handles.push((name, self.table.push(tensor)?));
                }
                Ok(Ok(handles))
            }
            Err(error) if error.is_overload() => Err(error.into()),
            Err(error) => {
                match &error {
                    ComputeError::InvalidInput(_) => {
                        self.fail(ErrorCode::InvalidArgument, format!("model {:?}: {error}", model.name()))
                    }
                    // These name the model themselves.
                    ComputeError::DeadlineExpired { .. } => self.fail(ErrorCode::Timeout, error.to_string()),
                    ComputeError::Overloaded { .. }
                    | ComputeError::NoRoom { .. }
                    | ComputeError::Failed { .. } => self.fail(ErrorCode::RuntimeError, error.to_string()),
                }
            }
        }
    }

    fn drop(&mut self, context: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<Tensor>> {
        // The constructor cannot fail in WIT: the tensor is checked when it is used, and one
        // over the budget, or with absurdly many dimensions, traps.
        if dimensions.len() > MAX_DIMENSIONS {
            wasmtime::bail!(
                "a tensor may have at most {MAX_DIMENSIONS} dimensions, not {}",
                dimensions.len()
            );
        }
        let tensor = Tensor {
            element_type: element_type(ty),
            shape: dimensions.into_iter().map(|d| d as usize).collect(),
            data: data.into(),
        };
        self.budget.charge(held_bytes(&tensor), "a tensor").map_err(HostRefusal::into_trap)?;
        Ok(self.table.push(tensor)?)
    }

    fn dimensions(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.shape.iter().map(|&d| d as u32).collect())
    }

    fn ty(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<TensorType> {
        Ok(tensor_type(self.table.get(&tensor)?.element_type))
    }

    fn data(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.to_vec())
    }

    fn drop(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<()> {
        let tensor = self.table.delete(tensor)?;
        self.budget.refund(held_bytes(&tensor));
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.message.clone())
    }

    fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

fn element_type(ty: TensorType) -> ElementType {
    match ty {
        TensorType::Fp16 => ElementType::F16,
        TensorType::Fp32 => ElementType::F32,
        TensorType::Fp64 => ElementType::F64,
        TensorType::Bf16 => ElementType::Bf16,
        TensorType::U8 => ElementType::U8,
        TensorType::I32 => ElementType::I32,
        TensorType::I64 => ElementType::I64,
    }
}

fn tensor_type(element_type: ElementType) -> TensorType {
    match element_type {
        ElementType::F16 => TensorType::Fp16,
        ElementType::F32 => TensorType::Fp32,
        ElementType::F64 => TensorType::Fp64,
        ElementType::Bf16 => TensorType::Bf16,
        ElementType::U8 => TensorType::U8,
        ElementType::I32 => TensorType::I32,
        ElementType::I64 => TensorType::I64,
    }
}
